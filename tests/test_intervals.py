"""The 95 % intervals (harness/intervals.py): coverage on simulated experiments with a known truth,
agreement with an independent numpy bootstrap, the point formula, verdicts and the no-interval cases."""
import numpy as np
import pytest

from harness import intervals as iv
from harness.downstream.metrics import classification_metrics
from harness.schema import CLASSIFY_METRICS, METRIC_ACCURACY


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """A population of test images (difficulty b ~ N(0, sd_img)) and a training procedure whose models
    (skill a ~ N(0, sd_model), like fold / seed models) are right on an image with probability
    logistic(mu + a + b). Truth: the procedure's expected accuracy on the population (Monte Carlo, 10^6)."""

    def __init__(self, mu, sd_model, sd_img, rng):
        self.mu, self.sd_model, self.sd_img, self.rng = mu, sd_model, sd_img, rng
        a, b = rng.normal(0, sd_model, 10**6), rng.normal(0, sd_img, 10**6)
        self.truth = 100 * _logistic(mu + a + b).mean()

    def images(self, n):
        return self.rng.normal(0, self.sd_img, n)

    def correct(self, b, models):
        """(models, N) 0/100 scores of `models` new models on images b."""
        a = self.rng.normal(0, self.sd_model, models)[:, None]
        return 100.0 * (self.rng.random((models, len(b))) < _logistic(self.mu + a + b[None]))


def _coverage(models, sd_model, experiments=400, n_images=100, gain=0.5, seed=0):
    """Share of simulated experiments whose interval covers the truth: one run's accuracy, and the
    paired difference of two training procedures (logit gain `gain`) scored on the same test images."""
    rng = np.random.default_rng(seed)
    base, better = World(2.0, sd_model, 1.2, rng), World(2.0 + gain, sd_model, 1.2, rng)
    covered = paired = naive = 0
    for k in range(experiments):
        b = base.images(n_images)
        a_scores, b_scores = base.correct(b, models), better.correct(b, models)
        [one] = iv.mean_intervals(a_scores, [""] * n_images, resamples=1000, seed=k)
        [diff] = iv.paired_mean_intervals(b_scores, a_scores, [""] * n_images, resamples=1000, seed=k)
        [images_only] = iv.mean_intervals(a_scores.mean(0, keepdims=True), [""] * n_images, resamples=1000, seed=k)
        covered += one.low <= base.truth <= one.high
        paired += diff.low <= better.truth - base.truth <= diff.high
        naive += images_only.low <= base.truth <= images_only.high
    return covered / experiments, paired / experiments, naive / experiments


@pytest.mark.parametrize("models, sd_model", [(2, 0.4), (6, 0.6)])
def test_intervals_cover_the_truth_92_to_98_percent(models, sd_model):
    """2 models = the demo's 2 folds; 6 = 2 folds x 3 seeds. Model skill sd 0.4-0.6 logits is 4-6
    accuracy points at ~85 %, what fold models here differ by."""
    covered, paired, naive = _coverage(models, sd_model)
    assert 0.92 <= covered <= 0.98, covered
    assert 0.92 <= paired <= 0.98, paired


def test_an_interval_that_ignores_the_models_undercovers():
    """The control: resampling the images alone (the models' mean taken as fixed) misses the truth
    far more often than 5 % when models differ, so the coverage test above can fail."""
    _, _, naive = _coverage(6, 1.0, experiments=200)
    assert naive < 0.85, naive


def _numpy_bootstrap(y_true, pred, groups, n=4000, seed=123):
    """An independent two-way bootstrap in plain numpy: draw lesion groups, draw models, score each
    drawn model on the drawn images (scikit-learn's metrics), average; percentile 2.5 / 97.5."""
    rng = np.random.default_rng(seed)
    units = {}
    for i, g in enumerate(groups):
        units.setdefault(g or f"#{i}", []).append(i)
    units = list(units.values())
    values = []
    for _ in range(n):
        images = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        models = rng.integers(0, len(pred), len(pred)) if len(pred) > 1 else [0]
        values.append(np.mean([100 * np.mean(pred[m][images] == y_true[images]) for m in models]))
    return np.percentile(values, [2.5, 97.5])


def test_accuracy_interval_agrees_with_an_independent_bootstrap():
    rng = np.random.default_rng(5)
    n, classes = 90, 4
    y = rng.integers(0, classes, n)
    pred = np.where(rng.random((3, n)) < 0.8, y, rng.integers(0, classes, (3, n)))
    groups = [f"L{i // 2}" for i in range(n)]            # two images per lesion
    ours = iv.classification_intervals(y, pred, classes, groups)[METRIC_ACCURACY]
    lo, hi = _numpy_bootstrap(y, pred, groups)
    # Two bootstraps with different draws: their ends differ by Monte Carlo error only (~0.5 point);
    # the small-M spread of ours widens its model part by sqrt(3/2) over the plain draw
    assert abs(ours.low - lo) < 2.5 and abs(ours.high - hi) < 2.5, (ours, lo, hi)
    assert ours.low < 100 * np.mean(pred == y[None]) < ours.high


