"""95 % intervals of the tables' numbers and of their paired differences (beyond the paper).

A table cell is the mean over a run's models (its folds, and seeds) of a metric computed on the run's
test images. Both vary: another test sample would give other images, another training run other
models. The interval resamples both at once, with scipy.stats.bootstrap (percentile method, 2000
resamples, seeded so the same run gives the same interval):

    units   the test images, with replacement; images of one group (HAM10000's lesion_id: one lesion,
            several photos) are drawn together, so a resample never splits a lesion
    models  the run's models, with replacement, independently of the units

and computes the cell's value on each resample exactly as the point value is computed: per model on
the drawn images (an image drawn twice counts twice), then the mean over the drawn models. A mean
over M models drawn with replacement varies (M − 1)/M times as much as a mean of M new models does
(M = 2 folds: half); each draw's model weights are therefore spread about 1/M by √(M/(M − 1)), which
makes the bootstrap variance of the model mean the unbiased s²/M (the usual small-sample adjustment
of a bootstrapped mean). With M = 2 the model part stays coarse (three values):
`tests/test_intervals.py` measures coverage at M = 2 and 6. For a
paired difference a − b of two runs scored on the same test images, one draw of units serves both
runs (the noise the images share cancels), and each run's models are drawn on their own.

    scores = per_model_image_scores(...)                       # (models, images) or confusion inputs
    iv = mean_interval(scores, groups)                         # Interval(low, high, reason="")
    d = paired_mean_interval(scores_a, scores_b, groups)        # the interval of mean(a) − mean(b)
    verdict(d, lambda x: x > 0)                                 # passes / fails / inconclusive

Classification metrics (accuracy, macro sensitivity, precision, F1) come from each resample's
weighted confusion matrices through `metrics.confusion_metrics`, the function the point values use.
No interval ("no interval (<reason>)") when there is fewer than two test units, no model, or a
metric is undefined: never a made-up one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import bootstrap

from harness.downstream.metrics import confusion_metrics
from harness.schema import (CI_HIGH_SUFFIX, CI_LOW_SUFFIX, CLASSIFY_METRICS, PARAM_CI_LEVEL, PARAM_CI_METHOD,
                            PARAM_CI_RESAMPLES, TAG_NO_INTERVAL_PREFIX)

CI_METHOD = "bootstrap-percentile: test units (lesion groups) x models, two-way"
CI_LEVEL = 0.95
CI_RESAMPLES = 2000
CI_SEED = 0
PERCENT = (0.0, 100.0)        # the range of accuracy, sensitivity, precision, F1, Dice, IoU (in %)
BATCH = 250                  # resamples per vectorised call (memory: BATCH x images x models floats)

PASSES, FAILS, INCONCLUSIVE = "passes", "fails", "inconclusive"


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    reason: str = ""          # why there is no interval ("" when there is one)

    @property
    def ok(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> float | None:
        return None if not self.ok else (self.high - self.low) / 2

    def text(self) -> str:
        return f"[{self.low:.1f}, {self.high:.1f}]" if self.ok else f"no interval ({self.reason})"


def ci_params() -> dict[str, object]:
    """The params every run with intervals logs."""
    return {PARAM_CI_METHOD: CI_METHOD, PARAM_CI_LEVEL: CI_LEVEL, PARAM_CI_RESAMPLES: CI_RESAMPLES}


def interval_metrics(prefix: str, intervals: dict[str, Interval]) -> dict[str, float]:
    """{prefix + metric + "_ci_low": low, ... "_ci_high": high} for the metrics that have an interval."""
    out = {}
    for key, iv in intervals.items():
        if iv.ok:
            out[prefix + key + CI_LOW_SUFFIX] = iv.low
            out[prefix + key + CI_HIGH_SUFFIX] = iv.high
    return out


def interval_tags(prefix: str, intervals: dict[str, Interval]) -> dict[str, str]:
    """{TAG_NO_INTERVAL_PREFIX + prefix + metric: reason} for the metrics without an interval."""
    return {TAG_NO_INTERVAL_PREFIX + prefix + key: iv.reason for key, iv in intervals.items() if not iv.ok}


# ------------------------------------------------------------------------------------------------
# Units (groups of images) and resample weights
# ------------------------------------------------------------------------------------------------

def unit_index(groups: Sequence[str]) -> np.ndarray:
    """(images,) index of each image's unit: images sharing a non-empty group are one unit, an image
    with group "" is a unit of its own."""
    ids: dict[str, int] = {}
    out = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        out[i] = ids.setdefault(g if g else f"\0{i}", len(ids))
    return out


def _counts(drawn: np.ndarray, n: int) -> np.ndarray:
    """(B, k) drawn indices in [0, n) -> (B, n) how often each was drawn."""
    drawn = np.atleast_2d(drawn)
    counts = np.zeros((drawn.shape[0], n))
    np.add.at(counts, (np.arange(drawn.shape[0])[:, None], drawn), 1.0)
    return counts


def _run(statistic, samples: tuple[np.ndarray, ...], seed: int, resamples: int, level: float, bias: bool = False):
    """(low, high) per metric; with `bias`, both ends moved by the bootstrap's estimate of the statistic's
    bias (mean of the resampled values − the value on the data itself)."""
    res = bootstrap(samples, statistic, vectorized=True, paired=False, method="percentile", axis=-1,
                    n_resamples=resamples, batch=BATCH, confidence_level=level, rng=np.random.default_rng(seed))
    low, high = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    if bias:
        shift = np.atleast_2d(res.bootstrap_distribution).mean(axis=-1) - np.ravel(statistic(*samples))
        low, high = low - shift, high - shift
    return low, high


def _why_not(n_units: int, n_models: Sequence[int]) -> str:
    if n_units < 2:
        return f"{n_units} test unit(s): at least 2 are needed"
    if min(n_models) < 1:
        return "no model scores"
    return ""


def _model_draws(n: int) -> list[np.ndarray]:
    """A run with one model is not resampled (scipy needs two observations): its draw is always model 0."""
    return [np.arange(n)] if n > 1 else []


# ------------------------------------------------------------------------------------------------
# Mean-type metrics: a per-image score averaged over images (accuracy as 0/100 per image, Dice, ...)
# ------------------------------------------------------------------------------------------------

def _weighted_means(scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """scores (M, N, K), image weights (B, N) -> (B, M, K) each model's weighted mean per metric."""
    return np.einsum("bn,mnk->bmk", w, scores) / w.sum(axis=1)[:, None, None]


