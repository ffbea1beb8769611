"""speckv-hf: adaptive speculation length for Hugging Face transformers' assisted generation.

`import speckv_hf` is cheap: every public name loads on first use (PEP 562), so the `speckv` command line and
scripts that need one helper do not import torch and transformers up front.

The documented hook (see `speckv_hf.decoding.hook`) that lets
`model.generate(assistant_model=draft, candidate_generator=SpecKVGenerator())` work is installed when the
generation API is first loaded: the first access to `speckv_hf.SpecKVGenerator` (or `speckv_generate`, `install`,
`uninstall`, `is_installed`) and every `SpecKVGenerator()` construction, so no such call can run without it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .__about__ import __version__

if TYPE_CHECKING:  # what type checkers and IDEs read; at run time `__getattr__` imports the same names
    from .compression.detection import CompressionInfo, detect_compression, quantization_config
    from .core.calibration import AcceptanceCalibrator
    from .core.cost import Clock, CostModel, CostSettings
    from .core.signals import StepSignals, TokenSignals, token_signals
    from .core.stats import GenerationStats, StepRecord
    from .decoding.compiled import CompileOptions
    from .decoding.custom_generate import speckv_generate
    from .decoding.generator import SpecKVGenerator
    from .decoding.hook import install, is_installed, uninstall
    from .policies.base import (
        ConfidencePolicy,
        DraftPolicy,
        DraftState,
        FixedPolicy,
        HeuristicPolicy,
        PolicyContext,
        StepOutcome,
    )
    from .policies.marginal import AdaptivePolicy, MarginalValuePolicy
    from .policies.oracle import OraclePolicy
    from .policies.paper import PaperPolicy
    from .policies.registry import available_policies, get_policy, register_policy
    from .policies.speckv import SpeckvPolicy
    from .predictor.features import PAPER_FEATURES, PORTABLE_FEATURES, FeatureSchema, PredictorSchemaError
    from .predictor.loading import PredictorLoadError
    from .predictor.model import GammaPredictor

# Which submodule holds each public name (the TYPE_CHECKING imports above, as data; tests/test_import.py checks
# that the two agree).
_SUBMODULE_OF = {
    "AcceptanceCalibrator": "core.calibration",
    "AdaptivePolicy": "policies.marginal",
    "Clock": "core.cost",
    "CompileOptions": "decoding.compiled",
    "CompressionInfo": "compression.detection",
    "ConfidencePolicy": "policies.base",
    "CostModel": "core.cost",
    "CostSettings": "core.cost",
    "DraftPolicy": "policies.base",
    "DraftState": "policies.base",
    "FeatureSchema": "predictor.features",
    "FixedPolicy": "policies.base",
    "GammaPredictor": "predictor.model",
    "GenerationStats": "core.stats",
    "HeuristicPolicy": "policies.base",
    "MarginalValuePolicy": "policies.marginal",
    "OraclePolicy": "policies.oracle",
    "PAPER_FEATURES": "predictor.features",
    "PORTABLE_FEATURES": "predictor.features",
    "PaperPolicy": "policies.paper",
    "PolicyContext": "policies.base",
    "PredictorLoadError": "predictor.loading",
    "PredictorSchemaError": "predictor.features",
    "SpecKVGenerator": "decoding.generator",
    "SpeckvPolicy": "policies.speckv",
    "StepOutcome": "policies.base",
    "StepRecord": "core.stats",
    "StepSignals": "core.signals",
    "TokenSignals": "core.signals",
    "available_policies": "policies.registry",
    "detect_compression": "compression.detection",
    "get_policy": "policies.registry",
    "install": "decoding.hook",
    "is_installed": "decoding.hook",
    "quantization_config": "compression.detection",
    "register_policy": "policies.registry",
    "speckv_generate": "decoding.custom_generate",
    "token_signals": "core.signals",
    "uninstall": "decoding.hook",
}
# Loading any of these loads the generation API, which installs the hook.
_GENERATION_API = frozenset({"SpecKVGenerator", "install", "is_installed", "speckv_generate", "uninstall"})

__all__ = [
    "PAPER_FEATURES",
    "PORTABLE_FEATURES",
    "AcceptanceCalibrator",
    "AdaptivePolicy",
    "Clock",
    "CompileOptions",
    "CompressionInfo",
    "ConfidencePolicy",
    "CostModel",
    "CostSettings",
    "DraftPolicy",
    "DraftState",
    "FeatureSchema",
    "FixedPolicy",
    "GammaPredictor",
    "GenerationStats",
    "HeuristicPolicy",
    "MarginalValuePolicy",
    "OraclePolicy",
    "PaperPolicy",
    "PolicyContext",
    "PredictorLoadError",
    "PredictorSchemaError",
    "SpecKVGenerator",
    "SpeckvPolicy",
    "StepOutcome",
    "StepRecord",
    "StepSignals",
    "TokenSignals",
    "__version__",
    "available_policies",
    "detect_compression",
    "get_policy",
    "install",
    "is_installed",
    "quantization_config",
    "register_policy",
    "speckv_generate",
    "token_signals",
    "uninstall",
]


def __getattr__(name: str) -> Any:
    """Imports a public name (or a sub-package, as `speckv_hf.decoding`) on first access and keeps it.

    Raises:
        AttributeError: for a name the package does not have.
    """
    submodule = _SUBMODULE_OF.get(name)
    if submodule is not None:
        value = getattr(importlib.import_module(f".{submodule}", __name__), name)
        if name in _GENERATION_API:
            from .decoding.hook import install

            install()
    # Private and dunder names are never submodules to import: `speckv_hf.__main__` would run the command line.
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
