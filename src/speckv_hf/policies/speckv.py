"""The `speckv` policy: the marginal-value rule with acceptance probabilities from a trained predictor.

A portable [`GammaPredictor`][] turns each drafted token's signals (and the call's acceptance so far, the target's
compression and the measured cost ratio: `speckv_hf.predictor.features`) into the probability that the target accepts
it.
A per-pair online correction, learned while generating, rescales those probabilities by bins (`observed accepts /
predicted accepts`, starting at 1), so a predictor trained on one pair is corrected on another.

One decision evaluates the MLP once for the token just drafted and once for the next position, as one batch of two
rows, in numpy with preallocated buffers and the feature normalization folded into the first layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.signals import TokenSignals
from ..predictor.features import PORTABLE_FEATURES
from .base import PolicyContext, StepOutcome
from .marginal import MarginalValuePolicy

__all__ = ["DEFAULT_PREDICTOR", "SpeckvPolicy", "default_predictor_path"]

#: Where the package's default predictor (trained on the embedded pair) lives, inside the package.
DEFAULT_PREDICTOR = "predictors/default"
_BINS = 10
_TOKEN_COLUMNS = ("confidence", "max_prob", "entropy", "margin", "ngram_found", "ngram_agrees")
_POSITION_COLUMN = len(_TOKEN_COLUMNS)  # of the MLP's input rows: the token columns, the position, a constant 1
#: The features that are constant within a step, folded into the first layer's bias once per step.
_CALL_COLUMNS = tuple(c for c in PORTABLE_FEATURES if c not in (*_TOKEN_COLUMNS, "position"))


def default_predictor_path() -> Path:
    """The folder of the predictor that ships with the package.

    Raises:
        FileNotFoundError: when the package was installed without it.
    """
    path = Path(str(resources.files("speckv_hf").joinpath(DEFAULT_PREDICTOR)))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no default predictor at {path}: reinstall speckv-hf, or pass SpeckvPolicy(predictor=PATH_OR_REPO)."
        )
    return path


@dataclass(repr=False, eq=False)
class SpeckvPolicy(MarginalValuePolicy):
    """Draft while one more token is expected to raise tokens per second, with a trained acceptance predictor.

    Args:
        predictor: a portable `GammaPredictor`, or a local folder or Hub id to load one from (strictly, with the
            portable feature schema); None for the predictor that ships with the package.
        revision: the Hub revision when `predictor` is a Hub id.
        max_tokens: upper bound on γ.
        warmup_steps: see [`MarginalValuePolicy`][].
        explore_every: see [`MarginalValuePolicy`][].
        min_gain: see [`MarginalValuePolicy`][].
        correction_strength: weight, in predicted accepts, of the prior "the predictor is right" in each bin of the
            online correction (larger: slower to correct).
        correction_decay: forgetting factor of the online correction per verified token, in (0, 1].

    Raises:
        ValueError: for a predictor that is not portable or reads other features, or invalid settings.
    """

    predictor: Any = None
    revision: str | None = None
    correction_strength: float = 20.0
    correction_decay: float = 0.995
    name: ClassVar[str] = "speckv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.correction_strength <= 0 or not 0 < self.correction_decay <= 1:
            raise ValueError("correction_strength must be > 0 and correction_decay in (0, 1].")
        model, self.source = self._load(self.predictor, self.revision)
        self.predictor = None  # the numpy copy below is what runs; deep copies per call stay cheap
        layers = _numpy_layers(model)
        first, first_bias = layers[0]
        index = {name: i for i, name in enumerate(PORTABLE_FEATURES)}
        self._w_call = np.ascontiguousarray(first[:, [index[c] for c in _CALL_COLUMNS]])
        self._first_bias = first_bias
        self._call_x = np.zeros(len(_CALL_COLUMNS))
        # The MLP as matrices acting on rows that end in a constant 1, so each layer is one product and one ReLU:
        # the first reads the token columns, the position and (its bias row) the step's constant contribution.
        width = first.shape[0]
        w1 = np.zeros((len(_TOKEN_COLUMNS) + 2, width + 1))
        w1[: len(_TOKEN_COLUMNS), :width] = first[:, [index[c] for c in _TOKEN_COLUMNS]].T
        w1[_POSITION_COLUMN, :width] = first[:, index["position"]]
        w1[-1, width] = 1.0
        self._layers = [w1] + [
            _augmented(weight, bias, last=i == len(layers) - 2) for i, (weight, bias) in enumerate(layers[1:])
        ]
        self._x = np.zeros((2, len(_TOKEN_COLUMNS) + 2))
        self._x[:, -1] = 1.0
        self._outputs = [np.zeros((2, w.shape[1])) for w in self._layers]
        self._observed = [self.correction_strength] * _BINS  # floats: scalar numpy arithmetic is slower
        self._predicted = [self.correction_strength] * _BINS
        self._reset_call()

    @staticmethod
    def _load(predictor: Any, revision: str | None) -> tuple[Any, str]:
        from ..predictor.model import GammaPredictor

        if isinstance(predictor, GammaPredictor):
            model, source = predictor, str(predictor.metadata.get("repo_id", "in-memory"))
        else:
            path = default_predictor_path() if predictor is None else predictor
            model = GammaPredictor.from_pretrained(path, revision=revision, expected_features=PORTABLE_FEATURES)
            source = "default" if predictor is None else str(predictor)
        if model.kind != "portable" or tuple(model.features) != PORTABLE_FEATURES:
            raise ValueError(
                f"the speckv policy runs portable predictors reading {list(PORTABLE_FEATURES)}; got a {model.kind!r} "
                "predictor: train one with `speckv train RECORDS --kind portable`."
            )
        return model, source

    def _reset_call(self) -> None:
        self._prev_fraction = 1.0
        self._call_drafted = 0
        self._call_accepted = 0
        self._step_raw: list[float] = []
        self._next = 0.5

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self._reset_call()
        self._update_call_features()

    def _update_call_features(self) -> None:
        """The first layer's contribution of the features that are constant within a step, plus its bias."""
        compression = self.context.compression
        ratio = max(self.context.cost.cost_ratio or 0.1, 1e-4)
        values = {
            "prev_accepted_fraction": self._prev_fraction,
            "running_acceptance": self._call_accepted / self._call_drafted if self._call_drafted else 1.0,
            "do_sample": float(self.context.do_sample),
            "compression_bits": compression.bits,
            "quantized": float(compression.quantized),
            "cost_ratio": ratio,
            "log_cost_ratio": math.log(ratio),
        }
        self._call_x[:] = [values[name] for name in _CALL_COLUMNS]
        bias_row = self._layers[0][-1, :-1]
        np.dot(self._w_call, self._call_x, out=bias_row)
        bias_row += self._first_bias

    def _raw(self, token: TokenSignals, position: int) -> tuple[float, float]:
        """The predictor's probabilities for `token` at `position` and for the next token at `position + 1`."""
        x = self._x
        for row in (0, 1):
            x[row, 0], x[row, 1], x[row, 2], x[row, 3] = token.confidence, token.max_prob, token.entropy, token.margin
            x[row, 4], x[row, 5] = token.ngram_found, token.ngram_agrees
        x[0, _POSITION_COLUMN], x[1, _POSITION_COLUMN] = position, position + 1
        # One product per layer and a ReLU between layers (five numpy calls for the shipped (32, 32) predictor):
        # right after a model forward each call costs several microseconds (cold caches), so their number, not the
        # arithmetic, sets the decision's time.
        activations = x
        for weight, out in zip(self._layers, self._outputs, strict=True):
            if activations is not x:
                np.maximum(activations, 0.0, out=activations)
            np.dot(activations, weight, out=out)
            activations = out
        here, following = activations[0, 0], activations[1, 0]
        return 1.0 / (1.0 + math.exp(-here)), 1.0 / (1.0 + math.exp(-following))

    def _corrected(self, probability: float) -> float:
        b = min(int(probability * _BINS), _BINS - 1)
        return min(probability * self._observed[b] / self._predicted[b], 0.995)

    def _token_acceptance(self, token: TokenSignals, position: int) -> float:
        # Called for each drafted token at its own position, then for the next position: one MLP batch serves both.
        if position == token.position:
            here, following = self._raw(token, position)
            self._step_raw.append(here)
            self._next = following
            return self._corrected(here)
        return self._corrected(self._next)

    def should_draft(self, state: Any) -> bool:
        if not state.tokens:
            self._step_raw.clear()
        return super().should_draft(state)

    def observe(self, outcome: StepOutcome) -> None:
        super().observe(outcome)
        if not outcome.tokens:
            return
        decay = self.correction_decay
        for i, token in enumerate(outcome.tokens[: outcome.num_accepted + 1]):
            probability = self._step_raw[i] if i < len(self._step_raw) else self._raw(token, i)[0]
            b = min(int(probability * _BINS), _BINS - 1)
            self._observed[b] = self._observed[b] * decay + float(i < outcome.num_accepted)
            self._predicted[b] = self._predicted[b] * decay + probability
        self._prev_fraction = outcome.num_accepted / len(outcome.tokens)
        self._call_drafted += len(outcome.tokens)
        self._call_accepted += outcome.num_accepted
        self._update_call_features()

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "predictor": self.source,
            "correction_strength": self.correction_strength,
            "correction_decay": self.correction_decay,
        }


def _augmented(weight: np.ndarray, bias: np.ndarray, last: bool) -> np.ndarray:
    """`(weight, bias)` as one matrix acting on rows that end in a constant 1 (bias as the last row), passing the 1
    on as an extra last column unless `last`."""
    out_features, in_features = weight.shape
    matrix = np.zeros((in_features + 1, out_features + (0 if last else 1)))
    matrix[:in_features, :out_features] = weight.T
    matrix[in_features, :out_features] = bias
    if not last:
        matrix[in_features, out_features] = 1.0
    return matrix


def _numpy_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The MLP's linear layers as float64 numpy `(weight, bias)` pairs, the input normalization folded into the
    first: `W (x - mean) / std + b = (W / std) x + (b - W mean / std)`."""
    import torch

    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    layers = [(m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy()) for m in linears]
    mean = model.feature_mean.detach().double().numpy()
    std = model.feature_std.detach().double().numpy()
    weight, bias = layers[0]
    layers[0] = (weight / std, bias - (weight / std) @ mean)
    return layers
