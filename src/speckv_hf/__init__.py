"""speckv-hf: adaptive speculation length for Hugging Face transformers' assisted generation.

Importing the package installs the documented hook (see `speckv_hf.hook`) that lets
`model.generate(assistant_model=draft, candidate_generator=SpecKVGenerator())` work.
"""

from .__about__ import __version__
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

install()

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
