"""A step's candidates from the context, in the library's loop: each row's run, the batch's cut of the runs, the
columns the runs fill where no row drafts, and the guesses a draft forward runs over.

The loop (`speckv_hf.decoding.loop`) calls these while it builds a step's candidate columns; they read the rows'
context sources (`speckv_hf.core.context_source`) and policies, and change nothing but the lists they are given.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..core.context_source import ContextProposal, ContextSource
from ..core.stats import GenerationStats
from ..policies.base import DraftPolicy, DraftState

__all__ = ["context_columns", "count_guessed", "guesses_for", "plan_run", "quorum_runs"]

Run = tuple[int, ...]


def plan_run(
    proposal: ContextProposal, policy: DraftPolicy, state: DraftState, eos_token_ids: Collection[int]
) -> tuple[Run, ContextProposal | None, float]:
    """A row's context run: as much of what its source proposes as its policy takes, cut after an EOS.

    Args:
        proposal: what the row's context source proposes (possibly nothing).
        policy: the row's policy.
        state: the step before any candidate (`state.max_tokens` is the row's cap).
        eos_token_ids: the call's EOS tokens.

    Returns:
        `(run, proposal, acceptance)`: the run's tokens, the proposal they came from (None for an empty run), and
        the policy's estimate that the whole run is accepted (1.0 for none).
    """
    if not proposal.tokens:
        return (), None, 1.0
    plan = policy.plan_context(proposal, state)
    tokens = proposal.tokens[: max(0, min(plan.count, state.max_tokens))]
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            tokens = tokens[: i + 1]
            break
    return tokens, (proposal if tokens else None), plan.acceptance


def quorum_runs(
    runs: Sequence[Run], proposals: Sequence[ContextProposal | None], caps: Sequence[int], quorum: float
) -> tuple[list[Run], list[ContextProposal | None]]:
    """The rows' context runs, cut where fewer than `quorum` of the open rows still have one.

    Every candidate column widens the whole batch's verification, as a drafted column does, so context columns
    follow the batch's rule for drafting (`batch_quorum`): a column is taken while at least `quorum` of the open
    rows (`cap > 0`) want it. A row whose run was cut drafts after it as its policy decides. A single open row
    keeps its run.

    Returns:
        `(runs, proposals)`, a proposal None where its run was cut to nothing.
    """
    runs, proposals = list(runs), list(proposals)
    open_rows = sum(cap > 0 for cap in caps)
    if open_rows < 2 or not runs:
        return runs, proposals
    lengths = sorted((len(run) for run in runs), reverse=True)
    needed = max(quorum * open_rows, 1)
    width = max((w for w in range(1, lengths[0] + 1) if sum(n >= w for n in lengths) >= needed), default=0)
    if width >= lengths[0]:
        return runs, proposals
    cut = [run[:width] for run in runs]
    return cut, [p if run else None for p, run in zip(proposals, cut, strict=True)]


def context_columns(
    columns: list[list[int]],
    valid_columns: list[list[bool]],
    runs: Sequence[Run],
    open_rows: Sequence[bool],
    lasts: list[tuple[int | None, int | None]],
    pad: int,
) -> int:
    """Appends the columns from the current one to the end of the shortest open context run, where no row drafts
    (so no forward runs), and moves each row's last two tokens (`lasts`) along.

    Returns:
        How many columns were appended.
    """
    start = len(columns)
    end = min(len(runs[b]) for b, is_open in enumerate(open_rows) if is_open)
    valid = list(open_rows)
    for j in range(start, end):
        columns.append([run[j] if is_open else pad for run, is_open in zip(runs, open_rows, strict=True)])
        valid_columns.append(valid)
    for b, is_open in enumerate(open_rows):
        tail = runs[b][max(start, end - 2) : end] if is_open else [pad] * (end - start)
        for token in tail[-2:]:
            lasts[b] = (lasts[b][1], token)
    return max(end - start, 0)


def guesses_for(
    sources: Sequence[ContextSource],
    policies: Sequence[DraftPolicy],
    columns: Sequence[Sequence[int]],
    open_rows: Sequence[bool],
    draft_rows: Sequence[bool],
    caps: Sequence[int],
    max_guesses: int,
    pad: int,
) -> tuple[list[list[int]], list[bool]] | None:
    """What the context proposes for the column the draft is about to draft and the ones after it, per row, as
    guesses of the draft's own tokens (None where some open row has none, or is inside its context run).

    The draft forward that drafts column `j` also runs over the guesses: its token at `j + 1` is its own wherever
    the guess for `j` was its token at `j`, so a confirmed guess gives a drafted token that cost no forward of its
    own. The guesses are cut to the shortest row's, to each row's room and to what each row's policy feeds
    (`DraftPolicy.plan_guesses`); rows that ended get pad, masked (the second list says which rows' guesses are
    real).

    Args:
        sources: the batch rows' context sources, in batch order.
        policies: the batch rows' policies.
        columns: the step's candidate columns so far.
        open_rows: rows whose next column is still a candidate.
        draft_rows: rows that draft in the next column.
        caps: each row's most candidates in the step.
        max_guesses: the most guesses one forward runs over.
        pad: the pad token.
    """
    j = len(columns)
    room = max_guesses
    for b, is_open in enumerate(open_rows):
        if is_open:
            if not draft_rows[b]:
                return None
            room = min(room, caps[b] - j - 1)
    if room < 1:
        return None
    guesses: list[list[int] | None] = []
    for b, (source, policy) in enumerate(zip(sources, policies, strict=True)):
        if not open_rows[b]:
            guesses.append(None)  # a row that ended: pad, masked
            continue
        proposal = source.propose(room, [c[b] for c in columns])
        room = min(room, policy.plan_guesses(proposal, room)) if proposal.tokens else 0
        if room < 1:
            return None
        guesses.append(list(proposal.tokens))
    return [g[:room] if g is not None else [pad] * room for g in guesses], [g is not None for g in guesses]


def count_guessed(stats: GenerationStats, rows: Sequence[int], valid: Sequence[Sequence[bool]]) -> None:
    """Counts the drafted tokens that confirmed guesses gave (`valid`: their columns' validity), per row too."""
    for column in valid:
        for b, is_valid in enumerate(column):
            if is_valid:
                stats.guessed_tokens += 1
                if stats.rows:
                    stats.rows[rows[b]].guessed_tokens += 1
