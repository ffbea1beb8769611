"""The SpecKV paper's released data (arXiv 2605.02888, MIT licence): loading, its Table 1, and its MLP's weights.

The paper ("SpecKV", data and notebooks at github.com/Amorfati123/SpecKV) scores γ policies offline on 5,112
speculation steps of Llama-3.2-1B drafting for Llama-3.2-3B (fp16, int8, nf4 targets). This module reproduces
what `notebooks/Phase4_Final_Evaluation.ipynb` does, step for step; `speckv_hf.paper.tables` rescores it.

The data is read from the folder at run time and never copied: pass the folder holding the released CSVs.
scikit-learn is needed (`pip install scikit-learn`, or the `paper` extra) and imported only when a model is fitted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COMPRESSION_CODES",
    "FEATURE_ORDER",
    "GAMMAS",
    "PAPER_CITATION",
    "REQUIRED_COLUMNS",
    "PaperData",
    "PaperDataError",
    "export_paper_npz",
    "fit_paper_forest",
    "fit_paper_mlp",
    "load_paper_data",
    "paper_split",
    "reproduce_table1",
    "require_sklearn",
]

PAPER_CITATION = "SpecKV (arXiv 2605.02888); data and notebooks: github.com/Amorfati123/SpecKV, MIT licence"
GAMMAS = (2, 4, 6, 8)
COMPRESSIONS = ("fp16", "int8", "nf4")
COMPRESSION_CODES = {"fp16": 0, "int8": 1, "nf4": 2}  # the notebook's comp_map
SIGNALS = ("mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence")
# The MLP's input order; entropies are in bits (the profiling notebook takes log2), confidences are probabilities.
FEATURE_ORDER = (*SIGNALS, "comp_enc", "gamma")
POLICIES = ("Fixed-4", "Fixed-best", "Task-oracle", "SpecKV-fast", "SpecKV-accurate")
SEED = 42  # every random_state in the notebook, and its np.random.seed

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "phase2_step_results.csv": (
        "compression",
        "gamma",
        "task",
        "step",
        "accepted",
        "acceptance_rate",
        "tokens_produced",
        *SIGNALS,
    ),
    "phase2_experiment_results.csv": (
        "compression",
        "gamma",
        "task",
        "prompt",
        "num_tokens",
        "elapsed_sec",
        "tokens_per_sec",
        "num_steps",
    ),
    "phase2_optimal_gamma.csv": ("compression", "task", "optimal_gamma", "best_tps"),
    "paper_table1_policy_comparison.csv": ("compression", *POLICIES),
    "paper_confidence_intervals.csv": ("policy", "mean", "ci_lower", "ci_upper"),
    "phase3_policy_comparison.csv": ("policy", "compression", "task", "mean_expected_tokens"),
}
NUMBERS_FILE = "paper_numbers.json"


class PaperDataError(ValueError):
    """The data folder is not the paper's released data; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class PaperData:
    """The released CSVs, as columns.

    Attributes:
        folder: where they were read from.
        steps: phase2_step_results.csv, one numpy array per column (N = 5,112 steps); `run` is added: the index of
            the generation run (one prompt at one compression and γ) each step belongs to, in file order.
        experiments: phase2_experiment_results.csv (240 runs), one array per column; run i holds steps `run == i`.
        optimal_gamma: phase2_optimal_gamma.csv as {(compression, task): γ of the best measured tokens/s}.
        paper_table1: paper_table1_policy_comparison.csv as {policy: {compression or "Overall": value}}.
        paper_cis: paper_confidence_intervals.csv as {policy: {"mean", "ci_lower", "ci_upper"}}.
        numbers: paper_numbers.json.
    """

    folder: Path
    steps: dict[str, np.ndarray]
    experiments: dict[str, np.ndarray]
    optimal_gamma: dict[tuple[str, str], int]
    paper_table1: dict[str, dict[str, float]]
    paper_cis: dict[str, dict[str, float]]
    numbers: dict[str, Any]

    def features(self, signals: np.ndarray | None = None) -> np.ndarray:
        """The MLP's inputs in `FEATURE_ORDER`, unscaled, shape (N, 6); `signals` (N, 4) replaces the step's own."""
        steps = self.steps
        signals = np.column_stack([steps[name] for name in SIGNALS]) if signals is None else signals
        comp_enc = np.array([COMPRESSION_CODES[name] for name in steps["compression"]], dtype=float)
        return np.column_stack([signals, comp_enc, steps["gamma"].astype(float)])


