"""The library's own speculative decoding loop: a batch of rows, each with its own γ per step.

One step, for the rows still generating:

1. **Draft.** The draft catches up on the tokens its cache lacks and drafts one token per row per forward. After
   each token every row's policy says whether that row wants another; the batch drafts another while at least
   `quorum` of the rows still drafting want one (the draft forward is one batched call, so a row that stopped early
   saves nothing, and its extra tokens are verified too, for free). A row stops for good at EOS and its budget.
2. **Verify.** One target forward over every row's last token and candidates; rows accept different numbers of
   tokens (greedy matching, speculative sampling, or coupled sampling (`speckv_hf.decoding.coupling`) per row).
3. **Bookkeeping** (`speckv_hf.decoding.kv_cache`): rows that finished leave the batch; the others are re-aligned so
   that each row stays contiguous and right-aligned, on the sequences, masks and both caches at once.

The output equals target-alone `generate()` on the same padded batch: each row is its prompt, its new tokens and
the pad token after its end.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..core.cost import Clock, CostModel
from ..core.ngram import NgramIndex
from ..core.signals import StepSignals, TokenSignals, batch_token_signals
from ..core.stats import GenerationStats, StepRecord
from ..policies.base import DraftPolicy, DraftState, StepOutcome
from . import kv_cache
from .coupling import GumbelNoise
from .verification import Processing, accept_greedy, accept_sampled

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["LoopCall", "LoopSettings", "run_loop"]


@dataclass
class LoopSettings:
    """What one call of the loop needs beyond the models and the prompt (prepared by the hook).

    Attributes:
        max_new_tokens: tokens each row may add.
        eos_token_ids: ids that end a row.
        pad_token_id: id written after a row's end.
        do_sample: sampling (True) or greedy matching (False).
        coupled: (with `do_sample`) coupled sampling (`speckv_hf.decoding.coupling`: Gumbel noise per position, greedy
            matching on the perturbed logits) instead of speculative sampling.
        processing: the call's logits processors.
        stop_checks: stopping criteria beyond length and EOS (stop strings, time), checked per row per token.
        streamer: transformers streamer, or None.
        quorum: share of the open rows that must want another token for the batch to draft it (in (0, 1]).
    """

    max_new_tokens: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    do_sample: bool
    processing: Processing
    coupled: bool = False
    stop_checks: list[Any] = field(default_factory=list)
    streamer: Any = None
    quorum: float = 0.5


@dataclass
class LoopCall:
    """The per-call state the generator hands to the loop: costs, one policy per row, statistics.

    Attributes:
        cost: the call's cost model (batch step times), shared by the rows' policies.
        policies: one bound policy per row.
        stats: the call's statistics; `stats.rows` holds one per row.
        clock: the call's clock.
        record_steps: keep per-step records.
        key: what the generator files the call's learned state under (target, draft, batch size).
    """

    cost: CostModel
    policies: list[DraftPolicy]
    stats: GenerationStats
    clock: Clock
    record_steps: bool = True
    key: tuple[int, ...] = ()


def run_loop(
    call: LoopCall,
    settings: LoopSettings,
    target: PreTrainedModel,
    draft: PreTrainedModel,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
) -> torch.LongTensor:
    """Generates for a left-padded batch with speculative decoding.

    Args:
        call: costs, policies and statistics of the call.
        settings: length, special tokens, sampling, processors, stopping criteria and streamer of the call.
        target: the model generating.
        draft: the draft model.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.

    Returns:
        `torch.LongTensor` of shape `(batch_size, prompt_length + new_tokens)`: each row's prompt, its new tokens
        and `pad_token_id` after its end, as target-alone `generate()` returns.
    """
    return _Loop(call, settings, target, draft).run(input_ids, attention_mask)


@dataclass
class _Drafts:
    """What one step drafted, and how long the drafting took.

    Attributes:
        tokens (`torch.LongTensor` of shape `(rows, k)`): the drafted tokens (pad where `valid` is False).
        valid (`torch.BoolTensor` of shape `(rows, k)`): which tokens are candidates (a prefix per row).
        signals: per row, the signals of its candidate tokens.
        probs (`torch.FloatTensor` of shape `(rows, k, vocab)`, *optional*): the processed draft distributions
            (speculative sampling only).
        first_seconds: seconds to the first drafted token (the catch-up forward included).
        later_seconds: seconds of the later tokens, `later_tokens` of them.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    signals: list[list[TokenSignals]]
    probs: torch.Tensor | None = None
    first_seconds: float = 0.0
    later_seconds: float = 0.0
    later_tokens: int = 0


