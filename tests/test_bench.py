"""The benchmark harness counts what it claims to count."""

from __future__ import annotations

from speckv_hf.bench import BenchConfig, default_configs, measure_draft_forward, run_benchmark

from .conftest import prompt


def test_run_benchmark_counts(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    configs = [
        BenchConfig("target alone", "target"),
        BenchConfig("hf constant γ=2", "hf", {"num_assistant_tokens": 2, "assistant_confidence_threshold": 0.0}),
        BenchConfig("speckv fixed:2", "speckv", policy="fixed:2"),
    ]
    prompts = [(prompt(6, seed=s), None) for s in range(2)]
    saved = draft.generation_config.num_assistant_tokens
    results = run_benchmark(target, draft, prompts, configs=configs, max_new_tokens=12)
    assert draft.generation_config.num_assistant_tokens == saved  # settings restored
    alone, hf, ours = results
    assert alone.tokens == hf.tokens == ours.tokens == 24
    assert alone.target_forwards == 24 and alone.draft_forwards == 0
    assert alone.outputs == hf.outputs == ours.outputs  # greedy: every method emits the target's tokens
    assert ours.target_forwards < 24 and ours.drafted > 0 and 0 <= ours.acceptance_rate <= 1
    assert hf.acceptance_rate is not None and alone.acceptance_rate is None
    assert ours.tokens_per_target_forward > 1 and ours.seconds > 0
    assert sum(ours.time_split.values()) <= ours.seconds
    assert ours.draft_loop_seconds_per_token is not None and alone.draft_loop_seconds_per_token is None


def test_default_configs_cover_the_issue():
    names = [c.name for c in default_configs()]
    assert names[:3] == ["target alone", "hf default", "hf heuristic"]
    assert [n for n in names if n.startswith("hf constant")] == [f"hf constant γ={g}" for g in (1, 2, 4, 6, 8)]
    assert {"speckv adaptive", "speckv fixed:4", "speckv heuristic", "speckv confidence"} <= set(names)


def test_measure_draft_forward(llama_pairs):
    _, draft = llama_pairs["llama-noisy"]
    assert 0 < measure_draft_forward(draft, prompt(6), repeats=3) < 1.0