def test_resample_formula_is_the_point_formula():
    """The resample path (weighted confusions) on the unweighted data gives classification_metrics."""
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    p[:3] = 4                                              # a class predicted but maybe never true
    onehot = iv._onehot_cells(y, p[None], 5)
    values = iv._confusion_stat(onehot, np.ones((1, 40)), 5)[0, 0]
    expected = classification_metrics(y, p, [f"c{i}" for i in range(5)])
    assert np.allclose(values, [expected[k] for k in CLASSIFY_METRICS])


def test_groups_are_drawn_together():
    """One lesion, many images: the unit count, not the image count, sets the interval's width."""
    scores = np.tile(np.array([100.0] * 10 + [0.0] * 10), (1, 1))
    as_images = iv.mean_intervals(scores, [""] * 20)[0]
    as_two_lesions = iv.mean_intervals(scores, ["A"] * 10 + ["B"] * 10)[0]
    assert as_two_lesions.high - as_two_lesions.low > as_images.high - as_images.low
    assert (as_two_lesions.low, as_two_lesions.high) == (0.0, 100.0)


def test_same_inputs_same_interval():
    rng = np.random.default_rng(0)
    s = rng.random((2, 30)) * 100
    assert iv.mean_intervals(s, [""] * 30) == iv.mean_intervals(s, [""] * 30)


@pytest.mark.parametrize("low, high, expected", [(0.5, 3.0, iv.PASSES), (-3.0, -0.5, iv.FAILS),
                                                 (-1.0, 2.0, iv.INCONCLUSIVE)])
def test_verdict_above_zero(low, high, expected):
    assert iv.verdict(iv.Interval(low, high), lambda x: x > 0) == expected


@pytest.mark.parametrize("low, high, expected", [(9.0, 14.0, iv.PASSES), (0.0, 20.0, iv.INCONCLUSIVE),
                                                 (-5.0, 9.0, iv.INCONCLUSIVE), (16.0, 30.0, iv.FAILS),
                                                 (-9.0, 2.0, iv.FAILS)])
def test_verdict_in_a_range(low, high, expected):
    """[0, 20] straddles [8, 15] on both sides: both ends fail the test, yet it is inconclusive."""
    assert iv.verdict(iv.Interval(low, high), lambda x: 8 <= x <= 15) == expected


def test_no_interval_from_one_test_image_or_no_model():
    [one] = iv.mean_intervals(np.array([[90.0]]), [""])
    assert not one.ok and "1 test unit" in one.reason and one.text().startswith("no interval (")
    ivs = iv.classification_intervals([0], [[0]], 3, [""])
    assert all(not v.ok for v in ivs.values())
    assert iv.interval_metrics("", ivs) == {}
    assert iv.interval_tags("ham_", ivs) == {f"skindualgen.no_interval/ham_{k}": ivs[k].reason for k in CLASSIFY_METRICS}
    two = iv.classification_intervals([0, 1], [[0, 1]], 2, ["", ""])
    assert iv.interval_tags("", two) == {} and len(iv.interval_metrics("", two)) == 2 * len(CLASSIFY_METRICS)
    [none] = iv.mean_intervals(np.zeros((0, 5)), [""] * 5)
    assert not none.ok and "no model" in none.reason


def test_needed_units_scale_with_the_square_of_the_half_width():
    assert iv.needed_units(iv.Interval(-4.0, 8.0), 100, 3.0) == 400      # half-width 6 -> 3: 4x the units
    assert iv.needed_units(iv.Interval(None, None, "x"), 100, 3.0) is None


def test_intervals_stay_inside_the_metric_range():
    """Two fold models at 100 % and 96 %: the small-M weights extrapolate past 100 on some resamples; the
    interval is clipped to the metric's range, not reported as 102 %."""
    y = np.zeros(50, int)
    pred = np.zeros((2, 50), int)
    pred[1, :2] = 1
    acc = iv.classification_intervals(y, pred, 2, [""] * 50)[METRIC_ACCURACY]
    assert acc.high == 100.0 and 80.0 < acc.low < 98.0
    [dice] = iv.mean_intervals(np.array([[100.0] * 20, [90.0] * 20]), [""] * 20, bounds=(0.0, 100.0))
    assert dice.high == 100.0
    [unclipped] = iv.mean_intervals(np.array([[100.0] * 20, [90.0] * 20]), [""] * 20)
    assert unclipped.high > 100.0                     # what the clip prevents
