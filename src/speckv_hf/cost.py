"""The cost model: how long a draft forward, a target verification and the loop around them take.

All timing in the library goes through [`Clock`]; all cost estimates through [`CostModel`]. Times are seconds.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

__all__ = ["Clock", "CostModel", "CostSettings"]


class Clock:
    """Wall clock that is correct for asynchronous devices.

    On CUDA the clock synchronizes the device before reading the host timer, so a reading covers the kernels
    queued before it. The draft loop already synchronizes once per drafted token (the policy needs each token's
    signals on the host), so this adds no stall there; the readings around the target's verification land on
    transformers' own synchronization points.

    Args:
        *devices: the devices whose queued work a reading must include.
    """

    def __init__(self, *devices: torch.device | str) -> None:
        self._cuda_devices = sorted({torch.device(d) for d in devices if torch.device(d).type == "cuda"}, key=str)

    def now(self) -> float:
        """Returns the current time in seconds, after the watched devices finished their queued work."""
        for device in self._cuda_devices:
            torch.cuda.synchronize(device)
        return time.perf_counter()


@dataclass
class CostSettings:
    """User-set costs, overriding the online measurements.

    Args:
        cost_ratio: draft forward time divided by the target's single-token forward time. When set, the draft
            time is derived from the measured target time instead of being measured.
        verify_slope: relative growth of the target's verification time per extra candidate token
            (`T(k) = T(0) * (1 + verify_slope * k)`). When unset it is fitted online.
        prior_verify_slope: slope assumed before enough varied measurements exist.
        decay: forgetting factor of the online estimates per observation, in (0, 1].
    """

    cost_ratio: float | None = None
    verify_slope: float | None = None
    prior_verify_slope: float = 0.03
    decay: float = 0.98

    def __post_init__(self) -> None:
        if self.cost_ratio is not None and not self.cost_ratio > 0:
            raise ValueError(f"cost_ratio must be > 0 (draft time / target time), got {self.cost_ratio}.")
        if self.verify_slope is not None and self.verify_slope < 0:
            raise ValueError(f"verify_slope must be >= 0, got {self.verify_slope}.")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}.")


class CostModel:
    """Online estimates of the costs of one speculative step.

    A step that drafts `k` tokens costs `overhead + k * draft_time + verify_time(k)`, where `verify_time(k)` is the
    target's forward over `k + 1` positions plus transformers' acceptance bookkeeping, modelled as `a + b * k` and
    fitted by exponentially weighted least squares.

    Args:
        settings: user overrides and fitting parameters.
    """

    def __init__(self, settings: CostSettings | None = None) -> None:
        self.settings = settings or CostSettings()
        self._draft_time: float | None = None
        self._overhead: float | None = None
        # Exponentially weighted sums for the linear fit: w, w*k, w*k^2, w*t, w*k*t.
        self._sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.num_verify_samples = 0
        self.num_draft_samples = 0

    def copy(self) -> CostModel:
        """Returns an independent copy (used to warm-start a new generation call)."""
        return copy.deepcopy(self)

    # -- observations -------------------------------------------------------------------------------------------
    def observe_draft(self, seconds: float) -> None:
        """Records the time of one single-token draft forward (signals and policy included)."""
        self._draft_time = self._ema(self._draft_time, seconds)
        self.num_draft_samples += 1

    def observe_verify(self, num_candidates: int, seconds: float) -> None:
        """Records the time of one verification of `num_candidates` drafted tokens."""
        decay = self.settings.decay
        k = float(num_candidates)
        self._sums = [s * decay for s in self._sums]
        for i, value in enumerate((1.0, k, k * k, seconds, k * seconds)):
            self._sums[i] += value
        self.num_verify_samples += 1

    def observe_overhead(self, seconds: float) -> None:
        """Records the time transformers' loop spends between a verification and the next draft."""
        self._overhead = self._ema(self._overhead, seconds)

    def _ema(self, old: float | None, new: float) -> float:
        if old is None:
            return new
        alpha = max(1.0 - self.settings.decay, 0.05)
        return (1 - alpha) * old + alpha * new

    # -- estimates ----------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether enough was measured for the estimates to mean something."""
        has_draft = self.settings.cost_ratio is not None or self._draft_time is not None
        return self.num_verify_samples >= 1 and has_draft

    def verify_coefficients(self) -> tuple[float, float]:
        """Returns `(a, b)` of `verify_time(k) = a + b * k`, in seconds (0, 0 before any measurement)."""
        w, wk, wkk, wt, wkt = self._sums
        if w <= 0:
            return 0.0, 0.0
        mean_k, mean_t = wk / w, wt / w
        var_k = wkk / w - mean_k**2
        if self.settings.verify_slope is not None or var_k < 0.25:
            # Too little spread in k to fit a slope: use the user's or the prior relative slope.
            rel = (
                self.settings.verify_slope
                if self.settings.verify_slope is not None
                else self.settings.prior_verify_slope
            )
            a = mean_t / (1 + rel * mean_k)
            return a, a * rel
        slope = (wkt / w - mean_k * mean_t) / var_k
        slope = max(slope, 0.0)
        return max(mean_t - slope * mean_k, 1e-9), slope

    def verify_time(self, num_candidates: int) -> float:
        """Estimated verification time for `num_candidates` drafted tokens (seconds)."""
        a, b = self.verify_coefficients()
        return a + b * num_candidates

    @property
    def draft_time(self) -> float:
        """Estimated time of one draft token (seconds)."""
        if self.settings.cost_ratio is not None:
            return self.settings.cost_ratio * self.verify_coefficients()[0]
        return self._draft_time or 0.0

    @property
    def overhead(self) -> float:
        """Estimated per-step loop overhead outside draft and verification (seconds)."""
        return self._overhead or 0.0

    @property
    def cost_ratio(self) -> float | None:
        """Draft forward time over target single-token verification time, or None before measurements."""
        a, _ = self.verify_coefficients()
        if a <= 0 or (self.settings.cost_ratio is None and self._draft_time is None):
            return None
        return self.draft_time / a

    def step_time(self, num_candidates: int) -> float:
        """Estimated time of a whole step drafting `num_candidates` tokens (seconds)."""
        return self.overhead + num_candidates * self.draft_time + self.verify_time(num_candidates)

    def marginal_time(self, num_candidates: int) -> float:
        """Extra time of drafting token number `num_candidates + 1` of a step (seconds)."""
        _, b = self.verify_coefficients()
        return self.draft_time + b
