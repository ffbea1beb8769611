"""`speckv profile`: rows as documented, hidden states, atomic resumable shards, two processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from speckv_hf.cli import app
from speckv_hf.core.context_source import ContextProposal
from speckv_hf.core.signals import StepSignals, TokenSignals
from speckv_hf.core.stats import GenerationStats, StepRecord
from speckv_hf.demo import pair_path
from speckv_hf.training.dataset import load_tokens
from speckv_hf.training.plan import SETTINGS_FILE
from speckv_hf.training.profile import profile
from speckv_hf.training.records import (
    STEP_SCHEMA,
    TOKEN_SCHEMA,
    RecordsSchemaError,
    read_records,
    schema_metadata,
    unit_shard_name,
)
from speckv_hf.training.rows import CallContext, call_rows

from .conftest import llama_config, noisy_copy

TOKEN_KEY = ["prompt_id", "compression", "setting", "step", "candidate"]
STEP_KEY = ["prompt_id", "compression", "setting", "step"]
TIMING = {"draft_ms", "target_ms", "cost_ratio", "draft_seconds", "verify_seconds", "overhead_seconds"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a machine whose cores are busy, two threads wait on each other (60x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    """A small Llama pair saved as users' folders, with the embedded tokenizer, and a 3-prompt file."""
    tokenizer = AutoTokenizer.from_pretrained(pair_path("target"), local_files_only=True)
    torch.manual_seed(11)
    config = llama_config(layers=2, vocab=len(tokenizer))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    target = LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("pair")
    for name, model in (("target", target), ("draft", noisy_copy(target, 0.03))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    lines = [
        {"task": "code", "prompt": "def add(a, b):\n    return"},
        {"task": "prose", "prompt": "The quick brown fox"},
        {"task": "prose", "prompt": "Once upon a time", "id": "story"},
    ]
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return root


def _pair_args(root: Path) -> list[str]:
    return ["--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(root / "prompts.jsonl")]


def _invoke(args):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def profiled(pair_dirs, tmp_path_factory):
    """One in-process run: 3 prompts x fixed:3, fixed:5 x greedy, sample, with hidden states."""
    out = tmp_path_factory.mktemp("records")
    summary = profile(
        out,
        target=str(pair_dirs / "target"),
        draft=str(pair_dirs / "draft"),
        prompts=pair_dirs / "prompts.jsonl",
        settings=["fixed:3", "fixed:5"],
        max_new_tokens=12,
        hidden_states=True,
        device="cpu",
        progress=False,
    )
    return out, summary


def _calls(table: pa.Table) -> dict[tuple, list[dict]]:
    calls: dict[tuple, list[dict]] = {}
    for row in table.to_pylist():
        calls.setdefault((row["prompt_id"], row["compression"], row["setting"]), []).append(row)
    return calls


def _without_timings(table: pa.Table, key: list[str]) -> list[dict]:
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in table.to_pylist()]
    return sorted(rows, key=lambda row: [row[k] for k in key])


# -- rows ----------------------------------------------------------------------------------------------------------
def _step(index, gamma, accepted, draft_seconds=0.004, verify_seconds=0.01):
    tokens = tuple(TokenSignals(0.5 + 0.1 * p, 0.6, 1.0 + p, 0.2, p) for p in range(gamma))
    return StepRecord(
        step=index,
        gamma=gamma,
        accepted=accepted,
        tokens_produced=accepted + 1,
        signals=StepSignals.from_tokens(tokens),
        tokens=tokens,
        draft_seconds=draft_seconds,
        verify_seconds=verify_seconds,
        overhead_seconds=0.0,
    )


def test_call_rows_match_a_hand_computation():
    steps = [_step(0, 3, 1, 1.0, 1.0), _step(1, 0, 0, 0.0, 0.010), _step(2, 2, 2), _step(3, 4, 0, 0.008, 0.02)]
    stats = GenerationStats(steps=steps)
    context = CallContext("p", "prose", "fp32", "fixed:4", False, "t | d")
    tokens, step_rows = call_rows(stats, context)
    assert [len([t for t in tokens if t["step"] == s.step]) for s in steps] == [3, 0, 2, 4]
    # accepted / reached per token, step by step.
    assert [(t["accepted"], t["reached"]) for t in tokens] == [
        (True, True), (False, True), (False, False),  # step 0: 1 of 3
        (True, True), (True, True),  # step 2: 2 of 2
        (False, True), (False, False), (False, False), (False, False),  # step 3: 0 of 4
    ]  # fmt: skip
    # previous drafting step's fraction (the empty step 1 is skipped) and the running rate before the step.
    by_step = {t["step"]: (t["prev_accepted_fraction"], t["running_acceptance"]) for t in tokens}
    assert by_step == {0: (1.0, 1.0), 2: (pytest.approx(1 / 3), pytest.approx(1 / 3)), 3: (1.0, pytest.approx(3 / 5))}
    # No cost ratio from the generator: medians over steps after the prefill step, verify of the empty step.
    assert tokens[0]["draft_ms"] == pytest.approx(2.0) and tokens[0]["target_ms"] == pytest.approx(10.0)
    assert tokens[0]["cost_ratio"] == pytest.approx(0.2)
    assert [s["acceptance_rate"] for s in step_rows] == [pytest.approx(1 / 3), 0.0, 1.0, 0.0]
    assert step_rows[0]["min_draft_confidence"] == pytest.approx(0.5)
    # With the generator's cost estimates: they are the columns.
    measured = GenerationStats(steps=steps, cost_ratio=0.5, draft_token_seconds=0.003, target_seconds=0.006)
    tokens, _ = call_rows(measured, context)
    assert (tokens[0]["draft_ms"], tokens[0]["target_ms"], tokens[0]["cost_ratio"]) == pytest.approx((3.0, 6.0, 0.5))


def test_call_rows_put_context_candidates_first():
    drafted = tuple(TokenSignals(0.9, 0.9, 0.1, 0.8, p) for p in range(3))
    proposal = ContextProposal((5, 6, 7), match_length=3, occurrences=2, agreeing=2, distance=10)
    step = StepRecord(
        step=0,
        gamma=5,
        accepted=3,
        tokens_produced=4,
        signals=StepSignals.from_tokens(drafted),
        tokens=drafted,
        draft_seconds=0.0,
        verify_seconds=0.01,
        overhead_seconds=0.0,
        context_tokens=2,
        context=proposal,
    )
    call = CallContext("p", "prose", "fp32", "context+fixed:3", False, "t | d")
    tokens, steps = call_rows(GenerationStats(steps=[step]), call)
    assert [(t["candidate"], t["position"], t["source"]) for t in tokens] == [
        (0, 0, "context"), (1, 1, "context"), (2, 0, "draft"), (3, 1, "draft"), (4, 2, "draft"),
    ]  # fmt: skip
    assert [(t["accepted"], t["reached"]) for t in tokens] == [
        (True, True), (True, True), (True, True), (False, True), (False, False),
    ]  # fmt: skip
    matches = [(t["match_length"], t["occurrences"], t["agreeing"], t["distance"]) for t in tokens]
    assert matches[:2] == [(3, 2, 2, 10)] * 2
    assert all(t["match_length"] is None and t["confidence"] == pytest.approx(0.9) for t in tokens[2:])
    assert all(t["confidence"] is None and t["hidden_state"] is None for t in tokens[:2])
    assert {t["context_tokens"] for t in tokens} == {2} and steps[0]["context_tokens"] == 2
    # Hidden states are indexed by candidate: the drafted rows get those after the context run.
    hidden = [[[float(c)] for c in range(5)]]
    tokens, _ = call_rows(GenerationStats(steps=[step]), call, hidden)
    assert [t["hidden_state"] for t in tokens] == [None, None, [2.0], [3.0], [4.0]]


def test_call_features_count_what_the_draft_policy_learns_from():
    """Behind a context run, a draft policy learns from its drafted tokens, and nothing from a step whose run was
    rejected: so do the rows' `prev_accepted_fraction` and `running_acceptance`."""
    proposal = ContextProposal((5, 6), match_length=2, occurrences=1, agreeing=1)

    def step(index, context, drafted, accepted):
        tokens = tuple(TokenSignals(0.9, 0.9, 0.1, 0.8, p) for p in range(drafted))
        return StepRecord(
            step=index,
            gamma=context + drafted,
            accepted=accepted,
            tokens_produced=accepted + 1,
            signals=StepSignals.from_tokens(tokens),
            tokens=tokens,
            draft_seconds=0.0,
            verify_seconds=0.01,
            overhead_seconds=0.0,
            context_tokens=context,
            context=proposal if context else None,
        )

    # Run accepted, 1 of 3 drafted; run rejected (nothing learnt); 2 of 2 drafted.
    steps = [step(0, 2, 3, 3), step(1, 2, 2, 1), step(2, 0, 2, 2), step(3, 0, 1, 0)]
    tokens, _ = call_rows(GenerationStats(steps=steps), CallContext("p", "prose", "fp32", "c", False, "t | d"))
    by_step = {t["step"]: (t["prev_accepted_fraction"], t["running_acceptance"]) for t in tokens}
    third = pytest.approx(1 / 3)
    assert by_step == {0: (1.0, 1.0), 1: (third, third), 2: (third, third), 3: (1.0, pytest.approx(3 / 5))}


def test_profiled_context_candidates(pair_dirs, tmp_path):
    """A context policy profiles: its candidates' rows come first in each step, the labels add up to the step's
    acceptance, and training reads the drafted rows only."""
    prompts = tmp_path / "repeats.jsonl"
    text = "one two three four five six seven. one two three four five six seven. one two three"
    prompts.write_text(json.dumps({"task": "prose", "prompt": text}) + "\n", encoding="utf-8")
    out = tmp_path / "records"
    profile(
        out,
        target=str(pair_dirs / "target"),
        draft=str(pair_dirs / "draft"),
        prompts=prompts,
        settings=["context+fixed:3"],
        sampling=["greedy"],
        max_new_tokens=16,
        hidden_states=True,
        device="cpu",
        progress=False,
    )
    tokens, steps = read_records(out)
    by_step = {}
    for row in tokens.to_pylist():
        by_step.setdefault(row["step"], []).append(row)
    for step in steps.to_pylist():
        rows = sorted(by_step.get(step["step"], []), key=lambda t: t["candidate"])
        c = step["context_tokens"]
        assert [t["candidate"] for t in rows] == list(range(step["gamma"]))
        assert [t["source"] for t in rows] == ["context"] * c + ["draft"] * (step["gamma"] - c)
        assert [t["position"] for t in rows] == [*range(c), *range(step["gamma"] - c)]
        assert sum(t["accepted"] for t in rows) == step["accepted"]
        assert [t["reached"] for t in rows] == [k <= step["accepted"] for k in range(step["gamma"])]
        assert all(t["match_length"] >= 1 and t["hidden_state"] is None for t in rows[:c])
        assert all(t["match_length"] is None and len(t["hidden_state"]) == 64 for t in rows[c:])
    sources = Counter(tokens.column("source").to_pylist())
    assert sources["context"] > 0 and sources["draft"] > 0, sources
    rows, info = load_tokens(out, "portable")
    assert len(rows.accepted) == sources["draft"] and info["rows_read"] == sources["draft"]


def test_profiled_rows_are_consistent(profiled, pair_dirs):
    out, summary = profiled
    assert (summary.done, summary.skipped, summary.units) == (12, 0, 12)
    tokens, steps = read_records(out)
    assert tokens.schema.remove_metadata().equals(TOKEN_SCHEMA) and steps.schema.remove_metadata().equals(STEP_SCHEMA)
    assert tokens.schema.metadata == schema_metadata()
    assert (tokens.num_rows, steps.num_rows) == (summary.token_rows, summary.step_rows)
    assert set(steps.column("setting").to_pylist()) == {"fixed:3", "fixed:3+sample", "fixed:5", "fixed:5+sample"}
    assert len(_calls(steps)) == 12
    token_keys = [tuple(r[k] for k in TOKEN_KEY) for r in tokens.to_pylist()]
    step_keys = [tuple(r[k] for k in STEP_KEY) for r in steps.to_pylist()]
    assert len(set(token_keys)) == len(token_keys) and len(set(step_keys)) == len(step_keys)

    token_calls = _calls(tokens)
    for key, call_steps in _calls(steps).items():
        call_steps.sort(key=lambda r: r["step"])
        assert [r["step"] for r in call_steps] == list(range(len(call_steps)))
        assert all(r["do_sample"] == key[2].endswith("+sample") for r in call_steps)
        assert sum(r["tokens_produced"] for r in call_steps) == 12
        call_tokens = token_calls.get(key, [])
        prev, drafted, accepted = 1.0, 0, 0
        for step in call_steps:
            rows = sorted((t for t in call_tokens if t["step"] == step["step"]), key=lambda t: t["candidate"])
            assert [t["candidate"] for t in rows] == [t["position"] for t in rows] == list(range(step["gamma"]))
            assert {t["source"] for t in rows} <= {"draft"} and step["context_tokens"] == 0
            assert sum(t["accepted"] for t in rows) == step["accepted"]
            assert [t["reached"] for t in rows] == [p <= step["accepted"] for p in range(step["gamma"])]
            for t in rows:
                assert t["prev_accepted_fraction"] == pytest.approx(prev)
                assert t["running_acceptance"] == pytest.approx(accepted / drafted if drafted else 1.0)
                assert (t["pair"], t["compression_method"], t["compression_bits"]) == (step["pair"], "none", 32)
            if step["gamma"]:
                prev = step["accepted"] / step["gamma"]
                drafted, accepted = drafted + step["gamma"], accepted + step["accepted"]
    assert set(tokens.column("pair").to_pylist()) == {f"{pair_dirs / 'target'} | {pair_dirs / 'draft'}"}


def test_hidden_states_match_direct_draft_forwards(profiled, pair_dirs):
    out, _ = profiled
    tokens, steps = read_records(out)
    target = AutoModelForCausalLM.from_pretrained(pair_dirs / "target").eval()
    draft = AutoModelForCausalLM.from_pretrained(pair_dirs / "draft").eval()
    assert {len(h) for h in tokens.column("hidden_state").to_pylist()} == {draft.config.hidden_size}
    tokenizer = AutoTokenizer.from_pretrained(pair_dirs / "target")
    prompt_ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    key = ("prose-000", "fp32", "fixed:5")
    with torch.no_grad():
        # Greedy assisted output is the target's own (lossless), so the sequence is known without the records.
        sequence = target.generate(prompt_ids, max_new_tokens=12, do_sample=False)[0]
        last_hidden = lambda ids: draft(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]  # noqa: E731
        call_tokens = _calls(tokens)[key]
        start, checked_rejected = prompt_ids.shape[1], 0
        for step in sorted(_calls(steps)[key], key=lambda r: r["step"]):
            prefix = sequence[:start].tolist()
            drafted: list[int] = []
            for row in sorted((t for t in call_tokens if t["step"] == step["step"]), key=lambda t: t["position"]):
                # The draft's greedy token at each position, also past the first rejection.
                expected = last_hidden(prefix + drafted)
                assert torch.allclose(torch.tensor(row["hidden_state"]), expected, atol=1e-4), (step, row["position"])
                if row["accepted"]:
                    assert sequence[start + row["position"]] == int(draft.lm_head(expected).argmax())
                checked_rejected += not row["reached"]
                drafted.append(int(draft.lm_head(expected).argmax()))
            start += step["tokens_produced"]
    assert start == sequence.shape[0] and checked_rejected > 0


def test_read_records_refuses_another_schema_version(tmp_path):
    for name in ("tokens", "steps"):
        (tmp_path / name).mkdir()
    table = STEP_SCHEMA.with_metadata({b"speckv_records_schema_version": b"999"}).empty_table()
    pq.write_table(table, tmp_path / "tokens" / "u-1.parquet")
    pq.write_table(table, tmp_path / "steps" / "u-1.parquet")
    with pytest.raises(RecordsSchemaError, match=r"version 999.*new --out"):
        read_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="--out folder"):
        read_records(tmp_path / "tokens")


