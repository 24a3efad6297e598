"""What synthetic data is worth, as numbers: the helps / hurts verdict of a paired difference and the
*real-image equivalent* of an augmented cell.

The real-only curve is the score of models trained on nested real subsets of n_1 < n_2 < ... < n_K
real images (classify / segment `--real-fraction`). An augmented cell (n_k real images + synthetic
ones) scoring s is worth as many real images as the real-only curve needs to reach s: the smallest n
at which the curve, drawn as straight lines between its points, first reaches s.

    s <= the curve's first point    -> n_1 (at most that: the curve says nothing below its first point)
    s never reached                 -> inf ("more than all the real images")

Its interval comes from the resamples: the same function applied to each resampled curve and cell
score (the sweep resamples test images and models together, harness.intervals), then the percentiles;
an inf end stays inf.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from harness.intervals import CI_LEVEL, Interval, verdict

HELPS, HURTS, INCONCLUSIVE = "helps", "hurts", "inconclusive"


def real_equivalent(n_real: Sequence[float], curve: Sequence[float], score: float) -> float:
    """The real images the real-only `curve` (scores at increasing counts `n_real`) needs to reach
    `score`, by linear interpolation at its first crossing; n_real[0] at or below its first point,
    math.inf when it never gets there."""
    n, y = np.asarray(n_real, float), np.asarray(curve, float)
    if len(n) != len(y) or len(n) == 0 or np.any(np.diff(n) <= 0):
        raise ValueError(f"need counts increasing and one score each, got {list(n)} and {list(y)}")
    if score <= y[0]:
        return float(n[0])
    for k in range(1, len(n)):
        if y[k] >= score:                  # the first segment that reaches it (y[k - 1] < score here)
            return float(n[k - 1] + (score - y[k - 1]) / (y[k] - y[k - 1]) * (n[k] - n[k - 1]))
    return math.inf


def equivalent_interval(n_real: Sequence[float], curves: np.ndarray, scores: np.ndarray,
                        level: float = CI_LEVEL) -> Interval:
    """Percentile interval of real_equivalent over paired resamples: curves (B, K), scores (B,)."""
    values = np.array([real_equivalent(n_real, c, s) for c, s in zip(np.asarray(curves), np.asarray(scores))])
    if len(values) == 0:
        return Interval(None, None, "no resamples")
    tail = 100 * (1 - level) / 2
    low, high = (float(np.percentile(values, q, method="lower" if q < 50 else "higher")) for q in (tail, 100 - tail))
    return Interval(low, high)


def worth_verdict(difference: Interval) -> str | None:
    """helps when the paired difference (augmented - real only) is above 0 at both ends, hurts when
    below at both, inconclusive when its interval holds 0; None without an interval."""
    if not difference.ok:
        return None
    if verdict(difference, lambda d: d > 0) == "passes":
        return HELPS
    if verdict(difference, lambda d: d < 0) == "passes":
        return HURTS
    return INCONCLUSIVE


__all__ = ["HELPS", "HURTS", "INCONCLUSIVE", "equivalent_interval", "real_equivalent", "worth_verdict"]
