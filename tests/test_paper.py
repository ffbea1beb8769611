"""speckv_hf.paper.data / paper_tables / `speckv paper`: the SpecKV paper's Table 1, reproduced and rescored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the faithful reproduction needs scikit-learn (the 'paper' extra)")

from typer.testing import CliRunner

from speckv_hf.cli import app
from speckv_hf.paper.data import (
    GAMMAS,
    REQUIRED_COLUMNS,
    PaperDataError,
    export_paper_npz,
    load_paper_data,
    paper_split,
)
from speckv_hf.paper.tables import (
    CELL_ORACLE,
    MEASURED_POLICIES,
    causal_signals,
    paper_report,
    replay_weights,
    to_markdown,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speckv-paper"
COMPRESSIONS, TASKS = ("fp16", "int8", "nf4"), ("code", "math", "chat", "summarization")
POLICIES = ("Fixed-4", "Fixed-best", "Task-oracle", "SpecKV-fast", "SpecKV-accurate")


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def make_data(folder: Path, prompts: int = 2, seed: int = 0) -> Path:
    """A small data folder with the released files' columns: 3 compressions x 4 γ x 4 tasks x `prompts` runs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    steps, runs = [], []
    for comp in COMPRESSIONS:
        for gamma in GAMMAS:
            for task in TASKS:
                for prompt in range(prompts):
                    length = int(rng.integers(6, 10))
                    for step in range(length):
                        confidence = float(rng.uniform(0.3, 1.0))
                        accepted = int(rng.binomial(gamma, confidence))
                        entropy = round(3 * (1 - confidence), 4)
                        steps.append(
                            [
                                comp,
                                gamma,
                                task,
                                step,
                                accepted,
                                accepted / gamma,
                                accepted + 1,
                                entropy,
                                round(confidence, 4),
                                round(entropy * 1.5, 4),
                                round(confidence * 0.8, 4),
                            ]
                        )
                    elapsed = 0.02 * length * (1 + 0.1 * gamma)
                    runs.append(
                        [comp, gamma, task, f"p{prompt}", 40, elapsed, round(40 / elapsed, 1), 0.7, 1.0, 0.8, length]
                    )
    _write(folder / "phase2_step_results.csv", list(REQUIRED_COLUMNS["phase2_step_results.csv"]), steps)
    _write(
        folder / "phase2_experiment_results.csv",
        [
            "compression",
            "gamma",
            "task",
            "prompt",
            "num_tokens",
            "elapsed_sec",
            "tokens_per_sec",
            "mean_acceptance_rate",
            "mean_draft_entropy",
            "mean_draft_confidence",
            "num_steps",
        ],
        runs,
    )
    _write(
        folder / "phase2_optimal_gamma.csv",
        ["compression", "task", "optimal_gamma", "best_tps"],
        [[c, t, 2 + 2 * (i % 4), 50.0] for i, (c, t) in enumerate((c, t) for c in COMPRESSIONS for t in TASKS)],
    )
    _write(
        folder / "paper_table1_policy_comparison.csv",
        ["compression", *POLICIES],
        [[label, 3.0, 5.0, 4.0, 5.0, 6.0] for label in (*COMPRESSIONS, "Overall")],
    )
    _write(
        folder / "paper_confidence_intervals.csv",
        ["policy", "mean", "ci_lower", "ci_upper"],
        [[name, 4.0, 0.0, 100.0] for name in POLICIES[:4]],
    )
    _write(
        folder / "phase3_policy_comparison.csv",
        ["policy", "compression", "task", "mean_expected_tokens"],
        [["Fixed-4", "fp16", "code", 3.0]],
    )
    (folder / "paper_numbers.json").write_text(json.dumps({"dataset": {"train_records": 1, "test_records": 1}}))
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    folder = make_data(tmp_path_factory.mktemp("paper") / "data")
    data = load_paper_data(folder)
    return folder, data, paper_report(data)


def _forward(npz: np.lib.npyio.NpzFile, features: np.ndarray) -> np.ndarray:
    return (np.maximum(features @ npz["W1"] + npz["b1"], 0.0) @ npz["W2"] + npz["b2"]).ravel()