# -- resume, processes ---------------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_same_records(pair_dirs, tmp_path):
    common = [*_pair_args(pair_dirs), "--settings", "fixed:2,fixed:4", "--max-new-tokens", "24", "--device", "cpu"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "speckv_hf", "profile", "--out", str(killed), *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list((killed / "steps").glob("*.parquet")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((killed / "steps").glob("*.parquet")))
    assert 1 <= done_before < 12, "the run finished before it was killed: give it more work"
    # What a kill at the worst moment leaves: a temporary file, a token shard without its step shard.
    orphan = unit_shard_name("story", "fp32", "fixed:4+sample")
    assert not (killed / "steps" / orphan).exists()
    (killed / "tokens" / orphan).write_bytes(b"partial")
    (killed / "steps" / f".{orphan}.abc123.tmp").write_bytes(b"partial")

    resumed = _invoke(["profile", "--out", str(killed), *common])
    assert resumed.exit_code == 0, resumed.output
    assert f"{12 - done_before} units profiled, {done_before} skipped" in resumed.output
    whole = tmp_path / "whole"
    assert _invoke(["profile", "--out", str(whole), *common]).exit_code == 0
    assert not [p for p in killed.rglob(".*.tmp")]

    (tokens_a, steps_a), (tokens_b, steps_b) = read_records(killed), read_records(whole)
    assert (tokens_a.num_rows, steps_a.num_rows) == (tokens_b.num_rows, steps_b.num_rows)
    for table_a, table_b, key in ((tokens_a, tokens_b, TOKEN_KEY), (steps_a, steps_b, STEP_KEY)):
        keys_a = [tuple(r[k] for k in key) for r in table_a.to_pylist()]
        assert len(set(keys_a)) == len(keys_a)
        assert set(keys_a) == {tuple(r[k] for k in key) for r in table_b.to_pylist()}
        greedy = lambda table: table.filter(pc.invert(table.column("do_sample")))  # noqa: E731
        assert _without_timings(greedy(table_a), key) == _without_timings(greedy(table_b), key)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_split_the_units(pair_dirs, tmp_path):
    out = tmp_path / "records"
    # accelerate's --cpu launches one process unless MPI is set up; --multi_gpu launches torchrun's processes, and
    # speckv profile opens a CPU (gloo) process group when no GPU is visible.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), "-m", "speckv_hf", "profile", "--out", str(out)]
    launch += [*_pair_args(pair_dirs), "--settings", "fixed:3", "--max-new-tokens", "6", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1/2: 3 units profiled" in result.stdout and "process 2/2: 3 units profiled" in result.stdout
    tokens, steps = read_records(out)
    units = Counter(tuple(r[k] for k in STEP_KEY[:3]) for r in steps.to_pylist() if r["step"] == 0)
    assert len(units) == 6 and set(units.values()) == {1}
    assert len({tuple(r[k] for k in TOKEN_KEY) for r in tokens.to_pylist()}) == tokens.num_rows
    assert json.loads((out / SETTINGS_FILE).read_text())["settings"] == ["fixed:3", "fixed:3+sample"]
    # The same rows as one process (sampled units too: each is seeded from the seed and its prompt).
    single = tmp_path / "single"
    assert _invoke(["profile", "--out", str(single), *launch[launch.index("--target") :]]).exit_code == 0
    for merged, alone, key in zip((tokens, steps), read_records(single), (TOKEN_KEY, STEP_KEY), strict=True):
        assert _without_timings(merged, key) == _without_timings(alone, key)


# -- bad input -----------------------------------------------------------------------------------------------------
def test_rerun_with_other_settings_fails_naming_the_setting(profiled, pair_dirs, tmp_path):
    out, _ = profiled
    args = ["profile", "--out", str(out), *_pair_args(pair_dirs), "--settings", "fixed:3,fixed:5"]
    result = _invoke([*args, "--max-new-tokens", "13", "--hidden-states"])
    assert result.exit_code == 2
    assert "max_new_tokens: 12 there, 13 now" in result.output and "another --out" in result.output
    result = _invoke([*args, "--max-new-tokens", "12", "--hidden-states", "--sampling", "greedy"])
    assert result.exit_code == 2 and "settings:" in result.output
    # The same settings resume: nothing left to do.
    result = _invoke([*args, "--max-new-tokens", "12", "--hidden-states"])
    assert result.exit_code == 0 and "0 units profiled, 12 skipped" in result.output, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "pass --out DIR"),
        (["--out", "{tmp}/r", "--compression", "fp99"], "unknown compression 'fp99'"),
        (["--out", "{tmp}/r", "--settings", "nope"], "bad setting 'nope'"),
        (["--out", "{tmp}/r", "--settings", "fixed:x"], "bad setting 'fixed:x'"),
        (["--out", "{tmp}/r", "--settings", "fixed:2+sample"], "--sampling sample"),
        (["--out", "{tmp}/r", "--sampling", "beam"], "bad sampling"),
        (["--out", "{tmp}/r", "--prompts", "{tmp}/missing.jsonl"], "not found"),
        (["--out", "{tmp}/r", "--prompts", "{tmp}/bad.jsonl"], "line 1"),
        (["--out", "{tmp}/r", "--target", "some/model"], "pass both --target and --draft"),
        (["--out", "{tmp}/file.txt"], "is a file"),
    ],
)
def test_bad_input_fails_before_loading(extra, message, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("speckv_hf.bench.pairs.load_pair_for", refuse)
    (tmp_path / "bad.jsonl").write_text('{"task": "x"}\n', encoding="utf-8")
    (tmp_path / "file.txt").write_text("", encoding="utf-8")
    result = _invoke(["profile", *(arg.format(tmp=tmp_path) for arg in extra)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r").exists()
