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
from typing import TYPE_CHECKING, Any

import torch

from ..core.context_source import ContextProposal
from ..policies.base import DraftState
from . import kv_cache
from .context_candidates import count_guessed, guesses_for, plan_run, quorum_runs
from .coupling import GumbelNoise
from .loop_call import LoopCall, LoopSettings
from .rows import CallRows
from .step import RecentRate, StepCandidates, StepTimes, account_step, ask_policy, throughput_bar
from .step_columns import StepColumns
from .verification import accept_greedy, accept_sampled

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["run_loop"]


def run_loop(
    call: LoopCall,
    settings: LoopSettings,
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
) -> torch.LongTensor:
    """Generates for a left-padded batch with speculative decoding.

    Args:
        call: costs, policies and statistics of the call.
        settings: length, special tokens, sampling, processors, stopping criteria and streamer of the call.
        target: the model generating.
        draft: the draft model, or None for a policy that takes context candidates alone.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.

    Returns:
        `torch.LongTensor` of shape `(batch_size, prompt_length + new_tokens)`: each row's prompt, its new tokens
        and `pad_token_id` after its end, as target-alone `generate()` returns.
    """
    return _Loop(call, settings, target, draft).run(input_ids, attention_mask)


class _Loop:
    def __init__(self, call: LoopCall, settings: LoopSettings, target: Any, draft: Any) -> None:
        self.call, self.settings = call, settings
        self.target, self.draft = target, draft
        self.target_kwarg = kv_cache.cache_kwarg(target)
        self.target_keeps_logits = "logits_to_keep" in inspect.signature(target.forward).parameters
        if draft is not None:
            self.draft_kwarg = kv_cache.cache_kwarg(draft)
            self.draft_device = next(draft.parameters()).device
            self.draft_keeps_logits = "logits_to_keep" in inspect.signature(draft.forward).parameters
        self.clock = call.clock
        self.recent = RecentRate()
        policy = call.policies[0]
        self.uses_context = bool(getattr(policy, "uses_context", False))
        self.uses_draft = draft is not None and bool(getattr(policy, "uses_draft", True))
        self.max_candidates = settings.max_new_tokens  # candidates one step may verify (the compiled loop bounds it)
        # Context guesses fed with a draft forward: policies that take context candidates and draft, greedy calls of
        # this loop (sampled, the draft's tokens match them too seldom to pay for their columns), no prefix function.
        self.max_guesses = int(getattr(policy, "max_guesses", 0) or 0) if self.uses_context and self.uses_draft else 0
        self.guides = self.max_guesses > 0 and not settings.do_sample and not settings.processing.constrains_prefix
        self.step_timed = True  # whether the step's times measure its costs

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        settings = self.settings
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        batch = kv_cache.RowLayout(input_ids, mask)
        self._start(input_ids, mask)
        self.draft_checked = False
        step = 0
        last_verified: float | None = None
        while batch.size:
            num_accepted, _, appended, finished, last_verified = self._step(batch, step, last_verified)
            batch.advance(appended, num_accepted, finished, self.settings.pad_token_id)
            step += 1
        if settings.streamer is not None:
            settings.streamer.end()
        return self._output(input_ids)

    def _step(self, batch: Any, step: int, last_verified: float | None):
        """One step, timed: candidates, verification, new tokens, records, streaming (the layout's own bookkeeping
        is left to the caller).

        Returns:
            `(num_accepted, next_tokens, appended, finished, verified)`: accepted candidates and the target's next
            token per row (`torch.LongTensor`s), the tokens each row appended, whether each row ended, and when
            verification ended.
        """
        started = self.clock.now()
        drafts = self._draft(batch, step)
        verify_start = self.clock.now()
        num_accepted, next_tokens = self._verify(batch, drafts)
        verified = self.clock.now()
        times = drafts.times
        times.overhead = started - last_verified if last_verified is not None else 0.0
        times.draft, times.verify = verify_start - started, verified - verify_start
        self._verified(batch, step)
        appended, finished = self._append(batch, drafts.tokens, num_accepted, next_tokens)
        account_step(
            self.call,
            self.recent,
            step,
            drafts,
            num_accepted,
            appended,
            rows=batch.rows.tolist(),
            full_batch=batch.size == self.batch_size,
            verified_width=self._verified_width(int(drafts.valid.shape[1])),
            timed=self.step_timed,
        )
        self._stream(batch, finished)
        return num_accepted, next_tokens, appended, finished, verified

    def _verified(self, batch: kv_cache.RowLayout, step: int) -> None:
        """After a step's verification: checks each cache has the key/value layers this loop edits, once filled."""
        if step == 0:  # the target's cache is filled now
            kv_cache.check_cache(batch.target_cache)
        if not self.draft_checked and batch.draft_len:  # the draft's, after its first forward (later with context)
            kv_cache.check_cache(batch.draft_cache)
            self.draft_checked = True

    def _start(self, input_ids: torch.LongTensor, mask: torch.Tensor) -> None:
        """The call's per-row state (prompts, new tokens, context indexes, streaming) and coupled noise."""
        self.rows = CallRows(input_ids, mask, uses_context=self.uses_context, memory=self.call.memory)
        self.batch_size = self.rows.size
        self.noise: GumbelNoise | None = None

    # -- candidates -----------------------------------------------------------------------------------------------
    def _plan_context(self, b: int, rows: list[int], step: int, cap: int, bar: float | None, length: int):
        """The row's context candidates: what its context source proposes, as much of it as its policy takes
        (`plan_run`; the policy's time counts as the policy's)."""
        proposal = self.rows.sources[rows[b]].propose(cap)
        if not proposal.tokens:  # nothing to ask the policy (and no clock to read: on CUDA, a read syncs)
            return (), None, 1.0
        state = DraftState(step=step, tokens=[], max_tokens=cap, throughput=bar, sequence_length=length)
        start = self.clock.now()
        planned = plan_run(proposal, self.call.policies[rows[b]], state, self.settings.eos_token_ids)
        self.call.stats.policy_seconds += self.clock.now() - start
        return planned

    def _draft(self, batch: kv_cache.RowLayout, step: int) -> StepCandidates:
        """The step's candidates, column by column: each row's context run, then drafted tokens.

        A column needs a draft forward only where a row drafts in it; the columns before it that the draft has not
        seen (the verified tokens it lacks, context candidates) are fed in that one forward. A row whose policy
        stopped rides along while others draft: its tokens cost no extra forward, draft or target."""
        settings, call = self.settings, self.call
        n, length = batch.size, batch.ids.shape[1]
        rows = batch.rows.tolist()
        # Room for the target's token, and at most what one verification holds.
        caps = [min(settings.max_new_tokens - len(self.rows.generated[r]) - 1, self.max_candidates) for r in rows]
        bar = throughput_bar(call.cost, self.recent)
        runs: list[tuple[int, ...]] = [()] * n
        proposals: list[ContextProposal | None] = [None] * n
        prefix = [1.0] * n
        if self.uses_context:
            for b in range(n):
                if caps[b] > 0:
                    runs[b], proposals[b], prefix[b] = self._plan_context(b, rows, step, caps[b], bar, length)
            runs, proposals = quorum_runs(runs, proposals, caps, settings.quorum)
            prefix = [p if run else 1.0 for p, run in zip(prefix, runs, strict=True)]
        base = DraftState(step=step, tokens=[], max_tokens=0, throughput=bar, sequence_length=length)
        speculative = settings.speculative  # sampled tokens, verified by min(1, p/q)
        cols = StepColumns(
            runs,
            caps,
            prefix,
            ask=lambda b, state: ask_policy(call.policies[rows[b]], state, call.stats, self.clock),
            state=base,
            contexts=[self.rows.contexts[r] for r in rows],
            eos_token_ids=settings.eos_token_ids,
            pad_token_id=settings.pad_token_id,
            uses_draft=self.uses_draft,
            keep_probs=speculative,
        )
        times, forwards = StepTimes(), 0
        fed = 0  # this step's columns the draft has seen
        start = self.clock.now()
        while any(cols.open):
            j = len(cols)
            in_context = cols.in_context()
            draft_rows = [is_open and not inside for is_open, inside in zip(cols.open, in_context, strict=True)]
            wanting = [d and w for d, w in zip(draft_rows, cols.drafting, strict=True)]
            if any(draft_rows) and not self._continue(wanting, draft_rows):
                # No draft forward for this column: the rows past their context run stop here.
                cols.open = in_context
                draft_rows = [False] * n
                if not any(cols.open):
                    break
            if not any(draft_rows):
                cols.take_context_runs()  # every open row is inside its run: up to the first run's end at once
                continue
            # From here on some row drafts in this column (the loop continued above otherwise): one draft forward.
            guesses = None
            if self.guides:
                sources, policies = [self.rows.sources[r] for r in rows], [call.policies[r] for r in rows]
                pad, most = settings.pad_token_id, self.max_guesses
                guesses = guesses_for(sources, policies, cols.columns, cols.open, draft_rows, caps, most, pad)
            probs, token, token_ids = self._draft_tokens(batch, cols, fed, guesses, rows, speculative)
            forwards += 1
            # Position i's token is the draft's own wherever the guesses before it were its tokens: take positions
            # while every open row's token equals its guess (the draft fed it), and the first one that does not.
            taken = 0
            for i in range(probs.shape[1]):
                cols.take(in_context, draft_rows, probs[:, i], token[:, i], [t[i] for t in token_ids])
                taken += 1
                if guesses is None or i == probs.shape[1] - 1 or not any(cols.open):
                    break
                if any(cols.open[b] and token_ids[b][i] != guesses[0][b][i] for b in range(n)):
                    break
            fed = j + taken - 1  # the columns the draft has seen: the guesses it confirmed, not the last token
            if guesses is not None:
                self._forget_guesses(batch, len(guesses[0][0]) - (taken - 1))
                count_guessed(call.stats, rows, [cols.valid[j + i] for i in range(1, taken)])
                for b, (guess, real) in enumerate(zip(*guesses, strict=True)):
                    if real:  # each row's policy learns how often the draft confirms its first guess
                        call.policies[rows[b]].observe_guesses(token_ids[b][0] == guess[0])
            now = self.clock.now()
            if forwards == 1:
                times.first_draft = now - start
            else:
                times.later_draft += now - start
                times.later_tokens += 1
            start = now
        tokens, valid = cols.tensors(batch.ids)
        return StepCandidates(
            tokens,
            valid,
            cols.signals,
            cols.context,
            proposals,
            probs=cols.probs or [],
            forwards=forwards,
            times=times,
        )

    def _draft_tokens(
        self,
        batch: kv_cache.RowLayout,
        cols: StepColumns,
        fed: int,
        guesses: tuple[list[list[int]], list[bool]] | None,
        rows: list[int],
        speculative: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """One draft forward over what the draft has not seen, and its tokens: the processed distributions
        `(rows, 1 + guesses, vocab)`, the tokens `(rows, 1 + guesses)` (sampled, or the argmax), and the same on the
        host."""
        settings = self.settings
        j = len(cols)
        logits = self._feed(batch, cols.columns, cols.valid, fed, guesses)
        views = self._views(rows)
        if views and cols.columns:
            views = [v + [c[b] for c in cols.columns] for b, v in enumerate(views)]
        guessed = torch.tensor(guesses[0], dtype=batch.ids.dtype, device=logits.device) if guesses else None
        processed = settings.processing(logits, views, guessed, rows)
        if settings.coupled:
            # The draft's perturbed argmax: the token the target picks here too if its logits agree enough.
            at = [len(self.rows.generated[r]) + j for r in rows]
            processed = processed + self._noise(processed).span(rows, at, processed.shape[1])
        probs = torch.softmax(processed, dim=-1)
        if guesses is not None:
            # A processor may forbid every token after a guess that is not the draft's (the position is never
            # taken then): keep a distribution there, not NaNs.
            ok = probs.isfinite().all(-1, keepdim=True)
            probs = torch.where(ok, probs, torch.full_like(probs, 1.0 / probs.shape[-1]))
        if speculative:
            flat = probs.reshape(-1, probs.shape[-1])
            token = torch.multinomial(flat, 1)[:, 0].view(probs.shape[:2])
        else:
            token = probs.argmax(-1)
        return probs, token, token.tolist()

    def _forget_guesses(self, batch: kv_cache.RowLayout, count: int) -> None:
        """Drops the draft cache's last `count` columns (guesses the draft did not confirm)."""
        if count > 0:
            batch.draft_len -= count
            kv_cache.crop(batch.draft_cache, batch.draft_len)

    def _feed(
        self,
        batch: kv_cache.RowLayout,
        columns: list[list[int]],
        valid: list[list[bool]],
        fed: int,
        guesses: tuple[list[list[int]], list[bool]] | None = None,
    ) -> torch.Tensor:
        """Runs the draft over what it has not seen (the verified tokens its cache lacks on the step's first
        forward, then this step's columns from `fed` on, then the guesses) and returns its logits for the next
        column and one more per guess (`(rows, 1 + guesses, vocab)`)."""
        device = batch.ids.device
        start = batch.draft_len
        parts = [batch.ids[:, start:]] if start < batch.ids.shape[1] else []
        if fed < len(columns):
            parts.append(torch.tensor(columns[fed:], dtype=batch.ids.dtype, device=device).T)
        mask = batch.mask
        if valid:
            mask = torch.cat((mask, torch.tensor(valid, dtype=mask.dtype, device=device).T), 1)
        keep = 1
        if guesses is not None:
            tokens, real = guesses
            keep += len(tokens[0])
            parts.append(torch.tensor(tokens, dtype=batch.ids.dtype, device=device))
            flags = torch.tensor(real, dtype=mask.dtype, device=device)[:, None].expand(-1, keep - 1)
            mask = torch.cat((mask, flags), 1)
        feed = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        padded = batch.padded or not all(all(column) for column in valid) or not bool(mask[:, -keep:].all())
        logits = self._draft_forward(batch, feed, mask, start, padded, keep)
        batch.draft_len = start + feed.shape[1]
        return logits

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

    def _views(self, rows: list[int]) -> list[list[int]]:
        if self.settings.processing.scores_only:
            return []
        return [self.rows.view(r) for r in rows]

    def _draft_forward(
        self, batch: kv_cache.RowLayout, new_ids: torch.Tensor, mask: torch.Tensor, start: int, padded: bool, keep=1
    ) -> torch.Tensor:
        """Draft logits of the last `keep` positions of `new_ids` (`(rows, keep, vocab)`); `mask` covers the whole
        sequence."""
        kwargs: dict[str, Any] = {
            "input_ids": new_ids.to(self.draft_device),
            self.draft_kwarg: batch.draft_cache,
            "use_cache": True,
        }
        if padded:
            kwargs["attention_mask"] = mask.to(self.draft_device)
            kwargs["position_ids"] = batch.positions(mask, start).to(self.draft_device)
        if new_ids.shape[1] > keep and self.draft_keeps_logits:
            kwargs["logits_to_keep"] = keep
        outputs = self.draft(**kwargs)
        self.call.stats.draft_forwards += 1
        return outputs.logits[:, -keep:].to(batch.ids.device)

    # -- verification ---------------------------------------------------------------------------------------------
    def _verify(self, batch: kv_cache.RowLayout, drafts: StepCandidates) -> tuple[torch.Tensor, torch.Tensor]:
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
        return self._accept(batch, drafts, logits)

    def _accept(self, batch: Any, drafts: StepCandidates, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's accepted candidates and next token from the target's logits over its last token and
        candidates (`(rows, k + 1, vocab)`): greedy matching, coupled or speculative sampling.

        Returns:
            `(num_accepted, next_tokens)`, each `torch.LongTensor` of shape `(rows,)`.
        """
        drafted, valid = drafts.tokens, drafts.valid
        k = drafted.shape[1]
        rows = batch.rows.tolist()
        processed = self.settings.processing(logits, self._views(rows), drafted, rows)
        if self.settings.coupled:
            noise = self._noise(processed).span(rows, [len(self.rows.generated[r]) for r in rows], k + 1)
            return accept_greedy(processed + noise, drafted, valid)
        if self.settings.speculative:
            return accept_sampled(processed, drafted, valid, drafts.proposal_distributions(processed.shape[-1]))
        return accept_greedy(processed, drafted, valid)

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def _append(
        self, batch: kv_cache.RowLayout, drafted, num_accepted, next_tokens
    ) -> tuple[list[list[int]], list[bool]]:
        """Each batch row's new tokens (`CallRows.append`), releasing the coupled noise up to each row's length (all
        of a row that ended)."""
        noise, generated = self.noise, self.rows.generated
        ended = None if noise is None else (lambda r, done: noise.release(r, None if done else len(generated[r])))
        return self.rows.append(
            batch.rows.tolist(), drafted.tolist(), num_accepted.tolist(), next_tokens.tolist(), self.settings, ended
        )

    def _verified_width(self, candidates: int) -> int:
        """The verification width a step of `candidates` candidates pays for (its candidates, in this loop)."""
        return candidates

    # -- streaming, output ----------------------------------------------------------------------------------------
    def _stream(self, batch: kv_cache.RowLayout, finished: list[bool]) -> None:
        self.rows.stream(self.settings.streamer, batch.rows.tolist(), finished, self.settings.pad_token_id)

    def _output(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        if self.call.memory is not None:
            self.call.sequences = self.rows.sequences()
        return self.rows.output(input_ids, self.settings.pad_token_id)
