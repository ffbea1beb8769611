"""The `speckv-paper` policy: the SpecKV paper's γ rule, run causally inside `generate()`.

The paper (arXiv 2605.02888) predicts the acceptance rate of a step of γ tokens from that step's draft signals and
picks γ = argmax over {2, 4, 6, 8} of `clip(rate, 0, 1)·γ + 1`, the expected tokens of the step. Those signals only
exist once the step is drafted, so here each step reads the *previous* step's (mean and max entropy in bits, mean
and min confidence over all its drafted tokens, accepted or not), and the first step of a call drafts
`initial_gamma`. The rule counts
tokens per step, not per second: it does not see what drafting costs.

One decision per step is one evaluation of the predictor for the candidate γs (4 rows), in numpy with preallocated
buffers; the step's features are folded into the first layer once, so the rows differ by `γ · W1[gamma]` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.signals import StepSignals
from ..core.validation import is_int
from ..predictor.features import PAPER_FEATURES
from ..predictor.paper import paper_comp_enc, paper_features
from .base import DraftPolicy, DraftState, PolicyContext, StepOutcome
from .predictor_runtime import load_predictor, numpy_layers, packaged_predictor_path

__all__ = ["DEFAULT_PAPER_PREDICTOR", "PaperPolicy", "default_paper_predictor_path"]

#: Where the package's paper predictor (refit on the paper's data) lives, inside the package.
DEFAULT_PAPER_PREDICTOR = "predictors/paper"
_GAMMA = PAPER_FEATURES.index("gamma")
_COMP_ENC = PAPER_FEATURES.index("comp_enc")


def default_paper_predictor_path() -> Path:
    """The folder of the paper predictor that ships with the package.

    Raises:
        FileNotFoundError: when the package has none, naming how to make one.
    """
    return packaged_predictor_path(
        DEFAULT_PAPER_PREDICTOR,
        "export the paper's weights with `speckv paper --export-npz weights.npz`, convert them with "
        "`GammaPredictor.from_paper_npz('weights.npz').save_pretrained(PATH)` and pass PaperPolicy(predictor=PATH) "
        "(or SpecKVGenerator('speckv-paper', predictor=PATH)).",
    )


class PaperPolicy(DraftPolicy):
    """Drafts the γ the SpecKV paper's predictor picks, from the previous step's signals.

    Args:
        predictor: a `GammaPredictor` of kind `"paper"`, a local folder or Hub id to load one from, or None for the
            one that ships with the package.
        gammas: the candidate γs, tried in this order (ties go to the first).
        initial_gamma: γ of a call's first step, which has no previous step (the paper's Fixed-4).
        revision: the Hub revision when `predictor` is a Hub id.
        comp_enc: the paper's compression code (0 fp16, 1 int8, 2 nf4); None reads it from the target's
            compression at each call.

    Raises:
        ValueError: for a predictor of another kind, or invalid settings.
        FileNotFoundError: for `predictor=None` when the package ships no paper predictor.
    """

    name: ClassVar[str] = "speckv-paper"

    def __init__(
        self,
        predictor: Any = None,
        gammas: Sequence[int] = (2, 4, 6, 8),
        initial_gamma: int = 4,
        revision: str | None = None,
        comp_enc: int | None = None,
    ) -> None:
        if isinstance(gammas, str) or not isinstance(gammas, Sequence) or not gammas:
            raise ValueError(
                f"gammas must be a non-empty sequence of integers >= 1, e.g. (2, 4, 6, 8); got {gammas!r}"
            )
        if not all(is_int(g) and g >= 1 for g in gammas) or len(set(gammas)) != len(gammas):
            raise ValueError(f"gammas must be distinct integers >= 1, e.g. (2, 4, 6, 8); got {list(gammas)!r}")
        if not is_int(initial_gamma) or initial_gamma < 0:
            raise ValueError(f"initial_gamma must be an integer >= 0; got {initial_gamma!r}")
        if comp_enc is not None and comp_enc not in (0, 1, 2):
            raise ValueError(
                f"comp_enc must be 0 (fp16), 1 (int8), 2 (nf4) or None (from the target); got {comp_enc!r}"
            )
        self.gammas = tuple(int(g) for g in gammas)
        self.initial_gamma = initial_gamma
        self.revision = revision
        self.comp_enc = comp_enc
        model, self.source = _load(predictor, revision)
        layers = numpy_layers(model)
        first_weight, first_bias = layers[0]
        step_columns = [i for i in range(len(PAPER_FEATURES)) if i != _GAMMA]
        self._w_step = np.ascontiguousarray(first_weight[:, step_columns])  # (hidden, 5)
        self._b_first = first_bias
        self._gamma_rows = np.outer(self.gammas, first_weight[:, _GAMMA])  # (num_gammas, hidden)
        self._gamma_values = np.asarray(self.gammas, dtype=np.float64)
        self._layers = layers[1:]
        self._step_x = np.zeros(len(step_columns))
        self._base = np.zeros(first_weight.shape[0])
        self._rows = np.zeros(self._gamma_rows.shape)
        self._outputs = [np.zeros((len(self.gammas), weight.shape[0])) for weight, _ in self._layers]
        self._expected = np.zeros(len(self.gammas))
        self.gamma = initial_gamma
        self._pending = False

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        comp_enc = self.comp_enc if self.comp_enc is not None else paper_comp_enc(context.compression)
        self._step_x[:] = 0.0
        self._step_x[_COMP_ENC] = comp_enc
        self.gamma = self.initial_gamma
        self._pending = False

    def should_draft(self, state: DraftState) -> bool:
        if not state.tokens and self._pending:
            self.gamma = self.choose_gamma()
            self._pending = False
        return len(state.tokens) < min(self.gamma, state.max_tokens)

    def observe(self, outcome: StepOutcome) -> None:
        # The paper aggregates over every drafted token, accepted or not: the outcome carries them all.
        drafted = outcome.tokens
        if not drafted:  # a step that drafted nothing has no signals: the next step keeps the last γ
            return
        step = StepSignals.from_tokens(drafted)
        comp_enc = self._step_x[_COMP_ENC]
        row = paper_features(
            step.mean_entropy, step.mean_confidence, step.max_entropy, step.min_confidence, int(comp_enc), 0
        )
        self._step_x[:] = [value for i, value in enumerate(row) if i != _GAMMA]
        self._pending = True

    def choose_gamma(self) -> int:
        """The paper's γ for the last observed step's signals: argmax of `clip(rate, 0, 1)·γ + 1` over `gammas`.

        Returns:
            The chosen γ.
        """
        np.dot(self._w_step, self._step_x, out=self._base)
        self._base += self._b_first
        activations = np.add(self._gamma_rows, self._base, out=self._rows)  # (num_gammas, hidden)
        for (weight, bias), out in zip(self._layers, self._outputs, strict=True):
            np.maximum(activations, 0.0, out=activations)
            np.dot(activations, weight.T, out=out)
            out += bias
            activations = out
        expected = np.clip(activations[:, 0], 0.0, 1.0, out=self._expected)
        expected *= self._gamma_values
        return self.gammas[int(np.argmax(expected))]  # + 1 is the same for every γ

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "predictor": self.source,
            "gammas": list(self.gammas),
            "initial_gamma": self.initial_gamma,
            "comp_enc": self.comp_enc,
        }


def _load(predictor: Any, revision: str | None) -> tuple[Any, str]:
    model, source = load_predictor(predictor, revision, default_paper_predictor_path)
    if model.kind != "paper":
        raise ValueError(
            f"the speckv-paper policy runs the paper's predictor (kind 'paper'); {source} is a {model.kind!r} "
            "predictor: convert the paper's weights with GammaPredictor.from_paper_npz, or run this one with the "
            "'speckv' policy"
        )
    return model, source
