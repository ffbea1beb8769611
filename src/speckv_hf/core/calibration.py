"""Online calibration of the draft's confidence into a probability that the target accepts the token."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AcceptanceCalibrator"]


@dataclass
class AcceptanceCalibrator:
    """Maps draft confidence to an acceptance probability, learned from the accepts and rejects seen so far.

    Confidence in [0, 1] is split into `num_bins` equal bins, separately for the first `num_positions - 1`
    positions of a draft and for all later ones (a draft's second token is accepted less often than its confidence
    says, since it is conditioned on a first token the target may not have chosen). Each bin holds Beta
    pseudo-counts that start at a prior saying "the draft is calibrated" (acceptance = bin centre, worth
    `prior_strength` observations) and are updated with every verified token. Older observations fade with
    `decay` so the estimate follows the text.

    Args:
        num_bins: number of confidence bins.
        num_positions: number of position groups (positions `>= num_positions - 1` share the last group).
        prior_strength: weight, in observations, of the calibrated-draft prior in each bin.
        decay: forgetting factor applied to a bin's counts at each of its updates, in (0, 1].
    """

    num_bins: int = 10
    num_positions: int = 3
    prior_strength: float = 3.0
    decay: float = 0.995
    _accepts: list[float] = field(default_factory=list, repr=False)
    _totals: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {self.num_bins}.")
        if self.num_positions < 1:
            raise ValueError(f"num_positions must be >= 1, got {self.num_positions}.")
        if self.prior_strength <= 0:
            raise ValueError(f"prior_strength must be > 0, got {self.prior_strength}.")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}.")
        if not self._totals:
            centres = [(i + 0.5) / self.num_bins for i in range(self.num_bins)]
            self._accepts = [c * self.prior_strength for c in centres] * self.num_positions
            self._totals = [self.prior_strength] * (self.num_bins * self.num_positions)

    def _bin(self, confidence: float, position: int) -> int:
        group = min(max(position, 0), self.num_positions - 1)
        return group * self.num_bins + min(max(int(confidence * self.num_bins), 0), self.num_bins - 1)

    def probability(self, confidence: float, position: int = 0) -> float:
        """Estimated probability that a token drafted with this confidence at this draft position is accepted,
        given that the tokens before it in the draft were."""
        i = self._bin(confidence, position)
        return self._accepts[i] / self._totals[i]

    def update(self, confidence: float, accepted: bool, position: int = 0) -> None:
        """Records whether a token drafted with this confidence at this draft position was accepted."""
        i = self._bin(confidence, position)
        self._accepts[i] = self._accepts[i] * self.decay + float(accepted)
        self._totals[i] = self._totals[i] * self.decay + 1.0

    @property
    def num_observations(self) -> float:
        """Decayed number of observations beyond the prior, over all bins."""
        return max(sum(self._totals) - self.prior_strength * len(self._totals), 0.0)
