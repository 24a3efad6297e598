"""Metrics of paper Sec. 4.1.3, in the units of Tables 2 and 3.

Classification (all in %, computed from the confusion matrix):
  accuracy     fraction of images predicted correctly. (The paper's Eq. 9 writes (TP+TN)/(all); its
               Table 2 has accuracy == sensitivity on a class-balanced test set and Table 3 has them
               differ on the imbalanced HAM10000, which is what the overall fraction correct gives.)
  sensitivity  macro recall: the mean over classes of TP / (TP + FN)
  precision    macro precision: the mean over classes of TP / (TP + FP)
  f1           macro F1: the mean over classes of 2PR / (P + R)
  Classes averaged over: those that occur in y_true or y_pred (scikit-learn's default); a 0/0 ratio
  counts as 0 (scikit-learn's zero_division=0). So `sklearn.metrics.precision_score(y_true, y_pred,
  average="macro", zero_division=0) * 100` gives the same number.
  Per class: `sensitivity/<class>` for every class with at least one true image.

Segmentation, per image, on binary masks (bool arrays of one shape):
  dice = 2|P ∩ G| / (|P| + |G|) · 100,  iou = |P ∩ G| / |P ∪ G| · 100
  asd  = ½ (mean_{p ∈ ∂P} d(p, ∂G) + mean_{g ∈ ∂G} d(g, ∂P))      (paper Eq. 12, on the boundaries)
  hd   = max(max_{p ∈ ∂P} d(p, ∂G), max_{g ∈ ∂G} d(g, ∂P))         (paper Eq. 13)
  in pixels; ∂X is X minus its erosion by the 4-neighbourhood cross (medpy's surface; a mask pixel on
  the image edge is a boundary pixel). asd = mean of medpy.metric.binary.asd in both directions
  (medpy's own `assd` pools the two lists instead of averaging the two means, which differs from
  Eq. 12 when the boundaries have different lengths); hd = medpy.metric.binary.hd.
  Empty masks (medpy raises on them), a rule that never drops an image:
    both empty          -> dice = iou = 100, asd = hd = 0          (a perfect "no lesion")
    exactly one empty   -> dice = iou = 0,   asd = hd = the image diagonal sqrt(H² + W²), larger than
                           any distance between two pixels of the image (the worst possible value)
  `summarize_segmentation` averages over all images and counts `n_empty_pred`, `n_empty_gt`.
"""
from __future__ import annotations

import math

import numpy as np

from harness.schema import (CLASSIFY_METRICS, METRIC_ACCURACY, METRIC_ASD, METRIC_DICE, METRIC_F1, METRIC_HD, METRIC_IOU,
                            METRIC_PRECISION, METRIC_SENSITIVITY, SEGMENT_METRICS)

# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------

def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """cm[i, j] = number of images of true class i predicted as class j."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.shape(num), dtype=np.float64), where=den > 0)


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, sensitivity, precision, f1 (macro, %) of confusion matrices (..., C, C) (counts or
    weights), one value per leading index; also "recall" (..., C) per class, as a fraction. The one
    formula of the module docstring, used for the point values and for every bootstrap resample."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    n_true, n_pred = cm.sum(axis=-1), cm.sum(axis=-2)
    recall, precision = _ratio(tp, n_true), _ratio(tp, n_pred)
    f1 = _ratio(2 * precision * recall, precision + recall)
    used = ((n_true > 0) | (n_pred > 0)).astype(np.float64)
    n_used = used.sum(axis=-1)
    return {METRIC_ACCURACY: 100.0 * tp.sum(axis=-1) / cm.sum(axis=(-2, -1)),
            METRIC_SENSITIVITY: 100.0 * (recall * used).sum(axis=-1) / n_used,
            METRIC_PRECISION: 100.0 * (precision * used).sum(axis=-1) / n_used,
            METRIC_F1: 100.0 * (f1 * used).sum(axis=-1) / n_used,
            "recall": recall, "n_true": n_true}


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    """accuracy, sensitivity, precision, f1 (macro, %) and sensitivity/<class>; see module docstring.
    y_true, y_pred: class indices into `classes`."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise ValueError("no images to score")
    m = confusion_metrics(confusion_matrix(y_true, y_pred, len(classes)))
    out = {k: float(m[k]) for k in CLASSIFY_METRICS}
    out.update({f"{METRIC_SENSITIVITY}/{c}": 100.0 * float(m["recall"][i])
                for i, c in enumerate(classes) if m["n_true"][i] > 0})
    return out


def mean_and_std(per_fold: list[dict[str, float]], std_keys=CLASSIFY_METRICS) -> dict[str, float]:
    """Mean over folds of every key present in all folds, plus `<key>_std` (population std, ddof=0)
    for the keys in `std_keys`."""
    keys = [k for k in per_fold[0] if all(k in m for m in per_fold)]
    out = {}
    for k in keys:
        values = np.array([m[k] for m in per_fold], dtype=np.float64)
        out[k] = float(values.mean())
        if k in std_keys:
            out[f"{k}_std"] = float(values.std())
    return out


def confusion_figure(cm: np.ndarray, classes: list[str], title: str):
    """A matplotlib figure of a confusion matrix (counts, rows = true class)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.7 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if top and cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(dice %, iou %); both masks empty -> (100, 100)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    inter = np.logical_and(pred, gt).sum()
    total = pred.sum() + gt.sum()
    if total == 0:
        return 100.0, 100.0
    return 200.0 * inter / total, 100.0 * inter / (total - inter)


def diagonal(shape) -> float:
    return math.hypot(*shape)


def surface_distances(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(asd, hd) in pixels; the empty-mask rule of the module docstring."""
    from medpy.metric.binary import asd, hd
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    empty_pred, empty_gt = not pred.any(), not gt.any()
    if empty_pred and empty_gt:
        return 0.0, 0.0
    if empty_pred or empty_gt:
        return diagonal(pred.shape), diagonal(pred.shape)
    return 0.5 * (float(asd(pred, gt)) + float(asd(gt, pred))), float(hd(pred, gt))


def segmentation_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """One image: dice, iou (%), asd, hd (px), empty_pred, empty_gt (0/1)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask {pred.shape} and ground truth {gt.shape} differ in shape")
    d, j = dice_iou(pred, gt)
    a, h = surface_distances(pred, gt)
    return {METRIC_DICE: d, METRIC_IOU: j, METRIC_ASD: a, METRIC_HD: h,
            "empty_pred": int(not pred.any()), "empty_gt": int(not gt.any())}


def summarize_segmentation(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean dice, iou, asd, hd over all images (none dropped), n_images, n_empty_pred, n_empty_gt."""
    if not rows:
        raise ValueError("no images to score")
    out = {k: float(np.mean([r[k] for r in rows])) for k in SEGMENT_METRICS}
    out.update({"n_images": len(rows), "n_empty_pred": sum(int(r["empty_pred"]) for r in rows),
                "n_empty_gt": sum(int(r["empty_gt"]) for r in rows)})
    return out
