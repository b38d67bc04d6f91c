"""How long a batch of n contexts takes: wall seconds = fixed + per_context * n, learned as it runs.

The dynamic sizer uses this model for the target duration: whether the current size runs too
long, and how far a step up may go. It is an exponentially weighted least-squares line through
recent (contexts, wall seconds) points, so old batches fade (`decay` per batch), and
deterministic (no clock).

The line needs batches of different sizes to tell the fixed part from the per-context part.
Without that spread (the sizer has held one size for a while) the model falls back to the
average wall time per context with no fixed part: exact at the size it was measured at, and an
over-prediction for bigger sizes, so the cap it gives errs short. A line whose slope comes out
negative (noise over a flat cost) is read as all fixed; one whose fixed part comes out negative
is replaced by the line through the origin.

A jump in the cost (the workload changed; 3x either way, beyond any noise) is not averaged in:
`jumped()` says so and `reset()` starts the line again from the new batch.
"""

from __future__ import annotations

import math

# Weight of a batch one batch older: ~5 recent batches carry the fit.
DECAY = 0.8
# Relative spread of sizes (std / mean) below which the line is not trusted.
MIN_SPREAD = 0.1


class DurationModel:
    """wall seconds ~ fixed_seconds + seconds_per_context * contexts, from recent batches."""

    def __init__(self, decay: float = DECAY) -> None:
        self.decay = decay
        self.reset()

    def __repr__(self) -> str:
        fit = self.fit()
        if fit is None:
            return "<DurationModel empty>"
        return f"<DurationModel {fit[0]:.3f} s + {fit[1] * 1000:.3f} ms/context>"

    def reset(self) -> None:
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def add(self, contexts: int, wall_seconds: float) -> None:
        if contexts <= 0 or not math.isfinite(wall_seconds) or wall_seconds < 0:
            return
        d, n, t = self.decay, float(contexts), wall_seconds
        self._w = self._w * d + 1
        self._n = self._n * d + n
        self._t = self._t * d + t
        self._nn = self._nn * d + n * n
        self._nt = self._nt * d + n * t

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per context), or None before the first batch."""
        if self._w <= 0 or self._n <= 0:
            return None
        mean_n, mean_t = self._n / self._w, self._t / self._w
        variance = self._nn / self._w - mean_n * mean_n
        covariance = self._nt / self._w - mean_n * mean_t
        if variance <= (MIN_SPREAD * mean_n) ** 2:
            return 0.0, mean_t / mean_n  # one size only: the average, exact there
        slope = covariance / variance
        if slope <= 0:
            return mean_t, 0.0  # no growth with size within the noise: all fixed
        fixed = mean_t - slope * mean_n
        if fixed < 0:
            return 0.0, self._nt / self._nn  # a line through the origin fits better
        return fixed, slope

    def predict(self, contexts: int) -> float | None:
        """Seconds a batch of `contexts` would take."""
        fit = self.fit()
        return None if fit is None else fit[0] + fit[1] * contexts

    def largest_within(self, seconds: float) -> int | None:
        """The largest batch predicted to take at most `seconds` (0 if even one context would not)."""
        fit = self.fit()
        if fit is None:
            return None
        fixed, slope = fit
        if slope <= 0:
            return None
        return max(0, math.floor((seconds - fixed) / slope))


def jumped(sample: float, usual: float, factor: float) -> float | None:
    """sample / usual when it is `factor` or more times larger or smaller, else None."""
    if usual <= 0 or sample <= 0:
        return None
    ratio = sample / usual
    return ratio if ratio >= factor or ratio <= 1 / factor else None
