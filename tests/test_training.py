"""speckv train: synthetic records with a known acceptance law, the split, determinism, metrics, the stop rule, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from speckv_hf.cli import app
from speckv_hf.predictor.features import PORTABLE_FEATURES, RECORDED_FEATURES, feature_matrix, token_features
from speckv_hf.predictor.model import GammaPredictor
from speckv_hf.training.dataset import TrainingDataError, heldout_prompts
from speckv_hf.training.io import save_training
from speckv_hf.training.metrics import auc, rule_throughput, step_throughput
from speckv_hf.training.records import TOKEN_SCHEMA, schema_metadata
from speckv_hf.training.train import train_predictor

HIDDEN = 6


def acceptance_logit(confidence: float, position: int, hidden0: float) -> float:
    """The known law: confident tokens pass, later positions less so, and (pair records) a hidden direction."""
    return 7.0 * (confidence - 0.5) - 0.45 * position + 0.8 + 2.5 * hidden0


def write_records(
    root: Path,
    prompts: int = 60,
    steps: int = 18,
    gamma: int = 8,
    hidden: bool = False,
    seed: int = 0,
    shards: int = 3,
    sampled: bool = False,
) -> Path:
    """Token shards of `prompts` prompts, each one greedy call of `steps` steps drafting `gamma` tokens (the last
    step of a call is length-capped). `sampled` writes sampled calls instead (prompt ids `s...`), whose acceptance
    is a coin flip that no signal predicts."""
    rng = np.random.default_rng(seed)
    rows = []
    for prompt in range(prompts):
        cost_ratio = float(rng.uniform(0.05, 0.2))
        prev_fraction, drafted_so_far, accepted_so_far = 1.0, 0, 0
        for step in range(steps):
            drafted = gamma if step < steps - 1 else int(rng.integers(1, gamma + 1))
            running = accepted_so_far / drafted_so_far if drafted_so_far else 1.0
            accepted, alive = 0, True
            for position in range(drafted):
                confidence = float(rng.beta(2.0, 1.2))
                state = rng.normal(size=HIDDEN).astype(np.float32) if hidden else None
                hidden0 = float(state[0]) if hidden else 0.0
                law = 0.8 if sampled else 1 / (1 + math.exp(-acceptance_logit(confidence, position, hidden0)))
                ok = alive and rng.random() < law
                rows.append(
                    {
                        "prompt_id": f"{'s' if sampled else 'p'}{prompt:03d}",
                        "compression": "fp32",
                        "setting": f"fixed:{gamma}",
                        "step": step,
                        "position": position,
                        "candidate": position,
                        "source": "draft",
                        "context_tokens": 0,
                        "task": "synthetic",
                        "do_sample": sampled,
                        "pair": "org/target | org/draft",
                        "compression_method": "none",
                        "compression_bits": 32,
                        "quantized": False,
                        "draft_ms": 1.0,
                        "target_ms": 1.0 / cost_ratio,
                        "cost_ratio": cost_ratio,
                        "confidence": confidence,
                        "max_prob": max(confidence, float(rng.uniform(0.3, 1.0))),
                        "entropy": float(rng.exponential(1.0)),
                        "margin": float(rng.uniform(0.0, confidence)),
                        "ngram_found": bool(position % 2),
                        "ngram_agrees": bool(position % 4 == 1),
                        "prev_accepted_fraction": prev_fraction,
                        "running_acceptance": running,
                        "accepted": bool(ok),
                        "reached": alive,
                        "hidden_state": None if state is None else state.tolist(),
                    }
                )
                accepted += int(ok)
                alive = bool(ok)
            prev_fraction = accepted / drafted
            drafted_so_far += drafted
            accepted_so_far += accepted
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    schema = TOKEN_SCHEMA.with_metadata(schema_metadata())
    for shard in range(shards):
        part = [row for row in rows if int(row["prompt_id"][1:]) % shards == shard]
        name = f"u-{'s' if sampled else ''}{shard}.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=schema), tokens / name)
    return root


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def trained(records: Path):
    return train_predictor(records, seed=0)


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args], env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1"})


# -- metrics and the stop rule on hand-made cases -------------------------------------------------------------------
def test_auc_with_ties_matches_hand_count() -> None:
    # Positive vs negative pairs, a tie counting 1/2: 0.8 beats all three (3); 0.5 ties two (1) and beats 0.2 (1);
    # 0.2 loses to both 0.5 (0) and ties 0.2 (0.5): (3 + 2 + 0.5) / 9.
    scores = np.array([0.8, 0.5, 0.2, 0.5, 0.5, 0.2])
    labels = np.array([True, True, True, False, False, False])
    assert auc(scores, labels) == pytest.approx(5.5 / 9.0)
    assert auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert math.isnan(auc(np.array([0.3, 0.4]), np.array([True, True])))


def test_constants_and_oracle_by_hand() -> None:
    drafted, accepted, cost = np.array([4, 4, 2]), np.array([1, 4, 0]), np.array([0.1, 0.1, 0.2])
    # k = 2: min(2, G) = 2, 2, 2 drafted; tokens 2 + 3 + 1 = 6; time 3 * (1 + 0.06) + 0.2 + 0.2 + 0.4 = 3.98.
    assert step_throughput(np.minimum(drafted, 2), accepted, cost, 0.03) == pytest.approx(6 / 3.98)
    # oracle: drafts 1, 4, 0: tokens 2 + 5 + 1 = 8; time (0.1 + 1.03) + (0.4 + 1.12) + 1 = 3.65.
    assert step_throughput(accepted, accepted, cost, 0.03) == pytest.approx(8 / 3.65)
    assert step_throughput(np.zeros(3, dtype=int), accepted, cost, 0.03) == 1.0


def test_perfect_predictor_reaches_oracle_and_useless_one_stays_put() -> None:
    drafted, accepted, cost = np.array([5, 5, 3, 5]), np.array([2, 5, 1, 3]), np.full(4, 0.1)
    columns = np.arange(5)[None, :]
    p = (columns < accepted[:, None]).astype(float)
    p_next = (columns + 1 < accepted[:, None]).astype(float)  # token j's prediction for token j + 1
    throughput, lengths = rule_throughput(p, p_next, drafted, accepted, cost, 0.9, start=1.5, slope=0.03)
    assert lengths.tolist() == accepted.tolist()
    assert throughput == pytest.approx(step_throughput(accepted, accepted, cost, 0.03))
    # A first-token rate too low for the cost: the rule never drafts (throughput 1, target only).
    throughput, lengths = rule_throughput(p, p_next, drafted, accepted, cost, 0.01, start=1.5, slope=0.03)
    assert lengths.tolist() == [0, 0, 0, 0] and throughput == 1.0


def test_rule_stops_where_marginal_value_falls_below_its_throughput() -> None:
    # One step, p = p_next = 0.5 everywhere: token j + 1 is worth 0.5 ** (j + 1) / (0.1 + 0.03) tokens per unit time.
    p = np.full((1, 6), 0.5)
    throughput, lengths = rule_throughput(p, p, np.array([6]), np.array([6]), np.array([0.1]), 0.5, 1.0, 0.03, 1)
    # R = 1 (one iteration): 0.5 / 0.13 and 0.25 / 0.13 exceed it, 0.125 / 0.13 does not: 2 tokens.
    assert lengths.tolist() == [2] and throughput == pytest.approx(3 / 1.26)


# -- records, split, features --------------------------------------------------------------------------------------
def test_feature_matrix_matches_token_features(records: Path) -> None:
    table = pq.read_table(next((records / "tokens").glob("*.parquet"))).slice(0, 5)
    matrix = feature_matrix({name: table.column(name).to_numpy().astype(np.float64) for name in RECORDED_FEATURES})
    row = table.to_pylist()[3]
    expected = token_features(*(row[name] for name in RECORDED_FEATURES))
    np.testing.assert_allclose(matrix[3], np.array(expected, dtype=np.float32), rtol=1e-6)


def test_split_is_by_prompt_and_deterministic() -> None:
    prompts = np.array([f"q{i % 200}" for i in range(2000)])
    held = heldout_prompts(prompts, 0.25)
    assert not set(prompts[held]) & set(prompts[~held])
    assert 0.15 < len(set(prompts[held])) / 200 < 0.35
    assert (heldout_prompts(prompts[::-1], 0.25) == held[::-1]).all()


def test_trained_predictor_beats_chance_and_confidence(trained) -> None:
    _, report = trained
    assert report.predictor.auc > 0.75
    # The label also depends on position, which calibrated confidence cannot see.
    assert report.predictor.auc > report.calibrated_confidence.auc + 0.01
    assert report.predictor.log_loss < report.calibrated_confidence.log_loss
    importance = report.feature_importance
    assert importance["confidence"] > 0.05 and importance["position"] > 0.01
    assert importance["entropy"] < 0.02  # pure noise
    splits = report.splits
    assert splits["held_out"]["prompts"] + splits["train"]["prompts"] + splits["validation"]["prompts"] == 60
    assert sum(b["count"] for b in report.calibration["predictor"]) == splits["held_out"]["rows"]
    rule = report.stop_rule
    assert rule.best_constant == max(rule.constants.values())
    assert rule.predictor <= rule.oracle and rule.predictor_vs_best_constant > 0.97
    assert rule.predictor_vs_oracle == pytest.approx(rule.predictor / rule.oracle)
    json.dumps(report.to_dict(), allow_nan=False)
    assert report.train_seconds < 20


def test_report_splits_the_metrics_by_decoding_mode(tmp_path: Path) -> None:
    root = write_records(tmp_path / "records", prompts=40)
    write_records(root, prompts=40, seed=1, sampled=True)
    _, report = train_predictor(root, seed=0, epochs=20)
    greedy, sampled = report.by_mode["greedy"], report.by_mode["sampled"]
    assert greedy["predictor"].auc > 0.75
    assert abs(sampled["predictor"].auc - 0.5) < 0.1  # the pooled AUC hides a mode where nothing is predicted
    assert sampled["predictor"].base_rate == pytest.approx(0.8, abs=0.05)
    assert set(report.to_dict()["by_mode"]["sampled"]) == {"predictor", "calibrated_confidence"}
    greedy_only = train_predictor(write_records(tmp_path / "greedy", prompts=20), seed=0, epochs=2)[1]
    assert set(greedy_only.by_mode) == {"greedy"}


def test_same_seed_gives_identical_weights(records: Path) -> None:
    first, _ = train_predictor(records, hidden_sizes=(8,), epochs=3, seed=3)
    second, _ = train_predictor(records, hidden_sizes=(8,), epochs=3, seed=3)
    other, _ = train_predictor(records, hidden_sizes=(8,), epochs=3, seed=4)
    state, again = first.state_dict(), second.state_dict()
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert not torch.equal(state["mlp.0.weight"], other.state_dict()["mlp.0.weight"])


def test_pair_predictor_reads_hidden_states(tmp_path: Path, records: Path) -> None:
    pair_records = write_records(tmp_path / "pair", prompts=40, steps=12, hidden=True, seed=1)
    predictor, report = train_predictor(pair_records, kind="pair", hidden_sizes=(16,), epochs=15)
    assert predictor.kind == "pair" and predictor.hidden_state_dim == HIDDEN
    assert report.feature_importance["hidden_state"] > 0.02
    with pytest.raises(TrainingDataError, match="speckv profile --hidden-states"):
        train_predictor(records, kind="pair")


def test_steps_with_a_missing_feature_are_dropped_whole(tmp_path: Path) -> None:
    root = write_records(tmp_path / "r", prompts=24, steps=4, shards=1)
    shard = root / "tokens" / "u-0.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    missing = [row for row in rows if row["prompt_id"] == "p005" and row["step"] == 2]
    missing[-1]["cost_ratio"] = None  # one row of the step: the whole step goes
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    _, report = train_predictor(root, hidden_sizes=(4,), epochs=1)
    assert report.records["rows_dropped"] == len(missing) and report.records["rows_read"] == len(rows)


def test_too_few_prompts_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="profile more prompts"):
        train_predictor(write_records(tmp_path / "one", prompts=1, steps=3), epochs=1)


def test_save_is_complete_or_absent(tmp_path: Path, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, report = trained
    out = tmp_path / "ckpt"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("speckv_hf.training.io._plot_calibration", broken)
    with pytest.raises(RuntimeError):
        save_training(predictor, report, out, "speckv train")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_trains_and_writes_a_loadable_checkpoint(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    result = invoke(str(records), "--out", str(out), "--hidden-sizes", "16,16", "--epochs", "20", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines()), result.output
    assert "AUC" in result.output and "best constant" in result.output
    predictor = GammaPredictor.from_pretrained(out, expected_features=PORTABLE_FEATURES)
    assert predictor.hidden_sizes == (16, 16)
    report = json.loads((out / "train_report.json").read_text())
    assert (out / "calibration.png").stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert str(round(report["predictor"]["auc"], 4)) in card and "org/target | org/draft" in card
    assert "held-out AUC, greedy" in card and "AUC, greedy" in result.output
    assert predictor.metadata["command"].startswith(f"speckv train {records} --out {out}")
    # A second run refuses the non-empty folder unless told to overwrite it.
    again = invoke(str(records), "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert invoke(str(records), "--out", str(out), "--epochs", "1", "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda records, tmp: [str(tmp / "missing"), "--out", str(tmp / "o")], "does not exist"),
        (lambda records, tmp: [str(tmp), "--out", str(tmp / "o")], "no tokens/*.parquet"),
        (lambda records, tmp: [str(records), "--out", str(tmp / "o"), "--hidden-sizes", "32,x"], "--hidden-sizes"),
        (lambda records, tmp: [str(records), "--out", str(tmp / "o"), "--kind", "both"], "--kind"),
        (lambda records, tmp: [str(records)], "--out"),
    ],
)
def test_cli_bad_input_exits_2_before_work(records: Path, tmp_path: Path, make_args, message: str) -> None:
    result = invoke(*make_args(records, tmp_path))
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()