def test_fixed_policy_equals_hand_computation_from_exported_weights(synthetic, tmp_path: Path) -> None:
    _, data, report = synthetic
    npz = np.load(export_paper_npz(data, tmp_path / "mlp.npz"))
    assert {name: npz[name].shape for name in npz.files} == {"W1": (6, 16), "b1": (16,), "W2": (16, 1), "b2": (1,)}
    _, test = paper_split(data)
    features = data.features()[test]
    features[:, -1] = 4
    by_hand = np.clip(_forward(npz, features), 0, 1) * 4 + 1
    assert report["table1"]["Fixed-4"]["Overall"] == pytest.approx(by_hand.mean(), rel=1e-9)
    fp16 = data.steps["compression"][test] == "fp16"
    assert report["table1"]["Fixed-4"]["fp16"] == pytest.approx(by_hand[fp16].mean(), rel=1e-9)


def test_speckv_fast_bounds_the_fixed_policies_under_the_papers_own_scoring(synthetic) -> None:
    # The paper's scoring is SpecKV-fast's objective, so it can never lose to a constant γ under it.
    table = synthetic[2]["table1"]
    for name in ("Fixed-4", "Fixed-best", "Task-oracle"):
        for label in ("fp16", "int8", "nf4", "Overall"):
            assert table["SpecKV-fast"][label] >= table[name][label] - 1e-12


def test_causal_signals_are_the_previous_step_of_the_same_run(synthetic) -> None:
    data = synthetic[1]
    previous, has_previous = causal_signals(data)
    own = np.column_stack(
        [
            data.steps[k]
            for k in ("mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence")
        ]
    )
    rows = np.flatnonzero(has_previous)
    np.testing.assert_array_equal(previous[rows], own[rows - 1])
    assert (data.steps["run"][rows] == data.steps["run"][rows - 1]).all()
    assert (~has_previous).sum() == len(data.experiments["num_steps"])  # one first step per run
    assert np.isnan(previous[~has_previous]).all() and (data.steps["step"][~has_previous] == 0).all()


def test_replay_weights_hand_computed() -> None:
    gamma = np.array([2, 2, 4, 2, 8])
    cells = np.array(["a", "a", "a", "b", "b"])
    np.testing.assert_allclose(replay_weights(gamma, cells), [1.5, 1.5, 3.0, 2.0, 2.0])


def test_measured_fixed_policy_is_the_cell_weighted_mean_of_measured_tokens(synthetic) -> None:
    _, data, report = synthetic
    _, has_previous = causal_signals(data)
    _, test = paper_split(data)
    test = test[has_previous[test]]
    steps = data.steps
    cells = np.char.add(steps["compression"][test], steps["task"][test])
    tokens, gamma = steps["tokens_produced"][test], steps["gamma"][test]
    total = weight = 0.0
    for cell in np.unique(cells):
        at = (cells == cell) & (gamma == 4)
        if at.any():
            total += (cells == cell).sum() * tokens[at].mean()
            weight += (cells == cell).sum()
    measured = report["rescored"]["measured"]
    assert measured["Fixed-4"]["Overall"] == pytest.approx(total / weight)
    assert measured["Fixed-4"]["matched"] == int((gamma == 4).sum())
    lo, hi = measured["Fixed-4"]["ci"]
    assert lo <= measured["Fixed-4"]["Overall"] <= hi


def test_cell_oracle_is_at_least_every_constant_policy(synthetic) -> None:
    rescored = synthetic[2]["rescored"]["measured"]
    for name in ("Fixed-2", "Fixed-4", "Fixed-best", "Task-oracle"):
        assert rescored[CELL_ORACLE]["Overall"] >= rescored[name]["Overall"] - 1e-9


