"""The benchmark harness: methods parse, calls are counted and interleaved, the report's arithmetic holds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from speckv_hf.bench.harness import CallRecord, encode_prompts, run_benchmark
from speckv_hf.bench.measure import Divergence, first_divergence, measure_draft_forward, measure_forward_costs
from speckv_hf.bench.methods import (
    DEFAULT_METHODS,
    HF_PROMPT_LOOKUP_TOKENS,
    check_methods,
    parse_methods,
    split_methods,
)
from speckv_hf.bench.prompts import PromptItem
from speckv_hf.bench.summary import is_constant, summarize

from .conftest import prompt


def test_parse_methods_defaults_and_ranges():
    methods = parse_methods(DEFAULT_METHODS)
    names = [m.name for m in methods]
    assert names[:6] == [
        "target-only",
        "hf-default",
        "hf-heuristic",
        "hf-prompt-lookup",
        "adaptive",
        "context+adaptive",
    ]
    assert names[6:14] == [f"fixed:{k}" for k in range(1, 9)] and names[-1] == "oracle"
    assert {m.kind for m in methods} == {"target", "hf", "speckv", "oracle"}
    # context policies, and their constants as a range
    assert [m.name for m in parse_methods("context,context+fixed:1-3")[1:]] == [
        "context",
        "context+fixed:1",
        "context+fixed:2",
        "context+fixed:3",
    ]
    # target-only always first, duplicates dropped, hf ranges expand.
    assert [m.name for m in parse_methods("fixed:4, fixed:4,hf-fixed-2-3")] == [
        "target-only",
        "fixed:4",
        "hf-fixed-2",
        "hf-fixed-3",
    ]
    assert parse_methods("hf-fixed-3")[1].hf_settings["num_assistant_tokens"] == 3


def test_methods_take_generator_and_policy_settings_in_brackets():
    spec = "fixed:2-3[warm_start=False],context+adaptive[max_guesses=0, guess_floor=0.5],adaptive[loop=transformers]"
    methods = parse_methods(spec + ",adaptive[sampling=coupled],compiled:fixed:2[batch_quorum=1.0]")[1:]
    assert [m.name for m in methods] == [
        "fixed:2[warm_start=False]",
        "fixed:3[warm_start=False]",
        "context+adaptive[max_guesses=0,guess_floor=0.5]",
        "adaptive[loop=transformers]",
        "adaptive[sampling=coupled]",
        "compiled:fixed:2[batch_quorum=1.0]",
    ]
    assert methods[0].policy == "fixed:2" and methods[0].settings == {"warm_start": False}
    assert methods[2].settings == {"max_guesses": 0, "guess_floor": 0.5}  # literals parsed, not strings
    assert methods[3].settings == {"loop": "transformers"}  # a bare word is text
    assert methods[4].sampling == "coupled" and methods[4].settings == {}
    assert methods[5].compiled and methods[5].settings == {"batch_quorum": 1.0}
    # Spaces are dropped from the name; true/false/none in any case are Python's.
    spaced = parse_methods("adaptive [ warm_start = false , cost_ratio = NONE ]")[1]
    assert spaced.name == "adaptive[warm_start=false,cost_ratio=NONE]"
    assert spaced.settings == {"warm_start": False, "cost_ratio": None}
    # The same name with and without settings are two methods, side by side.
    assert [m.name for m in parse_methods("adaptive,adaptive[max_tokens=3]")[1:]] == [
        "adaptive",
        "adaptive[max_tokens=3]",
    ]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["adaptive", "fixed:2", "context+adaptive", "hf-default"]),
            st.lists(st.sampled_from(["a=1", "b=0.5", "c=x"]), max_size=3),
        ),
        max_size=5,
    )
)
def test_split_methods_keeps_commas_inside_settings(specs):
    written = [name + (f"[{','.join(items)}]" if items else "") for name, items in specs]
    assert split_methods(" , ".join(written)) == list(dict.fromkeys(written))


def test_only_plain_fixed_methods_are_candidates_for_the_best_constant():
    assert is_constant("fixed:3") and is_constant("fixed:12")
    assert not any(map(is_constant, ["fixed:3[warm_start=False]", "compiled:fixed:3", "context+fixed:3", "fixed"]))


def test_parse_prompt_lookup_methods():
    methods = parse_methods("hf-prompt-lookup,hf-prompt-lookup-4")
    assert [(m.name, m.kind, m.prompt_lookup_num_tokens) for m in methods[1:]] == [
        ("hf-prompt-lookup", "hf", HF_PROMPT_LOOKUP_TOKENS),
        ("hf-prompt-lookup-4", "hf", 4),
    ]
    assert HF_PROMPT_LOOKUP_TOKENS == 10 and all(not m.hf_settings for m in methods[1:])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown method 'nope'"),
        ("fixed:5-2", "bad method range"),
        ("hf-fixed-0", "hf-fixed-K"),
        ("hf-prompt-lookup-0", "hf-prompt-lookup-N with N >= 1"),
        ("hf-prompt-lookup-x", "hf-prompt-lookup-N with N >= 1"),
        ("hf-nope", "hf-prompt-lookup"),
        ("adaptive[max_tokens]", "write key=value"),
        ("adaptive[max_tokens=4", r"NAME\[key=value,...\]"),
        ("adaptive[[max_tokens=4]]", r"NAME\[key=value,...\]"),
        ("[max_tokens=4]", r"NAME\[key=value,...\]"),
        ("adaptive[max_tokens=4,max_tokens=5]", "given twice"),
        ("adaptive[compile=True]", "compiled:POLICY"),
        ("oracle[max_tokens=4]", "apply to SpecKV policies"),
        ("hf-default[max_tokens=4]", "apply to SpecKV policies"),
        ("adaptive[max_guesses=0]", "unexpected keyword argument 'max_guesses'"),
        ("adaptive[warm_start=no]", "is no Python value: .* quote text"),
        ("adaptive[x='a,b']", "is no Python value: .* a value holds no comma"),
        ("adaptive[warm_start=1]", "warm_start takes True or False"),
        ("adaptive[probe_every=3.5]", "probe_every takes an integer"),
        ("adaptive[probe_every=True]", "probe_every takes an integer"),
        ("adaptive[cost_ratio=abc]", "is no Python value"),
        ("adaptive[cost_ratio='abc']", "cost_ratio takes a number or None"),
        ("fixed:4[num_tokens=2]", "sets num_tokens already"),
        ("context+fixed:4[num_tokens=2]", "sets num_tokens already"),
        ("fixed:2],fixed:3", r"NAME\[key=value,...\]"),
        ("adaptive[context_memory=64]", "use a context policy"),
        ("adaptive[sampling=nope]", "sampling must be one of"),
        ("compiled:adaptive[loop=transformers]", "drop loop='transformers'"),
    ],
)
def test_parse_methods_errors_name_the_fix(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_methods(spec)


def test_a_trained_predictor_runs_as_a_method(tmp_path):
    from speckv_hf import GammaPredictor, SpeckvPolicy
    from speckv_hf.predictor.features import PORTABLE_FEATURES

    GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[4]).save_pretrained(tmp_path / "mine")
    spec = f"speckv@{tmp_path / 'mine'}"
    methods = parse_methods(f"speckv,{spec}")
    assert [m.name for m in methods] == ["target-only", "speckv", spec]
    shipped, mine = methods[1], methods[2]
    assert shipped.policy == "speckv" and mine.kind == "speckv"
    assert isinstance(mine.policy, SpeckvPolicy) and mine.policy.config()["predictor"] == str(tmp_path / "mine")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("speckv@", "written speckv@PATH_OR_REPO_ID"),
        ("adaptive@somewhere", "written speckv@PATH_OR_REPO_ID"),
        ("speckv@./no/such/folder", "cannot be built"),
    ],
)
def test_a_predictor_method_that_cannot_load_fails_before_any_run(spec, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=match):
        parse_methods(spec)


class _Tokenizer:
    """Maps each character to one token id."""

    def __call__(self, text, return_tensors="pt"):
        class Batch:
            input_ids = torch.tensor([[3 + ord(c) % 90 for c in text]], dtype=torch.long)

        return Batch()


def _prompts(count: int):
    items = [PromptItem(f"t-{i}", "task", "".join(chr(97 + (i * 7 + j) % 26) for j in range(6))) for i in range(count)]
    return encode_prompts(_Tokenizer(), items)


def test_encode_prompts_refuses_empty_prompt():
    with pytest.raises(ValueError, match="tokenizes to no token"):
        encode_prompts(_Tokenizer(), [PromptItem("e", "task", "")])


def test_run_benchmark_counts_and_interleaves(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    methods = parse_methods("hf-fixed-2,fixed:2,oracle,context+oracle")
    assert [m.kind for m in methods[-2:]] == ["oracle", "oracle"]
    saved = draft.generation_config.num_assistant_tokens
    seen: list[str] = []
    records, reference = run_benchmark(
        target, draft, _prompts(2), methods, max_new_tokens=12, repeats=2, progress=seen.append
    )
    assert draft.generation_config.num_assistant_tokens == saved  # settings restored
    assert len(records) == 2 * 2 * 5 and len(seen) == len(records) + 5  # measured calls + one warm-up prompt
    # The order rotates from prompt to prompt.
    firsts = [records[i].method for i in range(0, len(records), 5)]
    assert len(set(firsts)) > 1
    for record in records:
        assert record.new_tokens == 12 and record.seconds > 0
        assert record.output == reference[record.prompt_id]  # greedy: every method emits the target's tokens
    by_method = {m.name: [r for r in records if r.method == m.name] for m in methods}
    assert all(r.target_forwards == 12 and r.draft_forwards == 0 for r in by_method["target-only"])
    assert all(r.drafted is None and r.draft_forwards > 0 for r in by_method["hf-fixed-2"])
    ours = by_method["fixed:2"]
    assert all(r.drafted > 0 and max(r.gamma_histogram) <= 2 and r.target_forwards < 12 for r in ours)
    # The oracles propose only what is accepted; the context's takes the draft's runs too, so it never needs more
    # target forwards.
    assert all(r.accepted == r.drafted for r in by_method["oracle"] + by_method["context+oracle"])
    for both, draft_only in zip(by_method["context+oracle"], by_method["oracle"], strict=True):
        assert both.target_forwards <= draft_only.target_forwards
    assert all(r.target_seconds is not None and r.target_seconds <= r.seconds for r in records)


def test_a_methods_settings_reach_its_generator(llama_pairs, monkeypatch):
    import speckv_hf.bench.harness as harness

    built = {}
    original = harness.speckv_generator

    def recording(method, sampling="auto"):
        generator = original(method, sampling)
        config = generator.policy.config()
        built[config["name"], generator.loop, config.get("max_guesses")] = method.settings
        return generator

    monkeypatch.setattr(harness, "speckv_generator", recording)
    target, draft = llama_pairs["llama-noisy"]
    methods = parse_methods("context+fixed:2,context+fixed:2[max_guesses=0],fixed:2[loop=transformers]")
    records, reference = run_benchmark(target, draft, _prompts(2), methods, max_new_tokens=10)
    assert all(r.output == reference[r.prompt_id] for r in records)
    assert len(records) == 2 * 4
    assert built == {
        ("context+fixed", "speckv", 8): {},
        ("context+fixed", "speckv", 0): {"max_guesses": 0},
        ("fixed", "transformers", None): {"loop": "transformers"},
    }


def test_settings_the_runs_sampling_refuses_fail_before_any_forward(llama_pairs):
    methods = parse_methods("fixed:2,fixed:2[loop=transformers]")
    check_methods(methods, "speculative")  # transformers' loop samples speculatively
    with pytest.raises(ValueError, match=r"method 'fixed:2\[loop=transformers\]' cannot run here: .*coupled"):
        check_methods(methods, "coupled")
    target, draft = llama_pairs["llama-noisy"]
    calls = []
    handle = target.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="cannot run here"):
            run_benchmark(target, draft, _prompts(1), methods, do_sample=True, sampling="coupled")
    finally:
        handle.remove()
    assert not calls


def test_run_benchmark_refuses_bad_settings(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    with pytest.raises(ValueError, match="oracle is defined on greedy"):
        run_benchmark(target, draft, _prompts(1), parse_methods("oracle"), do_sample=True)
    with pytest.raises(ValueError, match="repeats >= 1"):
        run_benchmark(target, draft, _prompts(1), parse_methods("fixed:1"), repeats=0)


def test_prompt_lookup_runs_without_the_draft_and_keeps_greedy_output(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    items = [PromptItem("rep", "task", "abcabcabcabcabc"), PromptItem("plain", "task", "qwertyuiop")]
    records, reference = run_benchmark(
        target, draft, encode_prompts(_Tokenizer(), items), parse_methods("hf-prompt-lookup-3"), max_new_tokens=12
    )
    lookup = [r for r in records if r.method == "hf-prompt-lookup-3"]
    assert len(lookup) == 2 and all(r.draft_forwards == 0 and r.drafted is None for r in lookup)
    assert all(r.output == reference[r.prompt_id] and r.new_tokens == 12 for r in lookup)
    sampled, _ = run_benchmark(
        target, draft, _prompts(1), parse_methods("hf-prompt-lookup"), max_new_tokens=8, do_sample=True
    )
    assert all(r.new_tokens == 8 and r.draft_forwards == 0 for r in sampled)


def test_sampled_benchmark_is_seeded(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    runs = [
        run_benchmark(target, draft, _prompts(1), parse_methods("fixed:2"), max_new_tokens=8, do_sample=True)[0]
        for _ in range(2)
    ]
    assert [r.output for r in runs[0]] == [r.output for r in runs[1]]


def _record(method, prompt_id, seconds, tokens=10, repeat=0, **extra):
    return CallRecord(method, prompt_id, "task", repeat, seconds, tokens, target_forwards=5, draft_forwards=4, **extra)


def test_summarize_arithmetic():
    records = [
        _record("target-only", "a", 1.0),
        _record("target-only", "b", 1.0),
        _record("fixed:2", "a", 0.5, drafted=8, accepted=6, gamma_histogram={2: 4}),
        _record("fixed:2", "b", 0.5, drafted=8, accepted=2, gamma_histogram={2: 4}),
        _record("fixed:3", "a", 0.8),
        _record("fixed:3", "b", 0.8),
        _record("oracle", "a", 0.25),
        _record("oracle", "b", 0.25),
    ]
    divergences = {
        ("fixed:3", "a"): Divergence(position=3, gap=0.01, path_noise=0.0, near_tie=True),
        ("fixed:3", "b"): Divergence(position=1, gap=2.0, path_noise=0.0, near_tie=False),
    }
    rows, overall = summarize("fp32", "fp32", records, divergences, do_sample=False)
    by_name = {r.method: r for r in rows}
    assert by_name["target-only"].tokens_per_s == pytest.approx(10.0)
    assert by_name["fixed:2"].speedup == pytest.approx(2.0) and by_name["fixed:2"].of_oracle == pytest.approx(0.5)
    assert by_name["fixed:2"].median_speedup == pytest.approx(2.0) and by_name["oracle"].iqr_speedup == (4.0, 4.0)
    assert by_name["fixed:2"].acceptance_rate == pytest.approx(0.5)
    assert by_name["fixed:2"].gamma_histogram == {2: 8}
    assert by_name["fixed:3"].mismatches == 2 and by_name["fixed:3"].near_tie_mismatches == 1
    assert overall.best_fixed == "fixed:2" and overall.measured_oracle_tokens_per_s == pytest.approx(40.0)
    assert overall.vs_best_fixed == {
        "oracle": {"paired": pytest.approx(2.0), "paired_iqr": [2.0, 2.0], "pairs": 2, "total": pytest.approx(2.0)}
    }
    assert by_name["fixed:2"].paired_calls == 2 and by_name["fixed:2"].paired_of_oracle == pytest.approx(0.5)
    assert by_name["fixed:2"].repeat_speedups == [pytest.approx(2.0)]
    assert overall.warnings == []  # every call of a method ran at one speed, and the oracle is on top
    assert [f["prompt_id"] for f in overall.failures] == ["b"]
    sampled, _ = summarize("fp32", "fp32", records, {}, do_sample=True)
    assert all(r.mismatches is None for r in sampled)


def test_first_divergence(llama_pairs):
    target, _ = llama_pairs["llama-noisy"]
    input_ids = prompt(6)
    reference = target.generate(input_ids, max_new_tokens=8, do_sample=False)[0, 6:].tolist()
    assert first_divergence(target, input_ids, reference, list(reference)) is None
    changed = list(reference)
    changed[4] = (changed[4] + 1) % 96
    divergence = first_divergence(target, input_ids, reference, changed)
    assert divergence.position == 4
    assert divergence.gap > 0.03 and not divergence.near_tie  # a random swap is not the model's near-tie


def test_measured_forward_costs(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    assert 0 < measure_draft_forward(draft, prompt(6), repeats=3) < 1.0
    costs = measure_forward_costs(target, draft, prompt(6), max_candidates=4)
    assert sorted(costs.target_forward) == [0, 1, 2, 4]
    assert costs.target_prefill > 0 and costs.draft_forward > 0


def test_compiled_methods_run_lossless_with_the_loops_own_counts(llama_pairs, monkeypatch):
    """`target-compiled`, `compiled:POLICY` and `compiled:oracle` (here with dynamo's eager backend: graphs captured,
    no code generated): every output is the target's, and forwards are counted by the loop (compiled forwards run no
    module hooks)."""
    from speckv_hf.decoding import _transformers, compiled

    monkeypatch.setattr(compiled.CompileOptions.__init__, "__defaults__", ("eager", None, (1, 2, 3, 5, 9), 256))
    everywhere = _transformers.compile_everywhere_config
    monkeypatch.setattr("speckv_hf.bench.harness.compile_everywhere_config", lambda: everywhere(backend="eager"))
    target, draft = llama_pairs["llama-noisy"]
    methods = parse_methods("target-compiled,compiled:fixed:2,compiled:oracle")
    records, reference = run_benchmark(target, draft, _prompts(2), methods, max_new_tokens=12)
    assert {r.method for r in records} == {"target-only", "target-compiled", "compiled:fixed:2", "compiled:oracle"}
    for record in records:
        assert record.output == reference[record.prompt_id] and record.new_tokens == 12
    ours = [r for r in records if r.method.startswith("compiled:")]
    assert all(0 < r.target_forwards < 12 and r.draft_forwards > 0 and r.target_seconds is None for r in ours)
    assert all(r.accepted == r.drafted for r in records if r.method == "compiled:oracle")
