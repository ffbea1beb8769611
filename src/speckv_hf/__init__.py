"""speckv-hf: adaptive speculation length for Hugging Face transformers' assisted generation.

Importing the package installs the documented hook (see `speckv_hf.hook`) that lets
`model.generate(assistant_model=draft, candidate_generator=SpecKVGenerator())` work.
"""

from .__about__ import __version__
from .calibration import AcceptanceCalibrator
from .compression import CompressionInfo, detect_compression, quantization_config
from .cost import Clock, CostModel, CostSettings
from .generator import SpecKVGenerator
from .hook import install, is_installed, speckv_generate, uninstall
from .policies import (
    AdaptivePolicy,
    ConfidencePolicy,
    DraftPolicy,
    DraftState,
    FixedPolicy,
    HeuristicPolicy,
    PolicyContext,
    StepOutcome,
    available_policies,
    get_policy,
)
from .signals import StepSignals, TokenSignals, token_signals
from .stats import GenerationStats, StepRecord

install()

__all__ = [
    "AcceptanceCalibrator",
    "AdaptivePolicy",
    "Clock",
    "CompressionInfo",
    "ConfidencePolicy",
    "CostModel",
    "CostSettings",
    "DraftPolicy",
    "DraftState",
    "FixedPolicy",
    "GenerationStats",
    "HeuristicPolicy",
    "PolicyContext",
    "SpecKVGenerator",
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
    "speckv_generate",
    "token_signals",
    "uninstall",
]