@dataclass
class _Times:
    """Clock readings of one step: its start, the loop's time since the previous verification, the verification."""

    started: float
    overhead: float
    verify_start: float = 0.0
    verified: float = 0.0


class _Loop:
    def __init__(self, call: LoopCall, settings: LoopSettings, target: Any, draft: Any) -> None:
        self.call, self.settings = call, settings
        self.target, self.draft = target, draft
        self.target_kwarg, self.draft_kwarg = kv_cache.cache_kwarg(target), kv_cache.cache_kwarg(draft)
        self.draft_device = next(draft.parameters()).device
        self.target_keeps_logits = "logits_to_keep" in inspect.signature(target.forward).parameters
        self.draft_keeps_logits = "logits_to_keep" in inspect.signature(draft.forward).parameters
        self.clock = call.clock

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        settings = self.settings
        size, prompt_length = input_ids.shape
        self.batch_size = size
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        batch = kv_cache.RowLayout(input_ids, mask)
        self.prompts = [row.tolist() for row in input_ids]  # what processors see before the new tokens
        self.generated: list[list[int]] = [[] for _ in range(size)]
        self.contexts = [NgramIndex(ids[len(ids) - int(m.sum()) :]) for ids, m in zip(self.prompts, mask, strict=True)]
        self.streamed = 0
        self.noise: GumbelNoise | None = None
        step = 0
        last_verified: float | None = None
        while batch.size:
            started = self.clock.now()
            times = _Times(started, started - last_verified if last_verified is not None else 0.0)
            drafts = self._draft(batch, step)
            times.verify_start = self.clock.now()
            num_accepted, next_tokens = self._verify(batch, drafts)
            times.verified = self.clock.now()
            if step == 0:  # both caches are filled now: check they are the key/value layers this loop edits
                kv_cache.check_cache(batch.target_cache)
                if batch.draft_len:
                    kv_cache.check_cache(batch.draft_cache)
            appended, finished = self._append(batch, drafts.tokens, num_accepted, next_tokens)
            self._record(batch, step, drafts, times, num_accepted, appended)
            self._stream(batch, finished)
            batch.advance(appended, num_accepted, finished, self.settings.pad_token_id)
            step += 1
            last_verified = times.verified
        if settings.streamer is not None:
            settings.streamer.end()
        return self._output(input_ids, prompt_length)

    # -- drafting -------------------------------------------------------------------------------------------------
    def _draft(self, batch: kv_cache.RowLayout, step: int) -> _Drafts:
        settings, call = self.settings, self.call
        n, length = batch.size, batch.ids.shape[1]
        rows = batch.rows.tolist()
        caps = [settings.max_new_tokens - len(self.generated[r]) - 1 for r in rows]  # room for the target's token
        # The bar a row's next token must beat: the long-run tokens per second per row, or, before enough steps, one
        # token per plain step (which gives every row one).
        row_throughput = call.cost.throughput
        if row_throughput is not None:
            pass
        elif call.cost.ready:
            row_throughput = 1.0 / max(call.cost.step_time(0), 1e-9)
        else:
            row_throughput = None
        signals: list[list[TokenSignals]] = [[] for _ in range(n)]
        drafting = [
            caps[b] > 0 and self._ask(b, rows, step, signals[b], caps[b], row_throughput, length) for b in range(n)
        ]
        # Rows whose tokens are still candidates: every row with room, until its EOS or its cap. A row whose policy
        # stopped rides along while others draft: its tokens cost no extra forward, draft or target.
        open_rows = [cap > 0 for cap in caps]
        tokens: list[torch.Tensor] = []
        valid_columns: list[torch.Tensor] = []
        probs_list: list[torch.Tensor] = []
        empty = batch.ids.new_zeros((n, 0))
        drafts = _Drafts(empty, empty.bool(), signals)
        if not self._continue(drafting, open_rows):
            return drafts
        start = self.clock.now()
        logits = self._draft_forward(batch, batch.ids[:, batch.draft_len :], batch.mask, batch.draft_len, batch.padded)
        batch.draft_len = length
        lasts = [self.contexts[r].tail for r in rows]
        mask = batch.mask
        speculative = settings.do_sample and not settings.coupled  # sampled tokens, verified by min(1, p/q)
        while True:
            views = self._views(rows)
            if views and tokens:
                views = [v + t for v, t in zip(views, torch.stack(tokens, 1).tolist(), strict=True)]
            processed = settings.processing(logits[:, None], views, None, rows)[:, 0]
            position = len(tokens)
            if settings.coupled:
                # The draft's perturbed argmax: the token the target picks here too if its logits agree enough.
                at = [len(self.generated[r]) + position for r in rows]
                processed = processed + self._noise(processed).at(rows, at)
            probs = torch.softmax(processed, dim=-1)
            token = torch.multinomial(probs, 1)[:, 0] if speculative else probs.argmax(-1)
            predictions = [self.contexts[r].lookup(*lasts[b]) for b, r in enumerate(rows)]
            row_signals = batch_token_signals(probs, token, position, predictions)
            token_ids = token.tolist()
            if all(open_rows):
                column = torch.ones_like(token, dtype=torch.bool)
                tokens.append(token)
            else:
                column = torch.tensor(open_rows, device=token.device)
                tokens.append(torch.where(column, token, settings.pad_token_id))
            valid_columns.append(column)
            if speculative:
                probs_list.append(probs)
            for b in range(n):
                lasts[b] = (lasts[b][1], token_ids[b])
                if not open_rows[b]:
                    continue
                signals[b].append(row_signals[b])
                if token_ids[b] in settings.eos_token_ids or len(signals[b]) >= caps[b]:
                    open_rows[b] = drafting[b] = False
                elif drafting[b]:
                    drafting[b] = self._ask(b, rows, step, signals[b], caps[b], row_throughput, length)
            now = self.clock.now()
            if position == 0:
                drafts.first_seconds = now - start
            else:
                drafts.later_seconds += now - start
                drafts.later_tokens += 1
            if not self._continue(drafting, open_rows):
                break
            start = now
            feed = tokens[-1][:, None]
            mask = torch.cat((mask, torch.tensor(open_rows, device=mask.device, dtype=mask.dtype)[:, None]), 1)
            logits = self._draft_forward(batch, feed, mask, batch.draft_len, batch.padded or not all(open_rows))
            batch.draft_len += 1
        drafts.tokens = torch.stack(tokens, 1)
        drafts.valid = torch.stack(valid_columns, 1)
        drafts.probs = torch.stack(probs_list, 1) if probs_list else None
        return drafts

    def _noise(self, logits: torch.Tensor) -> GumbelNoise:
        """The call's Gumbel noise, drawn for the logits' vocabulary on their device when first needed."""
        if self.noise is None:
            self.noise = GumbelNoise(self.batch_size, int(logits.shape[-1]), logits.device)
        elif self.noise.vocab_size != logits.shape[-1]:
            raise ValueError(
                f"coupled sampling needs the draft's and the target's logits over one vocabulary, got "
                f"{self.noise.vocab_size} and {logits.shape[-1]} entries: use a draft whose output layer matches "
                "the target's."
            )
        return self.noise

    def _continue(self, drafting: list[bool], open_rows: list[bool]) -> bool:
        """Whether the batch drafts another token: when at least `quorum` of the rows still open want one.

        One more token costs the whole batch one draft forward and a wider verification; it gains each row the
        chance that its token is accepted. So the batch should go on while the rows' mean gain beats the per-row
        bar, and the share of rows whose own gain beats it (their policies' votes) is the robust stand-in: a
        single row that wants a long draft cannot make seven others pay for it."""
        wanting = sum(drafting)
        if not wanting:
            return False
        return wanting >= self.settings.quorum * max(sum(open_rows), 1)

    def _ask(self, b, rows, step, tokens, cap, throughput, length) -> bool:
        state = DraftState(step=step, tokens=tokens, max_tokens=cap, throughput=throughput, sequence_length=length)
        start = self.clock.now()
        decision = self.call.policies[rows[b]].should_draft(state)
        self.call.stats.policy_seconds += self.clock.now() - start
        return bool(decision)

    def _views(self, rows: list[int]) -> list[list[int]]:
        if self.settings.processing.scores_only:
            return []
        return [self.prompts[r] + self.generated[r] for r in rows]

    def _draft_forward(
        self, batch: kv_cache.RowLayout, new_ids: torch.Tensor, mask: torch.Tensor, start: int, padded: bool
    ) -> torch.Tensor:
        """Draft logits for the position after `new_ids` (`(rows, vocab)`); `mask` covers the whole sequence."""
        kwargs: dict[str, Any] = {
            "input_ids": new_ids.to(self.draft_device),
            self.draft_kwarg: batch.draft_cache,
            "use_cache": True,
        }
        if padded:
            kwargs["attention_mask"] = mask.to(self.draft_device)
            kwargs["position_ids"] = batch.positions(mask, start).to(self.draft_device)
        if new_ids.shape[1] > 1 and self.draft_keeps_logits:
            kwargs["logits_to_keep"] = 1
        outputs = self.draft(**kwargs)
        self.call.stats.draft_forwards += 1
        return outputs.logits[:, -1].to(batch.ids.device)

    # -- verification ---------------------------------------------------------------------------------------------
    def _verify(self, batch: kv_cache.RowLayout, drafts: _Drafts) -> tuple[torch.Tensor, torch.Tensor]:
        drafted, valid = drafts.tokens, drafts.valid
        k = drafted.shape[1]
        feed = torch.cat((batch.ids[:, batch.target_len :], drafted), 1)
        kwargs: dict[str, Any] = {
            "input_ids": feed,
            self.target_kwarg: batch.target_cache,
            "use_cache": True,
            "logits_to_keep": k + 1,
        }
        if batch.padded or not bool(valid.all()):
            mask = torch.cat((batch.mask, valid.long()), 1)
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = batch.positions(mask, batch.target_len)
        if not self.target_keeps_logits:
            del kwargs["logits_to_keep"]
        logits = self.target(**kwargs).logits[:, -(k + 1) :]
        batch.target_len = batch.ids.shape[1] + k
        rows = batch.rows.tolist()
        processed = self.settings.processing(logits, self._views(rows), drafted, rows)
        if self.settings.coupled:
            noise = self._noise(processed).span(rows, [len(self.generated[r]) for r in rows], k + 1)
            return accept_greedy(processed + noise, drafted, valid)
        if self.settings.do_sample:
            return accept_sampled(processed, drafted, valid, drafts.probs)
        return accept_greedy(processed, drafted, valid)

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def _append(
        self, batch: kv_cache.RowLayout, drafted, num_accepted, next_tokens
    ) -> tuple[list[list[int]], list[bool]]:
        settings = self.settings
        drafted_rows, accepted, nexts = drafted.tolist(), num_accepted.tolist(), next_tokens.tolist()
        appended, finished = [], []
        for b, r in enumerate(batch.rows.tolist()):
            new = [*drafted_rows[b][: accepted[b]], nexts[b]]
            done = False
            for i, token in enumerate(new):
                if token in settings.eos_token_ids:
                    new, done = new[: i + 1], True
                    break
            room = settings.max_new_tokens - len(self.generated[r])
            if len(new) >= room:
                new, done = new[:room], True
            if settings.stop_checks and not done:
                new, done = self._stop_checks(r, new)
            self.generated[r].extend(new)
            self.contexts[r].extend(new)
            if self.noise is not None:
                self.noise.release(r, None if done else len(self.generated[r]))
            appended.append(new)
            finished.append(done)
        return appended, finished

    def _stop_checks(self, row: int, new: list[int]) -> tuple[list[int], bool]:
        """Other stopping criteria (stop strings, time), applied after each new token as target-alone would."""
        base = self.prompts[row] + self.generated[row]
        for i in range(len(new)):
            ids = torch.tensor([base + new[: i + 1]], dtype=torch.long)
            if any(bool(torch.as_tensor(check(ids, None)).any()) for check in self.settings.stop_checks):
                return new[: i + 1], True
        return new, False

    # -- stats, streaming, output ---------------------------------------------------------------------------------
    def _record(
        self,
        batch: kv_cache.RowLayout,
        step: int,
        drafts: _Drafts,
        times: _Times,
        num_accepted: torch.Tensor,
        appended: list[list[int]],
    ) -> None:
        call = self.call
        cost = call.cost
        signals, overhead = drafts.signals, times.overhead
        k = int(drafts.valid.shape[1])
        draft_seconds = times.verify_start - times.started
        verify_seconds = times.verified - times.verify_start
        emitted = sum(len(a) for a in appended)
        rows = batch.size
        if step > 0:  # step 0 carries both prefills
            # A forward's time depends on the rows in it: the costs are those of the whole batch, measured while every
            # row is in it (the last rows alone are cheaper, so the estimates stay on the safe side there).
            if rows == self.batch_size:
                cost.observe_verify(k, verify_seconds)
                if k:
                    cost.observe_first_draft(drafts.first_seconds)
                    if drafts.later_tokens:
                        cost.observe_draft(drafts.later_seconds / drafts.later_tokens)
                if step > 1:
                    cost.observe_overhead(overhead)
            # Tokens per row: the bar one row's next token must beat, whatever the rows left.
            cost.observe_step(emitted / rows, draft_seconds + verify_seconds + overhead)
        accepted = num_accepted.tolist()
        drafted_rows = drafts.tokens.tolist() if call.record_steps else []
        stats = call.stats
        stats.record_step(
            gamma=k,
            accepted=max(accepted),
            tokens=emitted,
            draft_seconds=draft_seconds,
            verify_seconds=verify_seconds,
            overhead_seconds=overhead,
            drafted=sum(len(s) for s in signals),
            accepted_tokens=sum(accepted),
        )
        for b, r in enumerate(batch.rows.tolist()):
            tokens = signals[b]
            call.policies[r].observe(StepOutcome(step=step, tokens=tokens, num_accepted=accepted[b]))
            record = None
            if call.record_steps:
                record = StepRecord(
                    step=step,
                    gamma=len(tokens),
                    accepted=accepted[b],
                    tokens_produced=len(appended[b]),
                    signals=StepSignals.from_tokens(tokens),
                    tokens=tuple(tokens),
                    draft_seconds=draft_seconds,
                    verify_seconds=verify_seconds,
                    overhead_seconds=overhead,
                    drafted_ids=tuple(drafted_rows[b][: len(tokens)]),
                )
            row_stats = stats.rows[r] if stats.rows else stats
            if row_stats is stats:
                # One row: the batch's own record is the row's.
                if record is not None:
                    stats.steps.append(record)
                continue
            row_stats.record_step(
                gamma=len(tokens),
                accepted=accepted[b],
                tokens=len(appended[b]),
                draft_seconds=draft_seconds,
                verify_seconds=verify_seconds,
                overhead_seconds=overhead,
                record=record,
            )

    def _stream(self, batch: kv_cache.RowLayout, finished: list[bool]) -> None:
        """Streams like transformers' batched decoding: one `(batch_size,)` tensor per new position, pad for rows
        that ended, once every row has that position; a single row streams each step's tokens at once."""
        streamer = self.settings.streamer
        if streamer is None:
            return
        if len(self.generated) == 1:
            tokens = self.generated[0][self.streamed :]
            if tokens:
                streamer.put(torch.tensor([tokens]))
            self.streamed = len(self.generated[0])
            return
        active = set(batch.rows.tolist())
        for b, done in zip(batch.rows.tolist(), finished, strict=True):
            if done:
                active.discard(b)
        ready = min((len(self.generated[r]) for r in active), default=max(len(g) for g in self.generated))
        pad = self.settings.pad_token_id
        for position in range(self.streamed, ready):
            column = [g[position] if position < len(g) else pad for g in self.generated]
            streamer.put(torch.tensor(column))
        self.streamed = max(self.streamed, ready)

    def _output(self, input_ids: torch.LongTensor, prompt_length: int) -> torch.LongTensor:
        longest = max(len(g) for g in self.generated)
        out = torch.full(
            (input_ids.shape[0], prompt_length + longest),
            self.settings.pad_token_id,
            dtype=input_ids.dtype,
            device=input_ids.device,
        )
        out[:, :prompt_length] = input_ids
        for b, tokens in enumerate(self.generated):
            if tokens:
                out[b, prompt_length : prompt_length + len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
        return out
