"""Batched speculative decoding in the library's own loop: lossless per row, per-row stats, bad input refused."""

from __future__ import annotations

import functools
from typing import ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM, MistralForCausalLM, TextStreamer

from speckv_hf import SpecKVGenerator
from speckv_hf.policies.base import FixedPolicy
from speckv_hf.policies.context import ContextPolicy

from .conftest import EOS, VOCAB, AlwaysContext, GuessOnly, greedy, llama_config, mistral_config, noisy_copy, prompt


def left_padded(lengths: list[int], seed: int = 0, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random prompts of the given lengths, left-padded with 0 as a tokenizer would."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def mistral_pair():
    """A sliding-window target (window 8, far shorter than the sequences) and a noisy copy as its draft."""
    torch.manual_seed(3)
    config = mistral_config()
    target = MistralForCausalLM(config).eval()
    return target, noisy_copy(target, 0.02)


@pytest.fixture(scope="module")
def pairs(llama_pairs, gpt2_pair, mistral_pair):
    return {
        "llama-noisy": llama_pairs["llama-noisy"],
        "llama-random": llama_pairs["llama-random"],
        "gpt2-noisy": gpt2_pair,
        "mistral-sliding": mistral_pair,
    }


POLICIES = [
    "fixed:1",
    "fixed:3",
    "fixed:6",
    "heuristic",
    "confidence",
    "adaptive",
    "context",
    "context+fixed:2",
    "context+adaptive",
    AlwaysContext(FixedPolicy(2)),  # context then drafted tokens in one step, every step a proposal exists
    AlwaysContext(None, take=4),
    GuessOnly(FixedPolicy(3)),  # drafted tokens confirmed from the context's guesses
]


@pytest.mark.parametrize("pair", ["llama-noisy", "llama-random", "gpt2-noisy", "mistral-sliding"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    max_new_tokens=st.integers(1, 28),
    policy=st.sampled_from(POLICIES),
    eos=st.sampled_from([None, EOS, 5, 17, 40]),
    seed=st.integers(0, 10_000),
)
def test_batch_greedy_equals_target_alone(pairs, pair, lengths, max_new_tokens, policy, eos, seed):
    """Every row equals target-alone batched greedy on the same padded batch: batch sizes 1-8, ragged prompts, EOS
    (several ids, so rows end at different steps or never), any length budget, every policy."""
    target, draft = pairs[pair]
    ids, mask = left_padded(lengths, seed=seed)
    expected = greedy(target, ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos)
    generator = SpecKVGenerator(policy, loop="speckv", plain_fallback=False)
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
    )
    assert torch.equal(out, expected)
    stats = generator.last_stats
    assert stats.loop == "speckv" and stats.batch_size == len(lengths)
    new_tokens = out[:, ids.shape[1] :]
    if len(lengths) > 1:
        assert len(stats.rows) == len(lengths)
        assert sum(row.tokens_emitted for row in stats.rows) == stats.tokens_emitted
        for row, tokens in zip(stats.rows, new_tokens, strict=True):
            ended = (tokens == eos).nonzero() if eos is not None else torch.empty(0)
            assert row.tokens_emitted == (int(ended[0]) + 1 if len(ended) else max_new_tokens)
            assert row.accepted_tokens <= row.drafted_tokens
            assert sum(row.gamma_histogram.values()) == row.target_forwards <= stats.target_forwards


def test_cache_edge_of_the_position_table(llama_pairs):
    """Rows reach the last position the model has (max_position_embeddings = 128) while the batch's columns, with
    the padding re-alignment adds, run past it."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([100, 96, 90], seed=5)
    expected = greedy(target, ids, attention_mask=mask, max_new_tokens=28, eos_token_id=None)
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator("fixed:5"),
        max_new_tokens=28,
        eos_token_id=None,
    )
    assert torch.equal(out, expected)


def test_rows_that_finish_leave_the_batch(llama_pairs):
    """A row that hits EOS early stops costing forwards: its row takes part in fewer steps than the batch."""
    target, draft = llama_pairs["llama-layers"]
    ids, mask = left_padded([6, 6, 6, 6], seed=11)
    for eos in range(3, VOCAB):
        expected = greedy(target, ids, attention_mask=mask, max_new_tokens=24, eos_token_id=eos)
        ended = (expected[:, 6:] == eos).any(-1)
        if 0 < int(ended.sum()) < 4:
            break
    else:
        raise AssertionError("test setup: no EOS id ends some rows but not all; pick another seed")
    generator = SpecKVGenerator("fixed:2")
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=24,
        eos_token_id=eos,
    )
    assert torch.equal(out, expected)
    forwards = [row.target_forwards for row, done in zip(generator.last_stats.rows, ended, strict=True) if done]
    assert max(forwards) < generator.last_stats.target_forwards


def test_batch_one_through_own_loop_matches_transformers_loop(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    input_ids = prompt(7, seed=3)
    outs = []
    for loop in ("speckv", "transformers"):
        generator = SpecKVGenerator("fixed:3", loop=loop)
        outs.append(
            greedy(
                target,
                input_ids,
                assistant_model=draft,
                candidate_generator=generator,
                max_new_tokens=20,
                eos_token_id=None,
            )
        )
        assert generator.last_stats.loop == loop
        assert generator.last_stats.tokens_emitted == 20
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], greedy(target, input_ids, max_new_tokens=20, eos_token_id=None))


def test_num_return_sequences_runs_as_a_batch(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    torch.manual_seed(0)
    generator = SpecKVGenerator("fixed:2")
    out = target.generate(
        prompt(5),
        assistant_model=draft,
        candidate_generator=generator,
        do_sample=True,
        num_return_sequences=3,
        max_new_tokens=8,
        eos_token_id=None,
    )
    assert out.shape == (3, 13)
    assert generator.last_stats.batch_size == 3


def test_logits_processors_that_read_the_sequence_see_each_rows_own(llama_pairs):
    """repetition_penalty and no_repeat_ngram_size read `input_ids`: each row's processors see its own prompt and
    tokens exactly as target-alone generation gives them, whatever padding the loop adds."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([4, 9, 6], seed=8)
    kwargs = dict(
        attention_mask=mask, max_new_tokens=20, eos_token_id=None, repetition_penalty=1.3, no_repeat_ngram_size=3
    )
    expected = greedy(target, ids, **kwargs)
    out = greedy(target, ids, assistant_model=draft, candidate_generator=SpecKVGenerator("fixed:4"), **kwargs)
    assert torch.equal(out, expected)


def test_stop_strings_criteria_per_row(llama_pairs):
    """A stopping criterion beyond length and EOS (here: a custom one) ends each row at the token it fires on."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == 7

    target, draft = llama_pairs["llama-layers"]
    ids, mask = left_padded([5, 8], seed=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=24, eos_token_id=None, pad_token_id=0)
    expected = greedy(target, ids, stopping_criteria=StoppingCriteriaList([StopAfter()]), **kwargs)
    out = greedy(
        target,
        ids,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator("fixed:4"),
        stopping_criteria=StoppingCriteriaList([StopAfter()]),
        **kwargs,
    )
    # transformers stops the whole batch once every row fired; each row's tokens up to its stop are the same.
    for row_out, row_expected in zip(out, expected, strict=True):
        stops = (row_expected[ids.shape[1] :] == 7).nonzero()
        end = ids.shape[1] + (int(stops[0]) + 1 if len(stops) else 24)
        assert torch.equal(row_out[:end], row_expected[:end])


def test_streamer_gets_what_batched_greedy_streams(llama_pairs):
    """One `(batch_size,)` tensor per new position, pad for rows that ended: what transformers' batched decoding
    puts, in the same order."""
    target, draft = llama_pairs["llama-layers"]

    class Recorder(TextStreamer):
        def __init__(self):
            self.puts: list[list[int]] = []
            self.ended = False

        def put(self, value):
            self.puts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    ids, mask = left_padded([5, 8, 3], seed=4)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, eos_token_id=9, pad_token_id=0)
    plain, ours = Recorder(), Recorder()
    expected = greedy(target, ids, streamer=plain, **kwargs)
    out = greedy(target, ids, assistant_model=draft, candidate_generator=SpecKVGenerator(), streamer=ours, **kwargs)
    assert torch.equal(out, expected)
    assert ours.puts == plain.puts and ours.ended


def test_pipeline_with_batch_size(llama_pairs):
    from transformers import pipeline

    from .test_hook import _char_tokenizer

    target, draft = llama_pairs["llama-noisy"]
    tokenizer = _char_tokenizer(VOCAB)
    tokenizer.padding_side = "left"
    generate = pipeline("text-generation", model=target, tokenizer=tokenizer)
    texts = ["hello world", "a", "speculative decoding", "batch"]
    kwargs = dict(max_new_tokens=10, do_sample=False, return_tensors=True, batch_size=4)
    expected = generate(texts, **kwargs)
    generator = SpecKVGenerator("fixed:3")
    got = generate(texts, assistant_model=draft, candidate_generator=generator, **kwargs)
    assert [g[0]["generated_token_ids"] for g in got] == [e[0]["generated_token_ids"] for e in expected]
    assert generator.last_stats.batch_size == 4


def test_right_padding_refused_before_any_work(llama_pairs, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([4, 6])
    right_ids, right_mask = ids.flip(-1), mask.flip(-1)
    monkeypatch.setattr(target, "forward", _no_forward)
    with pytest.raises(ValueError, match=r"right-padded.*padding_side='left'"):
        target.generate(
            right_ids,
            attention_mask=right_mask,
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(),
            max_new_tokens=4,
        )


def _no_forward(*args, **kwargs):
    raise AssertionError("a forward ran before the bad input was refused")


@pytest.mark.parametrize("loop", ["speckv", "transformers"])
def test_empty_prompt_refused_naming_the_fix(llama_pairs, loop):
    target, draft = llama_pairs["llama-noisy"]
    with pytest.raises(ValueError, match=r"at least one token.*shape \(1, 0\).*BOS"):
        target.generate(
            torch.zeros((1, 0), dtype=torch.long),
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(loop=loop),
            max_new_tokens=4,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_scores": True, "return_dict_in_generate": True}, "output_scores=True is not supported"),
        ({"num_beams": 2}, "num_beams=1"),
        ({"cache_implementation": "static"}, "dynamic KV cache"),
        ({"past_key_values": "prefilled"}, "builds its own KV caches"),
    ],
)
def test_batch_settings_the_loop_cannot_serve(llama_pairs, kwargs, message):
    from transformers import DynamicCache

    target, draft = llama_pairs["llama-noisy"]
    if kwargs.get("past_key_values") == "prefilled":
        kwargs = {"past_key_values": DynamicCache()}
    ids, mask = left_padded([4, 6])
    with pytest.raises(ValueError, match=message):
        target.generate(
            ids,
            attention_mask=mask,
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(),
            max_new_tokens=4,
            **kwargs,
        )


def test_return_dict_in_generate_gives_sequences(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([4, 6])
    out = target.generate(
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator(),
        max_new_tokens=5,
        return_dict_in_generate=True,
        do_sample=False,
        eos_token_id=None,
    )
    assert torch.equal(out.sequences, greedy(target, ids, attention_mask=mask, max_new_tokens=5, eos_token_id=None))


def test_batch_warm_start_is_per_batch_size(llama_pairs):
    """A batch's step costs are not one row's: learned costs are filed under the batch size."""
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator()
    ids, mask = left_padded([5, 5])
    greedy(target, ids, attention_mask=mask, assistant_model=draft, candidate_generator=generator, max_new_tokens=8)
    assert generator._handoff.warm.key == (id(target), id(draft), 2)
    greedy(target, prompt(5), assistant_model=draft, candidate_generator=generator, max_new_tokens=8)
    assert generator._handoff.warm.key == (id(target), id(draft), 1)


def test_unrelated_draft_batch_still_lossless_with_sampling_shapes(llama_pairs):
    """Sampling in a batch: rows of different lengths, EOS, output shaped as target-alone's."""
    target, _ = llama_pairs["llama-noisy"]
    draft = LlamaForCausalLM(llama_config(layers=1)).eval()
    ids, mask = left_padded([3, 7, 5], seed=1)
    torch.manual_seed(0)
    out = target.generate(
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator("fixed:3"),
        do_sample=True,
        max_new_tokens=12,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    assert out.shape[0] == 3 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 12
    assert torch.equal(out[:, : ids.shape[1]], ids)


def test_batch_quorum_validated():
    with pytest.raises(ValueError, match=r"batch_quorum must be in \(0, 1\]"):
        SpecKVGenerator(batch_quorum=0)


@pytest.mark.parametrize("quorum", [0.01, 1.0])
def test_any_quorum_stays_lossless(llama_pairs, quorum):
    """Whichever share of rows decides the batch's draft length, every row's output is the target's."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([3, 8, 5, 6], seed=9)
    expected = greedy(target, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None)
    generator = SpecKVGenerator("confidence", batch_quorum=quorum)
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=20,
        eos_token_id=None,
    )
    assert torch.equal(out, expected)


def test_models_needing_another_cache_refused_before_any_work(llama_pairs, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    monkeypatch.setattr(type(target), "_supports_default_dynamic_cache", classmethod(lambda cls: False))
    monkeypatch.setattr(target, "forward", _no_forward)
    with pytest.raises(ValueError, match="keeps a cache of its own kind"):
        target.generate(prompt(5), assistant_model=draft, candidate_generator=SpecKVGenerator(), max_new_tokens=4)


def test_min_new_tokens_with_several_eos_ids_per_row(llama_pairs):
    """A processor whose token list happens to have one entry per row (two EOS ids, two rows) is not cut per row."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([4, 7], seed=6)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, eos_token_id=[5, 17], min_new_tokens=10, pad_token_id=0)
    expected = greedy(target, ids, **kwargs)
    out = greedy(target, ids, assistant_model=draft, candidate_generator=SpecKVGenerator("fixed:3"), **kwargs)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("policy", ["fixed:3", GuessOnly(FixedPolicy(3))], ids=["fixed:3", "guesses"])
def test_prefix_allowed_tokens_fn_sees_each_rows_index(llama_pairs, policy):
    """Each row's prefix function gets the row's own index. With one, the draft runs over no context guesses (a
    prefix function may allow no token after a guess, which transformers refuses)."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([5, 3, 6], seed=7)
    seen: set[int] = set()

    def allowed(batch_id, sent):
        seen.add(batch_id)
        return list(range(10 + 20 * batch_id, 40 + 20 * batch_id))

    kwargs = dict(attention_mask=mask, max_new_tokens=12, eos_token_id=None, prefix_allowed_tokens_fn=allowed)
    expected = greedy(target, ids, **kwargs)
    seen.clear()
    generator = SpecKVGenerator(policy)
    out = greedy(target, ids, assistant_model=draft, candidate_generator=generator, **kwargs)
    assert torch.equal(out, expected)
    assert seen == {0, 1, 2}
    assert generator.last_stats.guessed_tokens == 0


def test_processing_knows_a_prefix_function():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        PrefixConstrainedLogitsProcessor,
        TopKLogitsWarper,
    )

    from speckv_hf.decoding.verification import Processing

    prefix = PrefixConstrainedLogitsProcessor(lambda batch_id, sent: [1, 2], num_beams=1)
    assert Processing(LogitsProcessorList([TopKLogitsWarper(5), prefix])).constrains_prefix
    assert not Processing(LogitsProcessorList([TopKLogitsWarper(5)])).constrains_prefix
    assert not Processing(None).constrains_prefix


def test_stateful_processors_refused_before_any_forward(llama_pairs, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    monkeypatch.setattr(target, "forward", _no_forward)
    with pytest.raises(ValueError, match=r"keeps state from one generated position.*guidance_scale"):
        target.generate(
            prompt(5),
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(),
            max_new_tokens=4,
            guidance_scale=1.5,
        )


@pytest.mark.parametrize("mask", [[[1, 0, 1, 1]], [[1, 1, 1, 1], [0, 0, 0, 0]]])
def test_masks_that_are_not_left_padding_refused(llama_pairs, monkeypatch, mask):
    target, draft = llama_pairs["llama-noisy"]
    mask = torch.tensor(mask)
    ids = torch.randint(3, VOCAB, mask.shape, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(target, "forward", _no_forward)
    with pytest.raises(ValueError, match="left"):
        target.generate(
            ids, attention_mask=mask, assistant_model=draft, candidate_generator=SpecKVGenerator(), max_new_tokens=4
        )


def test_beams_from_the_models_generation_config_refused(llama_pairs, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    monkeypatch.setattr(target.generation_config, "num_beams", 2)
    monkeypatch.setattr(target, "forward", _no_forward)
    with pytest.raises(ValueError, match="num_beams=1"):
        target.generate(prompt(5), assistant_model=draft, candidate_generator=SpecKVGenerator(), max_new_tokens=4)


def test_failed_call_hands_nothing_on(llama_pairs, monkeypatch):
    """A call that raises mid-generation leaves no stats and does not overwrite what earlier calls learned."""
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator("fixed:2")
    greedy(target, prompt(5), assistant_model=draft, candidate_generator=generator, max_new_tokens=6)
    learned = generator._handoff.warm
    calls = {"n": 0}
    original = target.forward

    @functools.wraps(original)  # the loop reads the forward's signature (its cache argument's name)
    def fail_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, "forward", fail_later)
    with pytest.raises(RuntimeError, match="simulated"):
        greedy(target, prompt(5), assistant_model=draft, candidate_generator=generator, max_new_tokens=20)
    assert generator.last_stats is None
    assert generator._handoff.warm is learned


class _EmittedSpy(ContextPolicy):
    """A context policy that logs, per row's policy, the tokens each step's outcome says the row appended."""

    log: ClassVar[list[tuple[int, tuple[int, ...]]]] = []  # a class attribute: the rows' deep copies share it

    def observe(self, outcome):
        type(self).log.append((id(self), outcome.emitted))
        super().observe(outcome)


def test_each_rows_policy_is_told_the_tokens_its_row_appended(llama_pairs):
    """`StepOutcome.emitted` is what judges the context's proposals a step did not take: step after step, a row's
    policy must be told exactly the tokens its row gained, in a left-padded batch whose rows end at different steps."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([6, 9, 4])
    plain = greedy(target, ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)[:, ids.shape[1] :]
    ends = [int(plain[1, 2]), int(plain[0, 5])]  # tokens the target emits early in two rows: they end there
    _EmittedSpy.log.clear()
    generator = SpecKVGenerator(_EmittedSpy(FixedPolicy(2)))
    out = target.generate(
        input_ids=ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=ends,
        pad_token_id=0,
    )
    told: dict[int, list[int]] = {}
    for policy, emitted in _EmittedSpy.log:
        told.setdefault(policy, []).extend(emitted)
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        end = next((i for i, token in enumerate(row) if token in ends), None)
        rows.append(row if end is None else row[: end + 1])
    assert sorted(len(row) for row in rows)[1] <= 6  # two rows ended early, at other steps than the third
    assert len(told) == 3
    assert sorted(told.values()) == sorted(rows)