def _read_csv(folder: Path, name: str) -> dict[str, np.ndarray]:
    path = folder / name
    if not path.is_file():
        raise PaperDataError(f"{path} is missing: pass --data the folder of the paper's released CSVs ({name}, ...).")
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in REQUIRED_COLUMNS[name] if column not in (reader.fieldnames or [])]
        if missing:
            raise PaperDataError(f"{path} lacks column(s) {', '.join(missing)}: use the paper's released {name}.")
        rows = list(reader)
    if not rows:
        raise PaperDataError(f"{path} has no rows: use the paper's released {name}.")
    columns: dict[str, np.ndarray] = {}
    for column in reader.fieldnames or []:
        values = [row[column] for row in rows]
        try:
            columns[column] = np.array([float(value) for value in values])
        except ValueError:
            columns[column] = np.array(values)
    return columns


def _check_values(name: str, columns: dict[str, np.ndarray], column: str, allowed: tuple[Any, ...]) -> None:
    unknown = sorted({str(value) for value in columns[column]} - {str(value) for value in allowed})
    if unknown:
        raise PaperDataError(f"{name} column {column} holds {', '.join(unknown[:3])}; expected one of {allowed}.")


def load_paper_data(folder: str | Path) -> PaperData:
    """Reads and validates the paper's released data folder.

    Args:
        folder: the folder holding phase2_step_results.csv, phase2_experiment_results.csv, phase2_optimal_gamma.csv,
            paper_table1_policy_comparison.csv, paper_confidence_intervals.csv, phase3_policy_comparison.csv and
            paper_numbers.json.

    Returns:
        The data, with each step's run index attached.

    Raises:
        PaperDataError: a file or column is missing, a value is outside the paper's grid, or the steps do not
            line up with the runs (the message names which and the fix).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PaperDataError(f"data folder {folder} does not exist: pass --data the folder of the released CSVs.")
    tables = {name: _read_csv(folder, name) for name in REQUIRED_COLUMNS}
    numbers_path = folder / NUMBERS_FILE
    if not numbers_path.is_file():
        raise PaperDataError(f"{numbers_path} is missing: pass --data the folder of the paper's released data.")
    numbers = json.loads(numbers_path.read_text(encoding="utf-8"))
    steps, experiments = tables["phase2_step_results.csv"], tables["phase2_experiment_results.csv"]
    for name, columns in (("phase2_step_results.csv", steps), ("phase2_experiment_results.csv", experiments)):
        _check_values(name, columns, "compression", COMPRESSIONS)
        _check_values(name, columns, "gamma", tuple(float(gamma) for gamma in GAMMAS))
    steps["gamma"] = steps["gamma"].astype(int)
    steps["step"] = steps["step"].astype(int)
    experiments["gamma"] = experiments["gamma"].astype(int)
    steps["run"] = _run_index(steps, experiments)
    optimal = tables["phase2_optimal_gamma.csv"]
    optimal_gamma = {
        (str(comp), str(task)): int(gamma)
        for comp, task, gamma in zip(optimal["compression"], optimal["task"], optimal["optimal_gamma"], strict=True)
    }
    table1 = tables["paper_table1_policy_comparison.csv"]
    paper_table1 = {
        policy: {str(label): float(value) for label, value in zip(table1["compression"], table1[policy], strict=True)}
        for policy in POLICIES
    }
    cis = tables["paper_confidence_intervals.csv"]
    paper_cis = {
        str(policy): {key: float(cis[key][i]) for key in ("mean", "ci_lower", "ci_upper")}
        for i, policy in enumerate(cis["policy"])
    }
    return PaperData(folder, steps, experiments, optimal_gamma, paper_table1, paper_cis, numbers)


def _run_index(steps: dict[str, np.ndarray], experiments: dict[str, np.ndarray]) -> np.ndarray:
    # The step file has no prompt column: a run is a block of consecutive rows of one (compression, γ, task) whose
    # step counter starts at 0 and rises by 1 (the profiling notebook logs steps in that order, run after run).
    step, key = steps["step"], np.char.add(np.char.add(steps["compression"], "/"), steps["task"])
    same = (key[1:] == key[:-1]) & (steps["gamma"][1:] == steps["gamma"][:-1]) & (step[1:] == step[:-1] + 1)
    bad = np.flatnonzero(~same & (step[1:] != 0))
    if step[0] != 0 or bad.size:
        row = 0 if step[0] != 0 else int(bad[0]) + 1
        raise PaperDataError(
            f"phase2_step_results.csv row {row + 2} breaks a run (step {step[row]} does not follow the row before): "
            "use the released file unsorted, in its original row order."
        )
    run = np.concatenate([[0], np.cumsum(~same)])
    lengths = np.bincount(run).tolist()
    logged = [int(n) for n in experiments["num_steps"] if n > 0]
    if lengths != logged:
        raise PaperDataError(
            f"phase2_step_results.csv has {len(lengths)} runs that do not match num_steps of the {len(logged)} runs "
            "in phase2_experiment_results.csv: use both files from the same release."
        )
    return run


def require_sklearn() -> Any:
    """Imports scikit-learn, or raises an ImportError naming the extra to install."""
    try:
        import sklearn
    except ImportError as error:
        raise ImportError(
            "the paper reproduction needs scikit-learn: pip install scikit-learn "
            "(from a clone: pip install -e '.[paper]')"
        ) from error
    return sklearn


def paper_split(data: PaperData) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's split: 80/20 of the steps (rows, not runs), stratified by compression_task, seed 42.

    Returns:
        (train, test) row indices, 4,089 and 1,023 on the released data.
    """
    require_sklearn()
    from sklearn.model_selection import train_test_split

    strata = np.char.add(np.char.add(data.steps["compression"], "_"), data.steps["task"])
    rows = np.arange(len(strata))
    train, test = train_test_split(rows, test_size=0.2, random_state=SEED, stratify=strata)
    return np.asarray(train), np.asarray(test)


