"""`speckv train`: the acceptance predictor trained from profiling records, and its held-out report.

The predictor learns, for each drafted token the target reached (every earlier token of the step accepted), the
probability that the target accepts it, from the features of `speckv_hf.predictor.features` (and the draft's hidden
state for `kind="pair"`). Prompts, never rows, are split (`speckv_hf.training.dataset`): a hash of `prompt_id` holds
out about `holdout` of them, and a second hash keeps a validation slice of the training prompts for early stopping.
The held-out report compares the
predictor with the draft's confidence calibrated by binning, and simulates the marginal-value stop rule on the
held-out steps against every constant γ and the oracle. See `docs/training.md`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..predictor.config import PREDICTOR_KINDS
from ..predictor.features import PORTABLE_FEATURES
from ..predictor.model import GammaPredictor
from .dataset import TokenRows, load_tokens, split_prompts, split_sizes
from .metrics import (
    Metrics,
    StopRuleReport,
    auc,
    calibration_curve,
    metrics_by_mode,
    rule_throughput,
    step_throughput,
)

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "TrainReport",
    "train_predictor",
]

DEFAULT_EPOCHS = 40
DEFAULT_LR = 3e-3
_BATCHES_PER_EPOCH = 16  # minibatches of len(rows) / 16, clamped to [_MIN_BATCH, _MAX_BATCH] rows
_MIN_BATCH, _MAX_BATCH = 32, 4096
_PATIENCE = 6  # epochs without a better validation loss before stopping
_BINS = 10
_PRIOR_STRENGTH = 2.0  # pseudo-observations at the training base rate in each confidence bin


@dataclass(frozen=True)
class TrainReport:
    """What `train_predictor` did and how the predictor does on the held-out prompts (JSON: `to_dict`).

    Attributes:
        kind: `"portable"` or `"pair"`.
        features: the feature columns, in input order.
        hidden_state_dim: width of the hidden state read (0 for portable).
        hidden_sizes: hidden layer widths.
        seed: training seed.
        epochs: epochs allowed; `epochs_run`: epochs run before early stopping; `best_epoch`: 1-based epoch kept.
        lr: Adam learning rate.
        holdout: share of prompts asked to be held out.
        train_seconds: wall time of the optimisation (normalisation, epochs, restoring the best weights).
        records: `pairs`, `compressions`, `settings` found, `rows_read`, `rows_dropped` (steps with missing values).
        splits: `train`, `validation`, `held_out` -> `rows` (reached tokens), `prompts`, `steps`.
        predictor / calibrated_confidence: held-out `Metrics`.
        by_mode: the same two per decoding mode present in the held-out rows (`"greedy"`, `"sampled"`): speculative
            sampling accepts a token with probability `min(1, p/q)`, which the draft's signals predict much less
            well than greedy agreement, so the pooled figures can hide a predictor that is weak in one mode.
        calibration: `predictor` / `calibrated_confidence` -> 10 bins of `lower`, `upper`, `mean_predicted`,
            `observed`, `count`.
        feature_importance: feature (and `hidden_state` for pair) -> held-out AUC drop when shuffled.
        stop_rule: the stop-rule throughput report.
    """

    kind: str
    features: list[str]
    hidden_state_dim: int
    hidden_sizes: list[int]
    seed: int
    epochs: int
    epochs_run: int
    best_epoch: int
    lr: float
    holdout: float
    train_seconds: float
    records: dict[str, Any]
    splits: dict[str, dict[str, int]]
    predictor: Metrics
    calibrated_confidence: Metrics
    by_mode: dict[str, dict[str, Metrics]]
    calibration: dict[str, list[dict[str, Any]]]
    feature_importance: dict[str, float]
    stop_rule: StopRuleReport

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (NaN as None)."""
        return _json_ready(asdict(self))


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Binning:
    """Confidence calibrated by equal-width bins fitted on training rows, each shrunk towards the base rate."""

    def __init__(self, rows: TokenRows) -> None:
        index = self._bin(rows.features)
        accepted = np.bincount(index, weights=rows.accepted.astype(np.float64), minlength=_BINS)
        totals = np.bincount(index, minlength=_BINS).astype(np.float64)
        self.rates = (accepted + _PRIOR_STRENGTH * rows.accepted.mean()) / (totals + _PRIOR_STRENGTH)

    @staticmethod
    def _bin(features: np.ndarray) -> np.ndarray:
        confidence = features[:, PORTABLE_FEATURES.index("confidence")]
        return np.clip((confidence * _BINS).astype(np.int64), 0, _BINS - 1)

    def __call__(self, features: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
        return self.rates[self._bin(features)]


# -- training ------------------------------------------------------------------------------------------------------
def _fit(
    model: GammaPredictor, fit: TokenRows, validation: TokenRows, epochs: int, lr: float, seed: int
) -> tuple[int, int]:
    """Adam on BCE-with-logits over the reached rows of `fit`, keeping the epoch of least validation loss."""
    x, h, y = _tensors(fit)
    x_val, h_val, y_val = _tensors(validation)
    batch_size = min(max(len(y) // _BATCHES_PER_EPOCH, _MIN_BATCH), _MAX_BATCH)
    generator = torch.Generator().manual_seed(seed)  # batch order only; torch's global state is left alone
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_loss, best_state, best_epoch, epoch = math.inf, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(model(x[batch], None if h is None else h[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if len(y_val) == 0:  # too few prompts for a validation slice: keep the last epoch
            best_epoch = epoch
            continue
        with torch.no_grad():
            loss = F.binary_cross_entropy_with_logits(model(x_val, h_val), y_val).item()
        if loss < best_loss:
            best_loss, best_epoch = loss, epoch
            best_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        elif epoch - best_epoch >= _PATIENCE:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return epoch, best_epoch


def _tensors(tokens: TokenRows) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`(features (n, F), hidden states (n, H) or None, labels (n,) as 0.0 / 1.0)`."""
    hidden = None if tokens.hidden is None else torch.from_numpy(tokens.hidden)
    return torch.from_numpy(tokens.features), hidden, torch.from_numpy(tokens.accepted.astype(np.float32))


def _probabilities(model: GammaPredictor, features: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    h = None if hidden is None else torch.from_numpy(hidden)
    return model.predict_proba(torch.from_numpy(features), h).double().numpy()


def train_predictor(
    records_dir: str | Path,
    kind: str = "portable",
    hidden_sizes: Sequence[int] = (32, 32),
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    holdout: float = 0.25,
    slope: float = 0.03,
) -> tuple[GammaPredictor, TrainReport]:
    """Trains an acceptance predictor on the reached token rows of a records folder and reports on held-out prompts.

    Torch runs on one CPU thread for the call (the previous count is restored): see `_one_thread`.

    Args:
        records_dir: a folder written by `speckv profile` (its `tokens/` shards are read).
        kind: `"portable"` (features only) or `"pair"` (also the draft's hidden state; needs `--hidden-states`).
        hidden_sizes: MLP hidden layer widths (empty: logistic regression).
        epochs: most passes over the training rows (early stopping on the validation prompts may stop sooner).
        lr: Adam learning rate.
        seed: seeds the weight initialisation, the batch order and the permutation importance; the same seed gives
            bit-identical weights.
        holdout: share of prompts held out for the report, in (0, 1).
        slope: verification cost per extra verified token, in target forwards, for the stop-rule simulation.

    Returns:
        `(predictor, report)`: the trained predictor (normalisation set, eval mode) and its `TrainReport`.

    Raises:
        ValueError: on an invalid argument.
        TrainingDataError: no token shards, a split side without prompts, or no hidden states for `"pair"`.
        RecordsSchemaError: a shard of another records schema version.
    """
    if kind not in PREDICTOR_KINDS:
        raise ValueError(f"kind must be one of {list(PREDICTOR_KINDS)}; got {kind!r}")
    if not 0 < holdout < 1 or epochs < 1 or lr <= 0 or slope < 0:
        raise ValueError(
            f"need 0 < holdout < 1, epochs >= 1, lr > 0, slope >= 0; got {holdout}, {epochs}, {lr}, {slope}"
        )
    with _one_thread():
        return _train(Path(records_dir), kind, hidden_sizes, epochs, lr, seed, holdout, slope)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Runs torch on one CPU thread, restoring the count after.

    The matrices are tiny (a few thousand rows by 32): thread start-up costs more than it saves, and on a busy
    machine OpenMP's spinning threads made each layer 100x slower. One thread also makes the weights independent
    of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(
    records_dir: Path,
    kind: str,
    hidden_sizes: Sequence[int],
    epochs: int,
    lr: float,
    seed: int,
    holdout: float,
    slope: float,
) -> tuple[GammaPredictor, TrainReport]:
    tokens, info = load_tokens(records_dir, kind)
    train_rows, in_validation, test = split_prompts(tokens, holdout)
    fit, validation = train_rows.take(~in_validation), train_rows.take(in_validation)
    model = GammaPredictor(
        list(PORTABLE_FEATURES),
        hidden_sizes=list(hidden_sizes),
        kind=kind,
        hidden_state_dim=0 if tokens.hidden is None else tokens.hidden.shape[1],
        init_seed=seed,
    )
    started = time.perf_counter()
    std = train_rows.features.std(axis=0)
    model.set_normalization(
        torch.from_numpy(train_rows.features.mean(axis=0)), torch.from_numpy(np.where(std > 1e-6, std, 1.0))
    )
    epochs_run, best_epoch = _fit(model, fit, validation, epochs, lr, seed)
    train_seconds = time.perf_counter() - started

    predictors = {"predictor": functools.partial(_probabilities, model), "calibrated_confidence": _Binning(train_rows)}
    rows = test.take(test.reached)
    probabilities = {name: predict(rows.features, rows.hidden) for name, predict in predictors.items()}
    first_token_rate = float(train_rows.accepted[train_rows.position == 0].mean())
    report = TrainReport(
        kind=kind,
        features=list(PORTABLE_FEATURES),
        hidden_state_dim=model.hidden_state_dim,
        hidden_sizes=list(model.hidden_sizes),
        seed=seed,
        epochs=epochs,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        lr=lr,
        holdout=holdout,
        train_seconds=train_seconds,
        records=info,
        splits={"train": split_sizes(fit), "validation": split_sizes(validation), "held_out": split_sizes(rows)},
        predictor=Metrics.of(probabilities["predictor"], rows.accepted),
        calibrated_confidence=Metrics.of(probabilities["calibrated_confidence"], rows.accepted),
        by_mode=metrics_by_mode(
            rows.features[:, PORTABLE_FEATURES.index("do_sample")] > 0.5, rows.accepted, probabilities
        ),
        calibration={name: calibration_curve(p, rows.accepted) for name, p in probabilities.items()},
        feature_importance=_permutation_importance(predictors["predictor"], rows, probabilities["predictor"], seed),
        stop_rule=_stop_rule_report(test, predictors, first_token_rate, slope),
    )
    return model, report


def _permutation_importance(
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray], rows: TokenRows, baseline: np.ndarray, seed: int
) -> dict[str, float]:
    """Held-out AUC drop when one feature column (or the whole hidden-state block) is shuffled across rows."""
    rng = np.random.default_rng(seed)
    reference = auc(baseline, rows.accepted)
    importance = {}
    for column, name in enumerate(PORTABLE_FEATURES):
        shuffled = rows.features.copy()
        shuffled[:, column] = rows.features[rng.permutation(len(shuffled)), column]
        importance[name] = reference - auc(predict(shuffled, rows.hidden), rows.accepted)
    if rows.hidden is not None:
        hidden = rows.hidden[rng.permutation(len(rows.hidden))]
        importance["hidden_state"] = reference - auc(predict(rows.features, hidden), rows.accepted)
    return importance


def _stop_rule_report(
    test: TokenRows,
    predictors: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]],
    first_token_rate: float,
    slope: float,
) -> StopRuleReport:
    """Simulates constants, the oracle and the rule with each predictor on every held-out step."""
    steps = np.unique(test.steps, return_inverse=True)[1].ravel()  # 0..S-1 over the held-out steps
    drafted = np.bincount(steps)
    accepted = np.bincount(steps, weights=test.accepted).astype(np.int64)
    cost_ratio = test.cost_ratio[np.r_[0, np.cumsum(drafted)[:-1]]]
    following = test.features.copy()
    following[:, PORTABLE_FEATURES.index("position")] += 1  # the next token's position, its other signals unknown
    shape = (len(drafted), int(drafted.max()))
    constants = {
        k: step_throughput(np.minimum(drafted, k), accepted, cost_ratio, slope) for k in range(int(drafted.max()) + 1)
    }
    best_k = max(constants, key=constants.__getitem__)
    achieved = {}
    for name, predict in predictors.items():
        p, p_next = np.zeros(shape), np.zeros(shape)
        p[steps, test.position] = predict(test.features, test.hidden)
        p_next[steps, test.position] = predict(following, test.hidden)
        achieved[name] = rule_throughput(
            p, p_next, drafted, accepted, cost_ratio, first_token_rate, constants[best_k], slope
        )
    oracle = step_throughput(accepted, accepted, cost_ratio, slope)
    throughput, lengths = achieved["predictor"]
    return StopRuleReport(
        slope=slope,
        steps=len(drafted),
        first_token_rate=first_token_rate,
        predictor=throughput,
        calibrated_confidence=achieved["calibrated_confidence"][0],
        constants={str(k): v for k, v in constants.items()},
        best_constant_k=best_k,
        best_constant=constants[best_k],
        oracle=oracle,
        predictor_vs_best_constant=throughput / constants[best_k],
        predictor_vs_oracle=throughput / oracle,
        mean_predictor_gamma=float(lengths.mean()),
    )


# -- saving --------------------------------------------------------------------------------------------------------