def test_report_json_shape(synthetic) -> None:
    report = json.loads(json.dumps(synthetic[2]))
    assert set(report["table1"]) == set(POLICIES)
    for row in report["table1"].values():
        assert set(row) == {"fp16", "int8", "nf4", "Overall"}
    assert set(report["rescored"]["measured"]) == set(MEASURED_POLICIES)
    assert set(report["rescored"]["wall_clock"]) == set(MEASURED_POLICIES)
    assert set(report["confidence_intervals"]) == set(POLICIES)
    assert report["within_paper_ci"] == dict.fromkeys(POLICIES[:4], True)  # the synthetic CIs are [0, 100]
    assert report["source"]["licence"] == "MIT" and "2605.02888" in report["source"]["citation"]
    assert report["rescored"]["rows"]["first_steps_dropped"] == len(synthetic[1].experiments["num_steps"])
    assert "| SpecKV-fast |" in to_markdown(synthetic[2])


@pytest.mark.parametrize("name", sorted(REQUIRED_COLUMNS))
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    folder = make_data(tmp_path / "data", prompts=1)
    (folder / name).unlink()
    with pytest.raises(PaperDataError, match=f"{name} is missing"):
        load_paper_data(folder)


def test_missing_column_is_named(tmp_path: Path) -> None:
    folder = make_data(tmp_path / "data", prompts=1)
    path = folder / "phase2_step_results.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("min_draft_confidence", "min_conf"), *lines[1:]]) + "\n")
    with pytest.raises(PaperDataError, match="lacks column\\(s\\) min_draft_confidence"):
        load_paper_data(folder)


def test_shuffled_steps_are_refused(tmp_path: Path) -> None:
    folder = make_data(tmp_path / "data", prompts=1)
    path = folder / "phase2_step_results.csv"
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PaperDataError, match="original row order"):
        load_paper_data(folder)


def test_cli_writes_json_and_fits_80_columns(synthetic, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["paper", "--data", str(synthetic[0]), "--json", str(out)], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["table1"]["Fixed-4"]["Overall"] == pytest.approx(
        synthetic[2]["table1"]["Fixed-4"]["Overall"]
    )
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_cli_without_data_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data/speckv-paper here
    result = CliRunner().invoke(app, ["paper"])
    assert result.exit_code == 2
    assert "pass --data DIR" in result.output


def test_cli_bad_data_exits_2_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # short relative paths: rich wraps long ones
    folder = make_data(Path("data"), prompts=1)
    (folder / "paper_numbers.json").unlink()
    result = CliRunner().invoke(app, ["paper", "--data", "data", "--json", "out.json"])
    assert result.exit_code == 2 and "paper_numbers.json is missing" in result.output
    assert not (tmp_path / "out.json").exists()
    result = CliRunner().invoke(app, ["paper", "--data", "data", "--json", "no/x.json"])
    assert result.exit_code == 2 and "existing folder" in result.output


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"the paper's released data is not at {REAL_DATA}")
def test_real_data_reproduces_table1_within_the_papers_cis() -> None:
    data = load_paper_data(REAL_DATA)
    report = paper_report(data)
    assert report["split"]["train"] == 4089 and report["split"]["test"] == 1023
    assert all(report["within_paper_ci"].values()) and len(report["within_paper_ci"]) == 5
    for name, paper in data.paper_table1.items():
        for label, value in paper.items():
            assert round(report["table1"][name][label], 2) == pytest.approx(value, abs=0.005), (name, label)
    # The four MLP-scored policies match the paper's bootstrap to its 3 printed decimals (same seed, same draws);
    # the random forest's predictions differ slightly across scikit-learn versions: 6.389 here, 6.386 published.
    for name, bounds in data.paper_cis.items():
        tolerance = 0.01 if name == "SpecKV-accurate" else 6e-4
        assert report["table1"][name]["Overall"] == pytest.approx(bounds["mean"], abs=tolerance)
        assert report["confidence_intervals"][name] == pytest.approx(
            [bounds["ci_lower"], bounds["ci_upper"]], abs=tolerance
        )


def test_missing_sklearn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from speckv_hf.paper.data import require_sklearn

    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(ImportError, match=r"pip install scikit-learn \(from a clone: pip install -e '\.\[paper\]'\)"):
        require_sklearn()