def fit_paper_mlp(features: np.ndarray, target: np.ndarray) -> Any:
    """The notebook's fast model: `MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=42)`, unscaled."""
    require_sklearn()
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=SEED).fit(features, target)


def fit_paper_forest(features: np.ndarray, target: np.ndarray) -> Any:
    """The notebook's accurate model: `RandomForestRegressor(n_estimators=100, random_state=42)`."""
    require_sklearn()
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=100, random_state=SEED).fit(features, target)


def expected_tokens(model: Any, features: np.ndarray) -> np.ndarray:
    """The paper's score of each γ: clip(predicted acceptance rate, 0, 1)·γ + 1, shape (N, len(GAMMAS))."""
    columns = []
    for gamma in GAMMAS:
        at_gamma = features.copy()
        at_gamma[:, -1] = gamma
        columns.append(np.clip(model.predict(at_gamma), 0.0, 1.0) * gamma + 1.0)
    return np.column_stack(columns)


def choose(scores: np.ndarray) -> np.ndarray:
    """The γ of the highest score per row (the first on ties, as the notebook's strict `>`), shape (N,)."""
    return np.asarray(GAMMAS)[np.argmax(scores, axis=1)]


def fixed_best_gamma(data: PaperData, rows: np.ndarray) -> dict[str, int]:
    """Per compression, the γ of the highest mean measured tokens_produced over `rows` (the notebook uses all)."""
    steps, best = data.steps, {}
    tokens, comps, gammas = steps["tokens_produced"][rows], steps["compression"][rows], steps["gamma"][rows]
    for comp in COMPRESSIONS:
        means = {g: tokens[(comps == comp) & (gammas == g)] for g in GAMMAS}
        best[comp] = max((g for g in GAMMAS if means[g].size), key=lambda g: float(means[g].mean()))
    return best


def policy_gammas(data: PaperData, rows: np.ndarray, best: dict[str, int], scores: dict[str, np.ndarray]) -> dict:
    """The γ each policy picks on `rows`: the constant ones from lookups, SpecKV-* from their models' `scores`."""
    comp, task = data.steps["compression"][rows], data.steps["task"][rows]
    return {
        "Fixed-4": np.full(rows.size, 4),
        "Fixed-best": np.array([best[c] for c in comp]),
        "Task-oracle": np.array([data.optimal_gamma.get((c, t), 4) for c, t in zip(comp, task, strict=True)]),
        **{name: choose(value) for name, value in scores.items()},
    }


def by_compression(values: np.ndarray, compression: np.ndarray) -> dict[str, float]:
    """Means per compression and overall, as Table 1 lays them out."""
    table = {comp: float(values[compression == comp].mean()) for comp in COMPRESSIONS if (compression == comp).any()}
    return {**table, "Overall": float(values.mean())}


