"""Downstream metrics against independent computations: scikit-learn for the macro classification
metrics, hand-computed Dice/IoU, and a scipy.ndimage distance-transform (plus brute force) ASD/HD."""
import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.spatial.distance import cdist
from sklearn import metrics as skm

from harness.downstream.metrics import (
    classification_metrics,
    confusion_matrix,
    dice_iou,
    mean_and_std,
    segmentation_scores,
    summarize_segmentation,
    surface_distances,
)


# ------------------------------------------------------------------------------- classification
@pytest.mark.parametrize("seed", range(12))
def test_macro_metrics_equal_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    n = int(rng.integers(5, 60))
    y_true = rng.integers(0, n_classes, n)
    # predictions: partly right, partly random, sometimes a class that never occurs in y_true
    y_pred = np.where(rng.random(n) < 0.4, y_true, rng.integers(0, n_classes, n))
    classes = [f"c{i}" for i in range(n_classes)]
    got = classification_metrics(y_true, y_pred, classes)
    assert got["accuracy"] == pytest.approx(100 * skm.accuracy_score(y_true, y_pred))
    assert got["sensitivity"] == pytest.approx(100 * skm.recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert got["precision"] == pytest.approx(100 * skm.precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert got["f1"] == pytest.approx(100 * skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    present = sorted(set(y_true.tolist()))
    recalls = skm.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    for label, r in zip(present, recalls):
        assert got[f"sensitivity/c{label}"] == pytest.approx(100 * r)
    assert not any(f"sensitivity/c{i}" in got for i in range(n_classes) if i not in present)
    assert (confusion_matrix(y_true, y_pred, n_classes)
            == skm.confusion_matrix(y_true, y_pred, labels=range(n_classes))).all()


def test_macro_metrics_with_a_class_never_true_nor_predicted_and_one_only_predicted():
    classes = ["a", "b", "c", "d"]          # d never occurs; c only predicted
    y_true = [0, 0, 1, 1, 1]
    y_pred = [0, 2, 1, 1, 0]
    got = classification_metrics(y_true, y_pred, classes)
    # averaged over a, b, c (sklearn's default labels = union of y_true and y_pred)
    assert got["sensitivity"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0) / 3)
    assert got["precision"] == pytest.approx(100 * (1 / 2 + 1 + 0) / 3)
    assert got["accuracy"] == pytest.approx(60.0)
    assert {k for k in got if k.startswith("sensitivity/")} == {"sensitivity/a", "sensitivity/b"}


def test_mean_and_std_over_folds():
    folds = [{"accuracy": 50.0, "sensitivity/a": 10.0}, {"accuracy": 70.0, "sensitivity/a": 30.0}]
    out = mean_and_std(folds)
    assert out == {"accuracy": 60.0, "accuracy_std": 10.0, "sensitivity/a": 20.0}


# ------------------------------------------------------------------------------- Dice / IoU
def square(shape, top, left, side):
    m = np.zeros(shape, bool)
    m[top:top + side, left:left + side] = True
    return m


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_dice_iou_hand_computed():
    a = square((10, 10), 0, 0, 4)                    # 16 px
    b = np.zeros((10, 10), bool)
    b[2:6, 0:4] = True                               # 16 px, overlap rows 2-3: 8 px
    assert dice_iou(a, b) == pytest.approx((2 * 8 / 32 * 100, 8 / 24 * 100))
    assert dice_iou(a, a) == (100.0, 100.0)
    assert dice_iou(a, square((10, 10), 6, 6, 4)) == (0.0, 0.0)
    c = np.zeros((10, 10), bool)
    c[0, 0] = True                                    # 1 px inside a
    assert dice_iou(c, a) == pytest.approx((2 / 17 * 100, 1 / 16 * 100))


# ------------------------------------------------------------------------------- ASD / HD
def reference_distances(pred, gt):
    """Boundary = mask minus its erosion by the 4-neighbour cross (zero outside the image); directed
    distances by Euclidean distance transform, cross-checked by brute force."""
    cross = generate_binary_structure(2, 1)
    bp = pred & ~binary_erosion(pred, structure=cross, border_value=0)
    bg = gt & ~binary_erosion(gt, structure=cross, border_value=0)
    d_pg = distance_transform_edt(~bg)[bp]
    d_gp = distance_transform_edt(~bp)[bg]
    brute = cdist(np.argwhere(bp), np.argwhere(bg))
    assert np.allclose(np.sort(d_pg), np.sort(brute.min(axis=1)))
    assert np.allclose(np.sort(d_gp), np.sort(brute.min(axis=0)))
    return 0.5 * (d_pg.mean() + d_gp.mean()), max(d_pg.max(), d_gp.max())


SHAPES = {
    "same square": (square((40, 40), 10, 10, 12), square((40, 40), 10, 10, 12)),
    "square offset 3 px": (square((40, 40), 10, 10, 10), square((40, 40), 10, 13, 10)),
    "concentric squares": (square((40, 40), 5, 5, 20), square((40, 40), 10, 10, 10)),
    "discs r8 vs r5 offset": (disc((48, 48), 20, 20, 8), disc((48, 48), 24, 27, 5)),
    "disc vs square": (disc((48, 48), 24, 24, 10), square((48, 48), 14, 14, 21)),
    "disjoint discs": (disc((64, 64), 15, 15, 6), disc((64, 64), 45, 50, 9)),
    "touching the image edge": (square((32, 32), 0, 0, 12), disc((32, 32), 8, 8, 7)),
    "two blobs vs one": (disc((64, 64), 15, 15, 6) | disc((64, 64), 45, 45, 6), disc((64, 64), 15, 15, 7)),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_asd_hd_equal_distance_transform_reference(name):
    pred, gt = SHAPES[name]
    asd, hd = surface_distances(pred, gt)
    ref_asd, ref_hd = reference_distances(pred, gt)
    assert asd == pytest.approx(ref_asd)
    assert hd == pytest.approx(ref_hd)
    # symmetric, as Eq. 12 and 13 are
    assert surface_distances(gt, pred) == pytest.approx((asd, hd))


def test_asd_hd_hand_computed():
    assert surface_distances(*SHAPES["same square"]) == (0.0, 0.0)
    assert surface_distances(*SHAPES["square offset 3 px"])[1] == pytest.approx(3.0)
    # outer 20x20 corner (5,5) to the inner 10x10 corner (10,10): sqrt(50)
    assert surface_distances(*SHAPES["concentric squares"])[1] == pytest.approx(math.sqrt(50))


# ------------------------------------------------------------------------------- empty masks
def test_empty_mask_rule_never_raises():
    empty = np.zeros((30, 40), bool)
    lesion = square((30, 40), 5, 5, 8)
    both = segmentation_scores(empty, empty)
    assert both == {"dice": 100.0, "iou": 100.0, "asd": 0.0, "hd": 0.0, "empty_pred": 1, "empty_gt": 1}
    diag = math.hypot(30, 40)                 # 50: beyond any distance inside the image
    for pred, gt, flags in ((empty, lesion, (1, 0)), (lesion, empty, (0, 1))):
        s = segmentation_scores(pred, gt)
        assert (s["dice"], s["iou"], s["asd"], s["hd"]) == (0.0, 0.0, diag, diag)
        assert (s["empty_pred"], s["empty_gt"]) == flags
    assert diag > math.hypot(29, 39)


def test_summary_keeps_every_image_and_counts_empty_ones():
    empty = np.zeros((20, 20), bool)
    lesion = square((20, 20), 4, 4, 6)
    rows = [segmentation_scores(lesion, lesion), segmentation_scores(empty, lesion),
            segmentation_scores(empty, empty), segmentation_scores(lesion, empty)]
    out = summarize_segmentation(rows)
    diag = math.hypot(20, 20)
    assert out["n_images"] == 4 and out["n_empty_pred"] == 2 and out["n_empty_gt"] == 2
    assert out["dice"] == pytest.approx((100 + 0 + 100 + 0) / 4)
    assert out["hd"] == pytest.approx((0 + diag + 0 + diag) / 4)
    with pytest.raises(ValueError):
        segmentation_scores(lesion, np.zeros((10, 10), bool))
