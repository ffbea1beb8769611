"""The trained acceptance predictor and its feature schema.

A `GammaPredictor` is a small MLP that gives, for one drafted token, the probability that the target accepts it.
It reads the features of `speckv_hf.predictor.features` (a portable predictor) and, for a `pair` predictor, also the
draft's last hidden state at that position (width `hidden_state_dim`); that one only transfers to the draft it was
trained with. A `paper` predictor is the SpecKV paper's (arXiv 2605.02888): one row per step of the paper's
`PAPER_FEATURES`, a linear output that predicts the step's acceptance rate; `GammaPredictor.from_paper_npz` converts
its published weights (read by `speckv_hf.predictor.paper`).

A predictor is saved with `save_pretrained` (config.json, model.safetensors and a generated README.md card) and
loaded strictly with `from_pretrained`: safetensors only, every tensor present with its shape
(`speckv_hf.predictor.loading`), the config and its feature schema version checked (`speckv_hf.predictor.config`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn

from ..core.validation import local_or_hub_id
from ._hub import set_hub_config
from .card import MODEL_CARD_TEMPLATE, card_context
from .config import PAPER_KIND, check_saved_config, validate_config
from .features import PAPER_FEATURES, FeatureSchema
from .loading import DOWNLOAD_KWARGS, PREDICTOR_SOURCE, PredictorLoadError, check_state_dict, weights_file
from .paper import PAPER_ARRAYS, load_paper_npz, paper_source

__all__ = ["GammaPredictor"]


class GammaPredictor(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="speckv-hf",
    tags=["speckv", "speculative-decoding"],
    repo_url="https://github.com/speckv-hf/speckv-hf",
    docs_url="https://github.com/speckv-hf/speckv-hf/tree/main/docs",
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """Probability that a drafted token is accepted by the target.

    An MLP over the standardised features (`(x - feature_mean) / feature_std`, buffers saved with the weights),
    concatenated for `kind="pair"` with the layer-normalised draft hidden state. Initialisation is deterministic
    (`init_seed`) and leaves torch's global random state untouched. `kind="paper"` is the SpecKV paper's predictor:
    `PAPER_FEATURES` unnormalised (identity), a linear output (no sigmoid) predicting a step's acceptance rate.

    `save_pretrained(path)` writes config.json, model.safetensors and a README.md card. `from_pretrained(path_or_repo,
    revision=None, cache_dir=None, local_files_only=False, map_location="cpu", expected_features=None)` loads
    strictly: `PredictorLoadError` for another schema version, no model.safetensors (pickled weights are refused),
    an unreadable file or tensors that do not match config.json; `PredictorSchemaError` when the features differ
    from `expected_features` (names or a `FeatureSchema`).

    Args:
        features: feature names, in the column order of `forward`'s `features` (e.g. `list(PORTABLE_FEATURES)`).
        hidden_sizes: widths of the hidden layers; empty for a logistic regression.
        kind: `"portable"` (features only), `"pair"` (features and the draft's last hidden state) or `"paper"`
            (the SpecKV paper's step predictor; features must be `PAPER_FEATURES`).
        hidden_state_dim: width of the draft hidden state; > 0 for `"pair"`, 0 otherwise.
        schema_version: feature schema version; None or the kind's (`FEATURE_SCHEMA_VERSION`, for `"paper"`
            `PAPER_SCHEMA_VERSION`).
        metadata: free-form JSON-serializable facts for config.json and the card; the card shows `pair`,
            `compressions`, `metrics` (name -> value) and `command`.
        init_seed: seed of the weight initialisation.

    Raises:
        ValueError: on an invalid argument, before anything is built.
    """

    def __init__(
        self,
        features: Sequence[str],
        hidden_sizes: Sequence[int] = (32, 32),
        kind: str = "portable",
        hidden_state_dim: int = 0,
        schema_version: int | None = None,
        metadata: dict[str, Any] | None = None,
        init_seed: int = 0,
    ) -> None:
        features, hidden_sizes, schema_version, metadata = validate_config(
            features, hidden_sizes, kind, hidden_state_dim, schema_version, metadata, init_seed
        )
        super().__init__()
        self.features = features
        self.hidden_sizes = hidden_sizes
        self.kind = kind
        self.hidden_state_dim = hidden_state_dim
        self.schema_version = schema_version
        self.metadata = metadata
        self.init_seed = init_seed
        # The canonical config (lists, plain ints) is what config.json gets, whatever sequence types were passed.
        set_hub_config(self, self.config())
        self.register_buffer("feature_mean", torch.zeros(len(features)))
        self.register_buffer("feature_std", torch.ones(len(features)))
        generator = torch.Generator().manual_seed(init_seed)
        widths = [len(features) + hidden_state_dim, *hidden_sizes]
        layers: list[nn.Module] = []
        for in_width, out_width in itertools.pairwise(widths):
            layers += [_linear(in_width, out_width, generator), nn.ReLU()]
        layers.append(_linear(widths[-1], 1, generator))
        self.mlp = nn.Sequential(*layers)
        self.eval()

    def config(self) -> dict[str, Any]:
        """Returns the constructor arguments as JSON-serializable values (what config.json holds)."""
        return {
            "features": list(self.features),
            "hidden_sizes": list(self.hidden_sizes),
            "kind": self.kind,
            "hidden_state_dim": self.hidden_state_dim,
            "schema_version": self.schema_version,
            "metadata": json.loads(json.dumps(self.metadata)),
            "init_seed": self.init_seed,
        }

    @property
    def schema(self) -> FeatureSchema:
        """The `FeatureSchema` this predictor reads."""
        return FeatureSchema(self.schema_version, self.features, self.hidden_state_dim)

    def set_normalization(self, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float]) -> None:
        """Sets the feature standardisation, usually to the training set's mean and standard deviation.

        Args:
            mean (`torch.Tensor` of shape `(num_features,)`): per-feature mean.
            std (`torch.Tensor` of shape `(num_features,)`): per-feature standard deviation, finite and > 0.

        Raises:
            ValueError: on a wrong shape, a non-finite value or a non-positive std, or for a `"paper"` predictor.
        """
        if self.kind == PAPER_KIND:
            raise ValueError("a 'paper' predictor reads the paper's raw features (identity normalization): keep it")
        num_features = len(self.features)
        values = {}
        for name, value in (("mean", mean), ("std", std)):
            tensor = torch.as_tensor(value, dtype=self.feature_mean.dtype).detach()
            if tuple(tensor.shape) != (num_features,):
                raise ValueError(
                    f"{name} must have shape ({num_features},), one per feature; got {tuple(tensor.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} has non-finite values: {tensor.tolist()}")
            values[name] = tensor
        if (values["std"] <= 0).any():
            constant = [name for name, s in zip(self.features, values["std"].tolist(), strict=True) if s <= 0]
            raise ValueError(f"std must be > 0; it is not for {constant}: use 1.0 for constant features")
        with torch.no_grad():
            self.feature_mean.copy_(values["mean"])
            self.feature_std.copy_(values["std"])

    def forward(self, features: torch.Tensor, hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Acceptance logits; for `kind="paper"`, the predicted acceptance rate of each row's step (linear, unclipped).

        Args:
            features (`torch.Tensor` of shape `(batch, num_features)`): one row per drafted token, columns in the
                order of `schema.features`.
            hidden_states (`torch.Tensor` of shape `(batch, hidden_state_dim)`, *optional*): the draft's last hidden
                state at each drafted token; required for `kind="pair"`, refused for `"portable"`.

        Returns:
            `torch.Tensor` of shape `(batch,)`: logit of the probability that each token is accepted (`"paper"`:
            the step's predicted acceptance rate).

        Raises:
            ValueError: on a shape that does not match the predictor, or hidden states given to the wrong kind.
        """
        inputs = (self._check_features(features) - self.feature_mean) / self.feature_std
        if self.kind == "pair":
            hidden = self._check_hidden_states(hidden_states, features.shape[0])
            # Hidden-state scales differ between drafts and positions; a parameter-free layer norm evens them out.
            inputs = torch.cat((inputs, F.layer_norm(hidden, (self.hidden_state_dim,))), dim=-1)
        elif hidden_states is not None:
            raise ValueError("this predictor is 'portable' and reads no hidden_states: drop the argument")
        return self.mlp(inputs).squeeze(-1)

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor, hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Acceptance probabilities, without gradients.

        Args:
            features (`torch.Tensor` of shape `(batch, num_features)`): as in `forward`.
            hidden_states (`torch.Tensor` of shape `(batch, hidden_state_dim)`, *optional*): as in `forward`.

        Returns:
            `torch.Tensor` of shape `(batch,)`: probabilities in (0, 1) (up to float rounding at extreme logits).

        Raises:
            ValueError: as `forward`, and for a `"paper"` predictor, whose output is a rate, not a logit.
        """
        if self.kind == PAPER_KIND:
            raise ValueError(
                "a 'paper' predictor outputs a step's acceptance rate, not a logit: call predictor(features) and "
                "clip it to [0, 1]"
            )
        return torch.sigmoid(self(features, hidden_states))

    def _check_features(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor):
            raise TypeError(
                f"features must be a torch.Tensor of shape (batch, {len(self.features)}), got {features!r}"
            )
        if features.dim() != 2 or features.shape[1] != len(self.features):
            hint = " (a single token: features.unsqueeze(0))" if features.dim() == 1 else ""
            raise ValueError(
                f"features must have shape (batch, {len(self.features)}), one column per feature in the order "
                f"{list(self.features)}; got {tuple(features.shape)}{hint}"
            )
        return features.to(self.feature_mean.dtype)

    def _check_hidden_states(self, hidden_states: torch.Tensor | None, batch: int) -> torch.Tensor:
        expected = (batch, self.hidden_state_dim)
        if hidden_states is None:
            raise ValueError(
                f"this predictor is 'pair': pass hidden_states of shape {expected}, the draft's last hidden state "
                "at each drafted token"
            )
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(f"hidden_states must be a torch.Tensor of shape {expected}, got {hidden_states!r}")
        if tuple(hidden_states.shape) != expected:
            raise ValueError(
                f"hidden_states must have shape {expected} (batch of features, hidden_state_dim); "
                f"got {tuple(hidden_states.shape)}"
            )
        return hidden_states.to(self.feature_mean.dtype)

    @classmethod
    def from_paper_npz(cls, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> GammaPredictor:
        """The SpecKV paper's predictor (`kind="paper"`) from an `.npz` of its weights.

        Args:
            path: the `.npz` of the paper's weights (see `speckv_hf.predictor.paper.load_paper_npz`).
            metadata: extra metadata for config.json and the card, merged over the recorded source.

        Returns:
            The predictor: `predictor(features)` of shape `(batch, 6)` gives the predicted acceptance rates
            `(batch,)`, `features @ W1 + b1`, ReLU, `@ W2 + b2` (in float32).

        Raises:
            PredictorLoadError: as `load_paper_npz`.
        """
        arrays = load_paper_npz(path)
        predictor = cls(
            list(PAPER_FEATURES),
            hidden_sizes=[PAPER_ARRAYS["W1"][1]],
            kind=PAPER_KIND,
            metadata={**paper_source(path), **(metadata or {})},
        )
        with torch.no_grad():
            hidden, output = predictor.mlp[0], predictor.mlp[2]
            hidden.weight.copy_(torch.from_numpy(arrays["W1"].T.copy()))
            hidden.bias.copy_(torch.from_numpy(arrays["b1"]))
            output.weight.copy_(torch.from_numpy(arrays["W2"].T.copy()))
            output.bias.copy_(torch.from_numpy(arrays["b2"]))
        return predictor

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The README.md card: kind, feature schema, architecture, training metadata and a usage snippet.

        Args:
            *args: passed to the mixin's `generate_model_card`.
            **kwargs: template values that override the predictor's; `repo_id` names the repository in the usage
                snippet (`push_to_hub` sets it; `save_pretrained(..., model_card_kwargs={"repo_id": ...})` too).

        Returns:
            The generated `ModelCard`.
        """
        return super().generate_model_card(*args, **{**card_context(self.config()), **kwargs})

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Pushes the predictor to the Hub (see `PyTorchModelHubMixin.push_to_hub`); the card names `repo_id`.

        Args:
            repo_id: the repository to push to, e.g. `"your-org/speckv-predictor"`.
            model_card_kwargs: extra card template values.
            **kwargs: passed to `PyTorchModelHubMixin.push_to_hub`.

        Returns:
            The URL of the commit.
        """
        model_card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> GammaPredictor:
        """Loads a predictor strictly from a local folder or a Hub repo (see `_from_pretrained` for the checks).

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained` (or `speckv train`), or a Hub repo id.
            **kwargs: `PyTorchModelHubMixin.from_pretrained`'s (`revision`, `cache_dir`, `local_files_only`, ...),
                and `map_location` and `expected_features`.

        Returns:
            The predictor, in eval mode.

        Raises:
            FileNotFoundError: for a local path (a `Path`, or absolute, `./`, `../`, `~`: what cannot be a Hub repo
                id) that does not exist, before anything is downloaded.
            NotADirectoryError: for a path to a file.
            PredictorLoadError: as `_from_pretrained`.
            PredictorSchemaError: as `_from_pretrained`.
        """
        source = local_or_hub_id(pretrained_model_name_or_path, PREDICTOR_SOURCE)
        return super().from_pretrained(source, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        expected_features: Sequence[str] | FeatureSchema | None = None,
        **model_kwargs: Any,
    ) -> GammaPredictor:
        """Loads strictly: safetensors only, the schema version checked, every tensor present with its shape.

        `from_pretrained(repo_id_or_path, revision=..., cache_dir=..., local_files_only=..., map_location=...,
        expected_features=...)` reads config.json and calls this.

        Raises:
            PredictorLoadError: a missing config.json or schema version, another schema version, an invalid
                config, no model.safetensors (pickled weights are never loaded), an unreadable file, or tensors
                that do not match the config.
            PredictorSchemaError: the predictor's features differ from `expected_features`.
        """
        if not strict:
            raise ValueError("GammaPredictor always loads strictly: drop strict=False")
        if config is None:
            raise PredictorLoadError(f"no config.json for {model_id!r}: save the predictor with save_pretrained")
        check_saved_config(config, model_id)
        # Older huggingface_hub releases (the ones transformers 4.57 pins) also pass download settings here.
        download_kwargs = {key: model_kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in model_kwargs}
        download_kwargs = {key: value for key, value in download_kwargs.items() if value is not None}
        download_kwargs.pop("resume_download", None)  # deprecated: downloads always resume
        try:
            model = cls(**model_kwargs)
        except (TypeError, ValueError) as error:
            raise PredictorLoadError(
                f"cannot build a GammaPredictor from config.json of {model_id!r} and the keyword arguments: {error}"
            ) from error
        if expected_features is not None:
            if not isinstance(expected_features, FeatureSchema):
                expected_features = FeatureSchema(model.schema_version, expected_features, model.hidden_state_dim)
            expected_features.check_compatible(model.schema, what=f"predictor {model_id!r}")
        weights_path = weights_file(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            **download_kwargs,
        )
        try:
            state_dict = safetensors.torch.load_file(weights_path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise PredictorLoadError(
                f"cannot read {weights_path}: {error}. The file is corrupt or truncated: delete it and save or "
                "download the predictor again"
            ) from error
        check_state_dict(model.state_dict(), state_dict, weights_path)
        if model.kind == PAPER_KIND and not (
            torch.all(state_dict["feature_mean"] == 0) and torch.all(state_dict["feature_std"] == 1)
        ):
            raise PredictorLoadError(
                f"{weights_path} gives a 'paper' predictor a feature normalization; the paper's reads raw features: "
                "convert the weights again with GammaPredictor.from_paper_npz"
            )
        model.load_state_dict(state_dict, strict=True)
        return model.to(map_location).eval()


def _linear(in_width: int, out_width: int, generator: torch.Generator) -> nn.Linear:
    """An `nn.Linear` initialised like torch's default, from `generator` instead of the global random state."""
    layer = torch.nn.utils.skip_init(nn.Linear, in_width, out_width)
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(in_width) if in_width > 0 else 0.0
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer
