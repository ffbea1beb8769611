"""The cost model: how long a draft forward, a target verification and the loop around them take.

All timing in the library goes through [`Clock`][]; all cost estimates through [`CostModel`][]. Times are seconds.
"""

from __future__ import annotations

import copy
import statistics
import time
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

import torch

__all__ = ["Clock", "CostModel", "CostSettings"]

_MAX_BUCKET = 32  # verifications of more drafted tokens share one bucket of samples
_STEP_WINDOW = 256  # steps behind the long-run throughput: a few calls' worth
_MIN_STEPS = 16  # steps before the long-run throughput is trusted
_STEP_CLIP = 3.0  # a step counts for at most this many times the median step's seconds


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
        window: how many recent samples each estimate is the median of (per drafted-token count for
            verification).
    """

    cost_ratio: float | None = None
    verify_slope: float | None = None
    prior_verify_slope: float = 0.03
    window: int = 48

    def __post_init__(self) -> None:
        if self.cost_ratio is not None and not self.cost_ratio > 0:
            raise ValueError(f"cost_ratio must be > 0 (draft time / target time), got {self.cost_ratio}.")
        if self.verify_slope is not None and self.verify_slope < 0:
            raise ValueError(f"verify_slope must be >= 0, got {self.verify_slope}.")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}.")


class _Window:
    """The last `size` samples, also kept sorted, so their median is a lookup and a new sample costs one insertion."""

    __slots__ = ("_order", "_sorted")

    def __init__(self, size: int) -> None:
        self._order: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def append(self, value: float) -> None:
        if len(self._order) == self._order.maxlen:
            del self._sorted[bisect_left(self._sorted, self._order[0])]
        self._order.append(value)
        insort(self._sorted, value)

    def median(self) -> float:
        ordered, n = self._sorted, len(self._sorted)
        return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2

    def __len__(self) -> int:
        return len(self._order)


class CostModel:
    """Online estimates of the costs of one speculative step.

    A step that drafts `k` tokens costs `overhead + k * draft_time + verify_time(k)`, where `verify_time(k)` is the
    target's forward over `k + 1` positions plus transformers' acceptance bookkeeping, modelled as `a + b * k` and
    fitted by least squares over the median time of each `k`. Every estimate is a median of recent samples, so a
    single noisy measurement cannot swing a decision.

    Args:
        settings: user overrides and fitting parameters.
    """

    def __init__(self, settings: CostSettings | None = None) -> None:
        self.settings = settings or CostSettings()
        # Recent samples, so that estimates are medians: one slow forward (a page fault, another process) moves a
        # median by nothing, where it would move a mean by its whole excess divided by the window.
        self._draft_samples = _Window(self.settings.window)
        self._first_draft_samples = _Window(self.settings.window)
        self._overhead_samples = _Window(self.settings.window)
        self._verify_samples: dict[int, _Window] = {}
        self._steps: deque[tuple[float, float]] = deque(maxlen=_STEP_WINDOW)
        self._throughput: float | None = None
        self._step_cap = 0.0  # the clip of a step's seconds: 3x the median step, refreshed every 16 steps
        self._steps_since_cap = _MIN_STEPS
        self._estimates: tuple[float, float, float, float, float] | None = None  # draft, overhead, a, b, first
        self.num_verify_samples = 0
        self.num_draft_samples = 0

    def copy(self) -> CostModel:
        """Returns an independent copy (used to warm-start a new generation call); its step clip is recomputed on
        first use."""
        clone = copy.deepcopy(self)
        clone._steps_since_cap = _MIN_STEPS
        clone._throughput = None
        return clone

    # -- observations -------------------------------------------------------------------------------------------
    def observe_draft(self, seconds: float) -> None:
        """Records the time of one more drafted token within a step: its single-token draft forward, signals and
        policy decision (the marginal cost of drafting one more)."""
        self._draft_samples.append(seconds)
        self.num_draft_samples += 1
        self._estimates = None

    def observe_first_draft(self, seconds: float) -> None:
        """Records the time to the first drafted token of a step, which also pays the draft's catch-up forward
        over the tokens the target added."""
        self._first_draft_samples.append(seconds)
        self._estimates = None

    def observe_verify(self, num_candidates: int, seconds: float) -> None:
        """Records the time of one verification of `num_candidates` drafted tokens."""
        bucket = min(int(num_candidates), _MAX_BUCKET)
        samples = self._verify_samples.get(bucket)
        if samples is None:
            samples = self._verify_samples[bucket] = _Window(self.settings.window)
        samples.append(seconds)
        self.num_verify_samples += 1
        self._estimates = None

    def observe_overhead(self, seconds: float) -> None:
        """Records the time transformers' loop spends between a verification and the next draft."""
        self._overhead_samples.append(seconds)
        self._estimates = None

    def observe_step(self, tokens: float, seconds: float) -> None:
        """Records a whole step: the tokens it added to the sequence (per row, in a batch) and its wall-clock seconds
        (draft, verification and the loop around them)."""
        self._steps.append((float(tokens), float(seconds)))
        self._throughput = None
        self._steps_since_cap += 1

    @property
    def throughput(self) -> float | None:
        """Tokens per second over the last 256 steps (of this call and the warm-started ones), each step's seconds
        clipped at 3x the median step's (the median refreshed every 16 steps) so that one stalled step moves it
        little; None before 16 steps."""
        if self._throughput is None and len(self._steps) >= _MIN_STEPS:
            if self._steps_since_cap >= _MIN_STEPS:
                self._step_cap = _STEP_CLIP * statistics.median(seconds for _, seconds in self._steps)
                self._steps_since_cap = 0
            cap = self._step_cap
            seconds = sum(min(s, cap) for _, s in self._steps)
            self._throughput = sum(t for t, _ in self._steps) / seconds if seconds > 0 else None
        return self._throughput

    def _estimate(self) -> tuple[float, float, float, float, float]:
        if self._estimates is None:
            first = self._first_draft_samples.median() if self._first_draft_samples else None
            draft = self._draft_samples.median() if self._draft_samples else (first or 0.0)
            overhead = self._overhead_samples.median() if self._overhead_samples else 0.0
            self._estimates = (draft, overhead, *self._fit_verify(), draft if first is None else first)
        return self._estimates

    def _fit_verify(self) -> tuple[float, float]:
        """`(a, b)` of `verify_time(k) = a + b * k`: least squares over the median time of each `k`, weighted by
        its number of samples."""
        points = [(k, s.median(), len(s)) for k, s in self._verify_samples.items() if s]
        if not points:
            return 0.0, 0.0
        w = sum(n for _, _, n in points)
        mean_k = sum(k * n for k, _, n in points) / w
        mean_t = sum(t * n for _, t, n in points) / w
        var_k = sum(n * (k - mean_k) ** 2 for k, _, n in points) / w
        if self.settings.verify_slope is not None or var_k < 0.25 or len(points) < 2:
            # Too little spread in k to fit a slope: use the user's or the prior relative slope.
            rel = (
                self.settings.verify_slope
                if self.settings.verify_slope is not None
                else self.settings.prior_verify_slope
            )
            a = mean_t / (1 + rel * mean_k)
            return a, a * rel
        slope = max(sum(n * (k - mean_k) * (t - mean_t) for k, t, n in points) / (w * var_k), 0.0)
        # A verification never costs less than half the fastest median seen: a steep noisy fit cannot drive the
        # intercept (the target's forward time, the denominator of the cost ratio) to zero.
        floor = 0.5 * min(t for _, t, _ in points)
        intercept = mean_t - slope * mean_k
        if intercept < floor:
            intercept = floor
            slope = max((mean_t - intercept) / mean_k, 0.0) if mean_k > 0 else 0.0
        return intercept, slope

    # -- estimates ----------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether enough was measured for the estimates to mean something."""
        has_draft = self.settings.cost_ratio is not None or bool(self._draft_samples or self._first_draft_samples)
        return self.num_verify_samples >= 1 and has_draft

    def verify_coefficients(self) -> tuple[float, float]:
        """Returns `(a, b)` of `verify_time(k) = a + b * k`, in seconds (0, 0 before any measurement)."""
        return self._estimate()[2:4]

    def verify_time(self, num_candidates: int) -> float:
        """Estimated verification time for `num_candidates` drafted tokens (seconds)."""
        a, b = self.verify_coefficients()
        return a + b * num_candidates

    @property
    def draft_time(self) -> float:
        """Estimated time of one draft token (seconds)."""
        if self.settings.cost_ratio is not None:
            return self.settings.cost_ratio * self.verify_coefficients()[0]
        return self._estimate()[0]

    @property
    def first_draft_time(self) -> float:
        """Estimated time to the first draft token of a step (catch-up forward included; seconds)."""
        if self.settings.cost_ratio is not None:
            return self.draft_time
        return self._estimate()[4]

    @property
    def overhead(self) -> float:
        """Estimated per-step loop overhead outside draft and verification (seconds)."""
        return self._estimate()[1]

    @property
    def cost_ratio(self) -> float | None:
        """Draft forward time over target single-token verification time, or None before measurements."""
        a, _ = self.verify_coefficients()
        if a <= 0 or (self.settings.cost_ratio is None and not (self._draft_samples or self._first_draft_samples)):
            return None
        return self.draft_time / a

    def step_time(self, num_candidates: int) -> float:
        """Estimated time of a whole step drafting `num_candidates` tokens (seconds)."""
        drafting = self.first_draft_time + (num_candidates - 1) * self.draft_time if num_candidates else 0.0
        return self.overhead + drafting + self.verify_time(num_candidates)

    def marginal_time(self, num_candidates: int) -> float:
        """Extra time of drafting token number `num_candidates + 1` of a step (seconds)."""
        _, b = self.verify_coefficients()
        return (self.first_draft_time if num_candidates == 0 else self.draft_time) + b