def _model_mean(values: np.ndarray, model_counts: np.ndarray | None) -> np.ndarray:
    """(B, M, K) per-model values -> (B, K) their mean over the drawn models (all, once, if not drawn)."""
    if model_counts is None:
        return values.mean(axis=1)
    m = model_counts.shape[1]
    weights = model_counts / model_counts.sum(axis=1, keepdims=True)                  # (B, M), rows sum to 1
    weights = 1.0 / m + np.sqrt(m / (m - 1)) * (weights - 1.0 / m)                     # small-M correction
    return np.einsum("bm,bmk->bk", weights, values)


def _run_scores(scores: np.ndarray, w: np.ndarray, drawn_models: np.ndarray | None) -> np.ndarray:
    counts = None if drawn_models is None else _counts(drawn_models, scores.shape[0])
    return _model_mean(_weighted_means(scores, w), counts)


def _as_3d(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return scores[..., None] if scores.ndim == 2 else scores


def mean_intervals(scores, groups: Sequence[str], level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                   seed: int = CI_SEED, bounds: Bounds | Sequence[Bounds] | None = None) -> list[Interval]:
    """scores (models, images, metrics) or (models, images): one Interval per metric of the mean over
    models of each model's mean score over the images, clipped to `bounds` (the metrics' ranges)."""
    scores = _as_3d(scores)
    unit_of = unit_index(groups)
    n_units = int(unit_of.max()) + 1 if len(unit_of) else 0
    why = _why_not(n_units, [scores.shape[0]])
    if why:
        return [Interval(None, None, why)] * scores.shape[2]

    def statistic(units, *models, axis=-1):
        w = _counts(units, n_units)[:, unit_of]
        return _run_scores(scores, w, models[0] if models else None).T             # (K, B)

    samples = (np.arange(n_units), *_model_draws(scores.shape[0]))
    return _intervals(*_run(statistic, samples, seed, resamples, level), bounds)


def paired_mean_intervals(scores_a, scores_b, groups: Sequence[str], level: float = CI_LEVEL,
                          resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> list[Interval]:
    """The interval of mean(a) − mean(b) per metric, a and b scored on the same images (same order)."""
    a, b = _as_3d(scores_a), _as_3d(scores_b)
    unit_of = unit_index(groups)
    n_units = int(unit_of.max()) + 1 if len(unit_of) else 0
    why = _why_not(n_units, [a.shape[0], b.shape[0]])
    if why:
        return [Interval(None, None, why)] * a.shape[2]
    draws_a, draws_b = _model_draws(a.shape[0]), _model_draws(b.shape[0])

    def statistic(units, *models, axis=-1):
        w = _counts(units, n_units)[:, unit_of]
        ma = models[0] if draws_a else None
        mb = models[len(draws_a)] if draws_b else None
        return (_run_scores(a, w, ma) - _run_scores(b, w, mb)).T

    return _intervals(*_run(statistic, (np.arange(n_units), *draws_a, *draws_b), seed, resamples, level))


Bounds = tuple[float, float]


def _intervals(low: np.ndarray, high: np.ndarray, bounds: Bounds | Sequence[Bounds] | None = None) -> list[Interval]:
    """Intervals from their ends, clipped to the metric's range (`bounds`: one (min, max) for all, or one
    per metric): the small-M model weights extrapolate, so a resample of two 99 % models can exceed 100."""
    per_metric = [bounds] * len(low) if bounds is None or np.ndim(bounds) == 1 else list(bounds)
    out = []
    for lo, hi, b in zip(low, high, per_metric):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            out.append(Interval(None, None, "the metric is undefined on resamples"))
            continue
        if b is not None:
            lo, hi = np.clip(lo, *b), np.clip(hi, *b)
        out.append(Interval(float(lo), float(hi)))
    return out


# ------------------------------------------------------------------------------------------------
# Two sets of items resampled independently (evaluate: the real and the generated images)
# ------------------------------------------------------------------------------------------------

def two_sample_intervals(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], n_a: int, n_b: int,
                         n_metrics: int, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                         seed: int = CI_SEED, bias_corrected: bool = False,
                         bounds: Bounds | Sequence[Bounds] | None = None) -> list[Interval]:
    """statistic(wa (B, n_a), wb (B, n_b)) -> (K, B), the metrics of B resamples given how often each
    item of set a and of set b was drawn; one Interval per metric. Both sets are resampled on their own
    (e.g. FID: the real images and the generated ones). bias_corrected: the percentile interval moved
    by the bootstrap bias estimate (for a statistic that resampling itself shifts, like FID)."""
    why = _why_not(min(n_a, n_b), [1])
    if why:
        return [Interval(None, None, why)] * n_metrics

    def stat(a, b, axis=-1):
        return statistic(_counts(a, n_a), _counts(b, n_b))

    return _intervals(*_run(stat, (np.arange(n_a), np.arange(n_b)), seed, resamples, level, bias_corrected), bounds)


# ------------------------------------------------------------------------------------------------
# Classification: macro metrics from weighted confusion matrices
# ------------------------------------------------------------------------------------------------

def _onehot_cells(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, N) predictions -> (M, N, C*C) one-hot of each image's confusion cell (true, predicted)."""
    cells = y_true[None, :] * n_classes + y_pred
    return np.eye(n_classes * n_classes)[cells]


def _confusion_stat(onehot: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, N, C²) one-hots, (B, N) weights -> (B, M, K) confusion_metrics of each weighted confusion."""
    cm = np.einsum("bn,mnk->bmk", w, onehot).reshape(w.shape[0], onehot.shape[0], n_classes, n_classes)
    m = confusion_metrics(cm)
    return np.stack([m[k] for k in CLASSIFY_METRICS], axis=-1)


def classification_intervals(y_true, y_pred, n_classes: int, groups: Sequence[str], level: float = CI_LEVEL,
                             resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict[str, Interval]:
    """y_true (N,), y_pred (models, N) class indices -> {metric: Interval} for CLASSIFY_METRICS."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.atleast_2d(np.asarray(y_pred, np.int64))
    unit_of = unit_index(groups)
    n_units = int(unit_of.max()) + 1 if len(unit_of) else 0
    why = _why_not(n_units, [y_pred.shape[0]])
    if why:
        return {k: Interval(None, None, why) for k in CLASSIFY_METRICS}
    onehot = _onehot_cells(y_true, y_pred, n_classes)

    def statistic(units, *models, axis=-1):
        w = _counts(units, n_units)[:, unit_of]
        counts = _counts(models[0], y_pred.shape[0]) if models else None
        return _model_mean(_confusion_stat(onehot, w, n_classes), counts).T

    samples = (np.arange(n_units), *_model_draws(y_pred.shape[0]))
    return dict(zip(CLASSIFY_METRICS, _intervals(*_run(statistic, samples, seed, resamples, level), PERCENT)))


def paired_classification_intervals(y_true, pred_a, pred_b, n_classes: int, groups: Sequence[str],
                                    level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                                    seed: int = CI_SEED) -> dict[str, Interval]:
    """The interval of metric(a) − metric(b) per classification metric, both on the same images."""
    y_true = np.asarray(y_true, np.int64)
    pa, pb = np.atleast_2d(np.asarray(pred_a, np.int64)), np.atleast_2d(np.asarray(pred_b, np.int64))
    unit_of = unit_index(groups)
    n_units = int(unit_of.max()) + 1 if len(unit_of) else 0
    why = _why_not(n_units, [pa.shape[0], pb.shape[0]])
    if why:
        return {k: Interval(None, None, why) for k in CLASSIFY_METRICS}
    oa, ob = _onehot_cells(y_true, pa, n_classes), _onehot_cells(y_true, pb, n_classes)
    draws_a, draws_b = _model_draws(pa.shape[0]), _model_draws(pb.shape[0])

    def statistic(units, *models, axis=-1):
        w = _counts(units, n_units)[:, unit_of]
        ca = _counts(models[0], pa.shape[0]) if draws_a else None
        cb = _counts(models[len(draws_a)], pb.shape[0]) if draws_b else None
        return (_model_mean(_confusion_stat(oa, w, n_classes), ca)
                - _model_mean(_confusion_stat(ob, w, n_classes), cb)).T

    samples = (np.arange(n_units), *draws_a, *draws_b)
    return dict(zip(CLASSIFY_METRICS, _intervals(*_run(statistic, samples, seed, resamples, level))))


# ------------------------------------------------------------------------------------------------
# Three-way verdicts
# ------------------------------------------------------------------------------------------------

def verdict(iv: Interval, passes: Callable[[float], bool]) -> str | None:
    """passes when both ends satisfy the test, fails when neither does, inconclusive otherwise; None
    without an interval. For the tests used here (> 0, < 0, in [lo, hi]) the set that passes is an
    interval, so its two ends decide the whole interval."""
    if not iv.ok:
        return None
    lo, hi = passes(iv.low), passes(iv.high)
    if lo and hi:
        return PASSES
    if not lo and not hi and not _straddles(iv, passes):
        return FAILS
    return INCONCLUSIVE


def _straddles(iv: Interval, passes: Callable[[float], bool], n: int = 64) -> bool:
    """Whether some point strictly inside the interval passes (both ends failing: e.g. [0, 20] vs
    "in [8, 15]")."""
    return any(passes(x) for x in np.linspace(iv.low, iv.high, n)[1:-1])


def needed_units(iv: Interval, n_units: int, effect: float) -> int | None:
    """Test units needed for the interval's half-width to fall to |effect| (half-width ∝ 1/√n)."""
    if not iv.ok or effect == 0 or iv.half_width == 0:
        return None
    return int(np.ceil(n_units * (iv.half_width / abs(effect)) ** 2))


__all__ = ["CI_LEVEL", "CI_METHOD", "CI_RESAMPLES", "FAILS", "INCONCLUSIVE", "Interval", "PASSES", "ci_params",
           "classification_intervals", "interval_metrics", "interval_tags", "mean_intervals", "needed_units",
           "paired_classification_intervals", "paired_mean_intervals", "two_sample_intervals", "unit_index",
           "verdict"]
