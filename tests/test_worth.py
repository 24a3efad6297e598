"""The real-image equivalent and the helps / hurts verdict (harness/worth.py) on small known curves,
against interpolations worked out by hand."""
import math

import numpy as np
import pytest

from harness.intervals import Interval
from harness.worth import HELPS, HURTS, INCONCLUSIVE, equivalent_interval, real_equivalent, worth_verdict

N = [10, 25, 50, 100]                     # real images at fractions 0.1, 0.25, 0.5, 1.0 of 100
CURVE = [60.0, 70.0, 75.0, 80.0]          # real-only accuracy there


def test_the_equivalent_interpolates_the_real_only_curve_at_its_first_crossing():
    assert real_equivalent(N, CURVE, 72.0) == pytest.approx(35.0)        # 25 + (72 - 70) / (75 - 70) x 25
    assert real_equivalent(N, CURVE, 77.5) == pytest.approx(75.0)        # 50 + 2.5 / 5 x 50
    assert real_equivalent(N, CURVE, 70.0) == pytest.approx(25.0)        # on a point
    assert real_equivalent(N, CURVE, 80.0) == pytest.approx(100.0)
    assert real_equivalent(N, CURVE, 80.5) == math.inf                   # more than all the real images
    assert real_equivalent(N, CURVE, 55.0) == 10.0                       # below the curve's first point
    # a curve that dips: the first crossing counts (10 + (71 - 60) / (72 - 60) x 15 = 23.75, not ~37.5)
    assert real_equivalent(N, [60.0, 72.0, 70.0, 80.0], 71.0) == pytest.approx(23.75)
    for counts, curve in (([10, 10, 20], [1, 2, 3]), ([10, 20], [1]), ([], [])):
        with pytest.raises(ValueError, match="need counts increasing"):
            real_equivalent(counts, curve, 1.0)


def test_its_interval_is_the_percentiles_over_paired_resamples_and_keeps_inf():
    rng = np.random.default_rng(0)
    curves = np.array(CURVE) + rng.normal(0, 0.5, (400, 4))
    scores = np.full(400, 72.0) + rng.normal(0, 0.5, 400)
    iv = equivalent_interval(N, curves, scores)
    values = sorted(real_equivalent(N, c, s) for c, s in zip(curves, scores))
    assert (iv.low, iv.high) == (values[9], values[390])   # ranks 2.5 % (lower) and 97.5 % (higher) of 400
    assert iv.low < 35.0 < iv.high
    top = equivalent_interval(N, np.tile(CURVE, (10, 1)), np.array([79.0] * 5 + [90.0] * 5))
    assert top.low == pytest.approx(90.0) and top.high == math.inf


def test_verdicts_follow_the_paired_difference_interval():
    assert worth_verdict(Interval(0.5, 4.0)) == HELPS
    assert worth_verdict(Interval(-6.0, -0.1)) == HURTS
    assert worth_verdict(Interval(-2.0, 3.0)) == INCONCLUSIVE
    assert worth_verdict(Interval(None, None, "one model")) is None
