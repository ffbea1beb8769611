"""speckv-hf: adaptive speculation length for Hugging Face transformers' assisted generation.

`import speckv_hf` is cheap: every public name loads on first use (PEP 562), so the `speckv` command line and
scripts that need one helper do not import torch and transformers up front.

The documented hook (see `speckv_hf.hook`) that lets
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
    from .adaptive import AdaptivePolicy, MarginalValuePolicy
    from .calibration import AcceptanceCalibrator
    from .compression import CompressionInfo, detect_compression, quantization_config
    from .cost import Clock, CostModel, CostSettings
    from .features import PAPER_FEATURES, PORTABLE_FEATURES, FeatureSchema, PredictorSchemaError
    from .generator import SpecKVGenerator
    from .hook import install, is_installed, speckv_generate, uninstall
    from .oracle import OraclePolicy
    from .paper_policy import PaperPolicy
    from .policies import (
        ConfidencePolicy,
        DraftPolicy,
        DraftState,
        FixedPolicy,
        HeuristicPolicy,
        PolicyContext,
        StepOutcome,
    )
    from .predictor import GammaPredictor, PredictorLoadError
    from .registry import available_policies, get_policy, register_policy
    from .signals import StepSignals, TokenSignals, token_signals
    from .speckv_policy import SpeckvPolicy
    from .stats import GenerationStats, StepRecord

# Which submodule holds each public name (the TYPE_CHECKING imports above, as data; tests/test_import.py checks
# that the two agree).
_SUBMODULE_OF = {
    "AcceptanceCalibrator": "calibration",
    "AdaptivePolicy": "adaptive",
    "Clock": "cost",
    "CompressionInfo": "compression",
    "ConfidencePolicy": "policies",
    "CostModel": "cost",
    "CostSettings": "cost",
    "DraftPolicy": "policies",
    "DraftState": "policies",
    "FeatureSchema": "features",
    "FixedPolicy": "policies",
    "GammaPredictor": "predictor",
    "GenerationStats": "stats",
    "HeuristicPolicy": "policies",
    "MarginalValuePolicy": "adaptive",
    "OraclePolicy": "oracle",
    "PAPER_FEATURES": "features",
    "PORTABLE_FEATURES": "features",
    "PaperPolicy": "paper_policy",
    "PolicyContext": "policies",
    "PredictorLoadError": "predictor",
    "PredictorSchemaError": "features",
    "SpecKVGenerator": "generator",
    "SpeckvPolicy": "speckv_policy",
    "StepOutcome": "policies",
    "StepRecord": "stats",
    "StepSignals": "signals",
    "TokenSignals": "signals",
    "available_policies": "registry",
    "detect_compression": "compression",
    "get_policy": "registry",
    "install": "hook",
    "is_installed": "hook",
    "quantization_config": "compression",
    "register_policy": "registry",
    "speckv_generate": "hook",
    "token_signals": "signals",
    "uninstall": "hook",
}
# Loading any of these loads the generation API, which installs the hook.
_GENERATION_API = frozenset({"SpecKVGenerator", "install", "is_installed", "speckv_generate", "uninstall"})

__all__ = [
    "PAPER_FEATURES",
    "PORTABLE_FEATURES",
    "AcceptanceCalibrator",
    "AdaptivePolicy",
    "Clock",
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
    """Imports a public name (or a submodule, as `speckv_hf.hook`) on first access and keeps it.

    Raises:
        AttributeError: for a name the package does not have.
    """
    submodule = _SUBMODULE_OF.get(name)
    if submodule is not None:
        value = getattr(importlib.import_module(f".{submodule}", __name__), name)
        if name in _GENERATION_API:
            from .hook import install

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
