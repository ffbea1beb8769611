"""Candidates from the context: the continuation the sequence itself proposes, at no forward's cost.

Text repeats itself, and most of all where the answer is grounded in the input: code edited or refactored from the
prompt, a table or list continued, spans of a given document quoted back. Where the sequence's last `n` tokens
occurred earlier, the tokens that followed them then are candidates for the tokens that follow now (what
prompt-lookup decoding drafts with). They cost no draft forward, only their slots in the target's verification.

[`ContextSource`][] keeps, for every n-gram of the sequence up to `max_ngram` tokens, where its most recent earlier
occurrence ended, how often it occurred and how many of its latest occurrences in a row went on the same way.
Appending a verified token costs `max_ngram` dictionary writes; a proposal tries the tail's n-grams from the longest
down and copies the continuation of the first one found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context_memory import ContextMemory

__all__ = ["ContextProposal", "ContextSource"]


@dataclass(frozen=True)
class ContextProposal:
    """What the context proposes for the next tokens.

    Attributes:
        tokens: the proposed continuation (empty when the tail never occurred before).
        match_length: tokens of the sequence's tail that matched the earlier occurrence (0 for no match).
        occurrences: how many earlier occurrences the matched n-gram has (the most recent is the one copied).
        agreeing: how many of its most recent occurrences in a row were followed by the proposed first token (1 to
            `occurrences`: all of them when the text always went on the same way after it).
        distance: tokens between the copied occurrence's end and the sequence's end.
    """

    tokens: tuple[int, ...] = ()
    match_length: int = 0
    occurrences: int = 0
    agreeing: int = 0
    distance: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


_NO_PROPOSAL = ContextProposal()


class ContextSource:
    """The continuation that the longest earlier match of a sequence's tail proposes.

    Args:
        tokens: the sequence so far (e.g. the prompt's ids without padding).
        max_ngram: the longest tail matched (longer matches are more often right).
        min_ngram: the shortest tail matched.
        memory: earlier calls' sequences ([`ContextMemory`][speckv_hf.core.context_memory.ContextMemory]), proposed
            from where they match a longer tail than the sequence itself does; read only.

    Raises:
        ValueError: for `min_ngram < 1` or `max_ngram < min_ngram`.
    """

    __slots__ = ("_ends", "_tokens", "max_ngram", "memory", "min_ngram")

    def __init__(
        self,
        tokens: Iterable[int] = (),
        *,
        max_ngram: int = 4,
        min_ngram: int = 1,
        memory: ContextMemory | None = None,
    ) -> None:
        if min_ngram < 1 or max_ngram < min_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}.")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.memory = memory
        self._tokens: list[int] = []
        # n-gram -> (index of the token that followed its most recent occurrence, occurrences with a follower, how
        # many of the most recent occurrences in a row had that same follower)
        self._ends: dict[tuple[int, ...], tuple[int, int, int]] = {}
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The sequence so far (read-only by convention)."""
        return self._tokens

    def find(self, tail: Sequence[int], shortest: int | None = None) -> tuple[int, int, int, int] | None:
        """The longest end of `tail` that occurred in this sequence with a token after it.

        Args:
            tail: the tokens to match the end of (from `max_ngram` down to `shortest` of them).
            shortest: the shortest end matched (`min_ngram` by default).

        Returns:
            `(start, n, occurrences, agreeing)`: where the continuation of its most recent occurrence starts in
            this sequence, the matched length, and that n-gram's occurrences and agreeing followers (see
            [`ContextProposal`][]); None when no end of `shortest` tokens or more occurred.
        """
        end = len(tail)
        lowest = self.min_ngram if shortest is None else max(shortest, self.min_ngram)
        for n in range(min(self.max_ngram, end), lowest - 1, -1):
            found = self._ends.get(tuple(tail[end - n :]))
            if found is not None:
                return found[0], n, found[1], found[2]
        return None

    def extend(self, tokens: Iterable[int]) -> None:
        """Appends verified tokens: each one is the continuation of the n-grams that end just before it.

        Args:
            tokens: token ids, in order.
        """
        seq, ends, lo, hi = self._tokens, self._ends, self.min_ngram, self.max_ngram
        for token in tokens:
            i = len(seq)
            token = int(token)
            for n in range(lo, min(hi, i) + 1):
                key = tuple(seq[i - n : i])
                previous = ends.get(key)
                if previous is None:
                    ends[key] = (i, 1, 1)
                else:
                    same = previous[2] + 1 if seq[previous[0]] == token else 1
                    ends[key] = (i, previous[1] + 1, same)
            seq.append(token)

    def end_sequence(self, separator: int) -> None:
        """Appends `separator`, a token no proposal continues into: the n-grams before it keep their earlier
        occurrences, and n-grams spanning it never match a tail without it (a boundary between sequences).

        Args:
            separator: an id no token has (e.g. -1).
        """
        self._tokens.append(int(separator))

    def propose(self, max_tokens: int, after: Sequence[int] = ()) -> ContextProposal:
        """The continuation of the longest earlier occurrence of the sequence's tail.

        Args:
            max_tokens: the most tokens to propose.
            after: tokens taken to follow the sequence (a step's candidates so far): the tail is matched with them,
                and the continuation is copied from the sequence itself.

        Returns:
            The proposal; empty when `max_tokens < 1` or no tail of `min_ngram` tokens or more occurred before (in
            the sequence, or in the memory). The memory's proposal wins where it matched a longer tail.
        """
        seq = self._tokens
        if max_tokens < 1:
            return _NO_PROPOSAL
        tail = [*seq[-self.max_ngram :], *after] if after else seq
        length = len(seq) + len(after)
        proposal = _NO_PROPOSAL
        found = self.find(tail)
        if found is not None:
            start, n, occurrences, agreeing = found
            tokens = tuple(seq[start : start + max_tokens])
            proposal = ContextProposal(tokens, n, occurrences, agreeing, length - start)
        if self.memory is not None and proposal.match_length < self.max_ngram:
            earlier = self.memory.lookup(tail[-self.max_ngram :], max_tokens, longer_than=proposal.match_length)
            if earlier is not None:
                return ContextProposal(
                    earlier.tokens, earlier.match_length, earlier.occurrences, earlier.agreeing,
                    length + earlier.distance,
                )  # fmt: skip
        return proposal
