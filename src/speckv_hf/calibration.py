"""Online calibration of the draft's confidence into a probability that the target accepts the token."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AcceptanceCalibrator"]


@dataclass
class AcceptanceCalibrator:
    """Maps draft confidence to an acceptance probability, learned from the accepts and rejects seen so far.

    Confidence in [0, 1] is split into `num_bins` equal bins. Each bin holds Beta pseudo-counts that start at a
    prior saying "the draft is calibrated" (acceptance = bin centre, worth `prior_strength` observations) and are
    updated with every verified token. Older observations fade with `decay` so the estimate follows the text.

    Args:
        num_bins: number of confidence bins.
        prior_strength: weight, in observations, of the calibrated-draft prior in each bin.
        decay: forgetting factor applied to a bin's counts at each of its updates, in (0, 1].
    """

    num_bins: int = 10
    prior_strength: float = 3.0
    decay: float = 0.995
    _accepts: list[float] = field(default_factory=list, repr=False)
    _totals: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {self.num_bins}.")
        if self.prior_strength <= 0:
            raise ValueError(f"prior_strength must be > 0, got {self.prior_strength}.")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}.")
        if not self._totals:
            centres = [(i + 0.5) / self.num_bins for i in range(self.num_bins)]
            self._accepts = [c * self.prior_strength for c in centres]
            self._totals = [self.prior_strength] * self.num_bins

    def _bin(self, confidence: float) -> int:
        return min(max(int(confidence * self.num_bins), 0), self.num_bins - 1)

    def probability(self, confidence: float) -> float:
        """Estimated probability that a token drafted with this confidence is accepted."""
        i = self._bin(confidence)
        return self._accepts[i] / self._totals[i]

    def update(self, confidence: float, accepted: bool) -> None:
        """Records whether a token drafted with this confidence was accepted."""
        i = self._bin(confidence)
        self._accepts[i] = self._accepts[i] * self.decay + float(accepted)
        self._totals[i] = self._totals[i] * self.decay + 1.0

    @property
    def num_observations(self) -> float:
        """Decayed number of observations beyond the prior, over all bins."""
        return max(sum(self._totals) - self.prior_strength * self.num_bins, 0.0)