def bootstrap_cis(columns: dict[str, np.ndarray], samples: int = 5000) -> dict[str, tuple[float, float]]:
    """The notebook's 95% bootstrap: one np.random stream seeded 42, policies in order, sorted means' 2.5/97.5%."""
    stream, intervals = np.random.RandomState(SEED), {}
    for name, values in columns.items():
        means = sorted(stream.choice(values, size=len(values), replace=True).mean() for _ in range(samples))
        intervals[name] = (float(means[int(0.025 * samples)]), float(means[int(0.975 * samples)]))
    return intervals


def reproduce_table1(data: PaperData) -> dict[str, Any]:
    """Table 1 as the notebook computes it: both models refit on all rows, scored by their own predictions.

    Every policy's value on a held-out step is the fast MLP's clip(AR̂, 0, 1)·γ + 1 at the γ it picks, from that
    same step's draft signals; SpecKV-accurate uses the forest's. Fixed-best's γ is chosen on all rows.

    Returns:
        {"table1": {policy: {"fp16", "int8", "nf4", "Overall"}}, "confidence_intervals": {policy: [lo, hi]} (all five),
        "fixed_best_gamma", "gamma_share": {policy: {γ: share}}, "split": {"train", "test"}, and the fitted models
        and per-row arrays under "_models" / "_rows" for the rescoring (not JSON).
    """
    train, test = paper_split(data)
    features, target = data.features(), data.steps["acceptance_rate"]
    mlp, forest = fit_paper_mlp(features, target), fit_paper_forest(features, target)
    scores = {"SpecKV-fast": expected_tokens(mlp, features[test])}
    scores["SpecKV-accurate"] = expected_tokens(forest, features[test])
    best = fixed_best_gamma(data, np.arange(target.size))
    gammas = policy_gammas(data, test, best, scores)
    # Every policy is scored by the fast MLP, except SpecKV-accurate by its forest (select_gamma in the notebook).
    index = {gamma: i for i, gamma in enumerate(GAMMAS)}
    values = {}
    for name, chosen in gammas.items():
        grid = scores["SpecKV-accurate" if name == "SpecKV-accurate" else "SpecKV-fast"]
        values[name] = grid[np.arange(test.size), [index[g] for g in chosen]]
    compression = data.steps["compression"][test]
    return {
        "table1": {name: by_compression(value, compression) for name, value in values.items()},
        "confidence_intervals": {k: list(v) for k, v in bootstrap_cis({k: values[k] for k in POLICIES}).items()},
        "fixed_best_gamma": best,
        "gamma_share": {name: _shares(chosen) for name, chosen in gammas.items()},
        "split": {"train": int(train.size), "test": int(test.size)},
        "_models": {"mlp": mlp, "forest": forest},
        "_rows": {"train": train, "test": test, "gammas": gammas, "values": values},
    }


def _shares(chosen: np.ndarray) -> dict[str, float]:
    return {str(gamma): float(np.mean(chosen == gamma)) for gamma in GAMMAS}


def export_paper_npz(data: PaperData | str | Path, path: str | Path, model: Any | None = None) -> Path:
    """Writes the paper's fast MLP (refit on all rows, as the notebook deploys it) as an `.npz`, atomically.

    Arrays, exactly sklearn's `coefs_` / `intercepts_`: `W1` (6, 16), `b1` (16,), `W2` (16, 1), `b2` (1,). The
    network is relu(x @ W1 + b1) @ W2 + b2 = the predicted acceptance rate (clip to [0, 1]), with x unscaled in
    `FEATURE_ORDER`: entropies in bits, confidences in [0, 1], comp_enc fp16=0 int8=1 nf4=2, γ as a number.

    Args:
        data: the loaded data, or its folder.
        path: the `.npz` file to write.
        model: an already fitted MLPRegressor of that shape (skips the refit).

    Returns:
        The path written.
    """
    from ..core.atomic import atomic_write

    data = data if isinstance(data, PaperData) else load_paper_data(data)
    model = model if model is not None else fit_paper_mlp(data.features(), data.steps["acceptance_rate"])
    arrays = {"W1": model.coefs_[0], "b1": model.intercepts_[0], "W2": model.coefs_[1], "b2": model.intercepts_[1]}
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()})
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()))
    return Path(path)
