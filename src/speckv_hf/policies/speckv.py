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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.signals import TokenSignals
from ..predictor.features import PORTABLE_FEATURES, SIGNAL_FEATURES, STEP_FEATURES, signal_features, step_features
from .base import PolicyContext, StepOutcome
from .marginal import MarginalValuePolicy
from .predictor_runtime import load_predictor, numpy_layers, packaged_predictor_path

__all__ = ["DEFAULT_PREDICTOR", "SpeckvPolicy", "default_predictor_path"]

#: Where the package's default predictor (trained on the embedded pair) lives, inside the package.
DEFAULT_PREDICTOR = "predictors/default"
_BINS = 10
# The MLP's input rows here: the token's signal features, its position, a constant 1. The step's features are
# constant within a step, so they are folded into the first layer's bias once per step.
_SIGNALS = len(SIGNAL_FEATURES)
_POSITION_COLUMN = _SIGNALS


def default_predictor_path() -> Path:
    """The folder of the predictor that ships with the package.

    Raises:
        FileNotFoundError: when the package was installed without it.
    """
    return packaged_predictor_path(
        DEFAULT_PREDICTOR, "reinstall speckv-hf, or pass SpeckvPolicy(predictor=PATH_OR_REPO)."
    )


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
        layers = numpy_layers(model)
        first, first_bias = layers[0]
        index = {name: i for i, name in enumerate(PORTABLE_FEATURES)}
        self._w_call = np.ascontiguousarray(first[:, [index[c] for c in STEP_FEATURES]])
        self._first_bias = first_bias
        self._call_x = np.zeros(len(STEP_FEATURES))
        # The MLP as matrices acting on rows that end in a constant 1, so each layer is one product and one ReLU:
        # the first reads the token columns, the position and (its bias row) the step's constant contribution.
        width = first.shape[0]
        w1 = np.zeros((_SIGNALS + 2, width + 1))
        w1[:_SIGNALS, :width] = first[:, [index[c] for c in SIGNAL_FEATURES]].T
        w1[_POSITION_COLUMN, :width] = first[:, index["position"]]
        w1[-1, width] = 1.0
        self._layers = [w1] + [
            _augmented(weight, bias, last=i == len(layers) - 2) for i, (weight, bias) in enumerate(layers[1:])
        ]
        self._x = np.zeros((2, _SIGNALS + 2))
        self._x[:, -1] = 1.0
        self._outputs = [np.zeros((2, w.shape[1])) for w in self._layers]
        self._observed = [self.correction_strength] * _BINS  # floats: scalar numpy arithmetic is slower
        self._predicted = [self.correction_strength] * _BINS
        self._reset_call()

    @staticmethod
    def _load(predictor: Any, revision: str | None) -> tuple[Any, str]:
        model, source = load_predictor(predictor, revision, default_predictor_path, PORTABLE_FEATURES)
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
        self._call_x[:] = step_features(
            self._prev_fraction,
            self._call_accepted / self._call_drafted if self._call_drafted else 1.0,
            self.context.do_sample,
            compression.bits,
            compression.quantized,
            self.context.cost.cost_ratio or 0.1,  # unmeasured: a typical small draft's
        )
        bias_row = self._layers[0][-1, :-1]
        np.dot(self._w_call, self._call_x, out=bias_row)
        bias_row += self._first_bias

    def _raw(self, token: TokenSignals, position: int) -> tuple[float, float]:
        """The predictor's probabilities for `token` at `position` and for the next token at `position + 1`."""
        x = self._x
        x[:, :_SIGNALS] = signal_features(token)
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
