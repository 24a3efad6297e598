"""The embedded demo dataset: layout, masks, determinism, learnability, reuse and refusal; and the
domain-shifted HAM10000-layout set."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.demo import DEMO_CLASSES, HAM_DEMO_CLASSES, HAM_SHIFT, DemoDataError, make_demo_dataset
from harness.data.layouts import HAM_DX, load_dataset

PHRASE = "a dermoscopic lesion photo of {} for skin cancer diagnosis, "


def _pairs(root: Path):
    """(class name, id, image path, mask path) for every image in the dataset."""
    for image in sorted((root / "images").glob("*/*.png")):
        yield image.parent.name, image.stem, image, root / "masks" / image.parent.name / image.name


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "default", seed=0)


def test_class_names_and_default_counts():
    assert set(DEMO_CLASSES) == {"melanocytic nevus", "melanoma", "benign keratosis", "basal cell carcinoma",
                                 "actinic keratosis", "vascular lesion", "dermatofibroma"}
    assert max(DEMO_CLASSES, key=DEMO_CLASSES.get) == "melanocytic nevus"
    assert min(DEMO_CLASSES.values()) >= 11


def test_counts_per_class_and_total(default_set):
    counts: dict[str, int] = {}
    for label, _, _, _ in _pairs(default_set):
        counts[label] = counts.get(label, 0) + 1
    assert counts == DEMO_CLASSES
    assert sum(counts.values()) == sum(DEMO_CLASSES.values())
    assert sorted(p.name for p in (default_set / "masks").iterdir()) == sorted(DEMO_CLASSES)


def test_per_class_and_sizes(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=3, per_class=2, min_size=40, max_size=50)
    pairs = list(_pairs(root))
    assert len(pairs) == 2 * len(DEMO_CLASSES)
    assert {label for label, *_ in pairs} == set(DEMO_CLASSES)
    for _, _, image, _ in pairs:
        w, h = Image.open(image).size
        assert 40 <= w <= 50 and 40 <= h <= 50


def test_images_rgb_masks_binary_same_size(default_set):
    sides = set()
    for _, _, image_path, mask_path in _pairs(default_set):
        image, mask = Image.open(image_path), Image.open(mask_path)
        assert image.mode == "RGB" and mask.mode == "L"
        assert image.size == mask.size
        assert 64 <= min(image.size) and max(image.size) <= 128
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values == {0, 255}, (mask_path, values)   # binary, and neither empty nor full
        sides.add(image.size)
    assert len(sides) > 10                               # sizes really vary


def test_ids_unique_and_descriptions(default_set):
    ids = [sample_id for _, sample_id, _, _ in _pairs(default_set)]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("DEMO_") for i in ids)
    descriptions = json.loads((default_set / "descriptions.json").read_text())
    assert set(descriptions) == set(ids)
    for label, sample_id, _, _ in _pairs(default_set):
        text = descriptions[sample_id]
        assert text.startswith(PHRASE.format(label)), text
        assert len(text) > len(PHRASE.format(label)) + 10          # some attribute words follow
    assert len(set(descriptions.values())) > 20                    # not one text per class


def test_deterministic_and_seed_dependent(tmp_path):
    a = _all_files(make_demo_dataset(tmp_path / "a", seed=7, per_class=2))
    b = _all_files(make_demo_dataset(tmp_path / "b", seed=7, per_class=2))
    c = _all_files(make_demo_dataset(tmp_path / "c", seed=8, per_class=2))
    assert a == b
    # another seed: same ids, every image different
    images_a = {Path(k).stem: v for k, v in a.items() if k.startswith("images/")}
    images_c = {Path(k).stem: v for k, v in c.items() if k.startswith("images/")}
    assert len(images_a) == 2 * len(DEMO_CLASSES) and images_a.keys() == images_c.keys()
    assert all(images_a[k] != images_c[k] for k in images_a)
    # no temp folders left next to the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_mask_covers_the_lesion(default_set):
    """Colour distance from the skin colour: far higher inside the mask than on visible skin, and
    thresholding it recovers the mask closely (a mask shifted, grown or shrunk by 2-3 px scores
    a mean Dice of about 0.83-0.86 here, the true one about 0.95)."""
    ratios, dices = [], []
    for _, _, image_path, mask_path in _pairs(default_set):
        image = np.asarray(Image.open(image_path), np.float32)
        mask = np.asarray(Image.open(mask_path)) > 0
        s = image.shape[0]
        yy, xx = np.mgrid[0:s, 0:s] + 0.5
        visible = np.hypot(yy - s / 2, xx - s / 2) < 0.45 * s      # inside the dermoscope circle
        skin = visible & ~mask
        distance = np.linalg.norm(image - np.median(image[skin], axis=0), axis=-1)
        ratios.append(distance[mask].mean() / max(distance[skin].mean(), 1.0))
        lesion_like = visible & (distance > 30)
        dices.append(2 * (lesion_like & mask).sum() / (lesion_like.sum() + mask.sum()))
    assert np.mean(ratios) > 8.0 and np.min(ratios) > 2.0, (np.mean(ratios), np.min(ratios))
    assert np.mean(dices) > 0.9, np.mean(dices)


def _features(image_path: Path, mask_path: Path) -> np.ndarray:
    """Simple hand features of the masked lesion: colour mean/spread, size, border irregularity."""
    image = np.asarray(Image.open(image_path), np.float32) / 255.0
    mask = np.asarray(Image.open(mask_path)) > 0
    lesion = image[mask]
    area = mask.mean()
    edge = mask ^ (np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    compactness = edge.sum() ** 2 / mask.sum()
    return np.concatenate([lesion.mean(0), lesion.std(0), np.percentile(lesion, [10, 90], axis=0).ravel(),
                           [area, compactness]])


def test_classes_are_learnable(default_set):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pairs = list(_pairs(default_set))
    x = np.stack([_features(image, mask) for _, _, image, mask in pairs])
    y = np.array([label for label, *_ in pairs])
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    accuracy = (model.predict(x_test) == y_test).mean()
    majority = max(DEMO_CLASSES.values()) / sum(DEMO_CLASSES.values())
    assert accuracy > 0.8 and accuracy > majority + 0.3, (accuracy, majority)


def test_reuses_an_identical_build(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=1, per_class=1)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_demo_dataset(tmp_path / "d", seed=1, per_class=1) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    info = json.loads((root / "demo.json").read_text())
    assert info["params"]["seed"] == 1 and info["params"]["per_class"] == 1


def test_builds_into_an_empty_existing_folder(tmp_path):
    (tmp_path / "d").mkdir()
    root = make_demo_dataset(tmp_path / "d", seed=1, per_class=1)
    assert len(list(_pairs(root))) == len(DEMO_CLASSES)


def test_refuses_a_folder_holding_something_else(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(DemoDataError, match="mine"):
        make_demo_dataset(user, per_class=1)
    assert (user / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]   # no temp folder left behind


def test_refuses_other_parameters_or_modified_files(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=1, per_class=1)
    with pytest.raises(DemoDataError, match=str(root)):
        make_demo_dataset(root, seed=2, per_class=1)
    first_image = next(_pairs(root))[2]
    first_image.write_bytes(first_image.read_bytes() + b"x")
    with pytest.raises(DemoDataError):
        make_demo_dataset(root, seed=1, per_class=1)
    assert first_image.read_bytes().endswith(b"x")                  # left as the user made it


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "x", min_size=100, max_size=50)
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "x", per_class=-1)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# layout="ham10000": the domain-shifted external set
# --------------------------------------------------------------------------------------------

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


@pytest.fixture(scope="module")
def ham_set(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo-ham") / "default", seed=0, layout="ham10000")


def _metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ham_build_loads_as_ham10000_with_the_class_counts(ham_set):
    dataset = load_dataset(ham_set)                     # auto-detect
    assert dataset.layout == "ham10000"
    assert Counter(s.label for s in dataset.samples) == HAM_DEMO_CLASSES
    assert 60 <= len(dataset) <= 80 and min(HAM_DEMO_CLASSES.values()) >= 5
    assert max(HAM_DEMO_CLASSES, key=HAM_DEMO_CLASSES.get) == "melanocytic nevus"
    assert sorted(p.name for p in ham_set.iterdir()) == [
        "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_metadata.csv",
        "HAM10000_segmentations_lesion_tschandl", "demo.json"]
    parts = [sorted(p.name for p in (ham_set / f"HAM10000_images_part_{k}").iterdir()) for k in (1, 2)]
    assert abs(len(parts[0]) - len(parts[1])) <= 1 and len(parts[0]) + len(parts[1]) == len(dataset)
    for name in parts[0] + parts[1]:
        assert re.fullmatch(r"ISIC_\d{7}\.jpg", name), name
    for s in dataset.samples:
        assert s.mask.name == f"{s.id}_segmentation.png"
        assert Image.open(s.image).format == "JPEG"
    info = json.loads((ham_set / "demo.json").read_text())
    assert info["layout"] == info["params"]["layout"] == "ham10000"
    assert info["counts"] == HAM_DEMO_CLASSES


def test_ham_per_class(tmp_path):
    root = make_demo_dataset(tmp_path / "h", seed=2, per_class=3, min_size=40, max_size=48, layout="ham10000")
    dataset = load_dataset(root, "ham10000")
    assert Counter(s.label for s in dataset.samples) == {name: 3 for name in HAM_DEMO_CLASSES}
    for label in HAM_DEMO_CLASSES:                      # >= 2 lesions each, for the grouped split
        assert len({s.group for s in dataset.samples if s.label == label}) >= 2
    for s in dataset.samples:
        w, h = Image.open(s.image).size
        assert w == h and 40 <= w <= 48


def test_ham_metadata_columns_and_values(ham_set):
    with open(ham_set / "HAM10000_metadata.csv", newline="") as f:
        assert f.readline().strip() == ",".join(HAM_COLUMNS)
    rows = _metadata(ham_set)
    assert {r["dx"] for r in rows} == set(HAM_DX)
    for r in rows:
        assert re.fullmatch(r"HAM_\d{7}", r["lesion_id"]) and re.fullmatch(r"ISIC_\d{7}", r["image_id"])
        assert r["dx_type"] in ("histo", "follow_up", "consensus", "confocal")
        assert 0 < float(r["age"]) < 100 and float(r["age"]) % 5 == 0
        assert r["sex"] in ("male", "female") and r["localization"] and r["dataset"]
    assert all(r["dx_type"] == "histo" for r in rows if r["dx"] == "mel")
    by_lesion: dict[str, set] = {}
    for r in rows:                                       # one patient, one lesion: same metadata
        by_lesion.setdefault(r["lesion_id"], set()).add(tuple(r[c] for c in HAM_COLUMNS if c != "image_id"))
    assert all(len(v) == 1 for v in by_lesion.values())
    assert len({r["age"] for r in rows}) > 3 and len({r["localization"] for r in rows}) > 3


def test_ham_repeated_views_and_the_split_keeps_a_lesion_on_one_side(ham_set):
    from harness.data.prepare import load_prepared
    dataset = load_prepared(str(ham_set), progress=False).dataset
    groups: dict[str, list] = {}
    for s in dataset.samples:
        groups.setdefault(s.group, []).append(s)
    sizes = Counter(len(v) for v in groups.values())
    assert set(sizes) == {1, 2, 3} and sizes[2] + sizes[3] >= 10, sizes
    for members in groups.values():
        assert len({s.split for s in members}) == 1          # a lesion never straddles the split
        assert len({s.label for s in members}) == 1
    for label in HAM_DEMO_CLASSES:
        assert {s.split for s in dataset.samples if s.label == label} == {"train", "test"}
    # the views of one lesion: same size, similar mask area, yet different pictures
    for members in (v for v in groups.values() if len(v) > 1):
        images = [np.asarray(Image.open(s.image), np.float32) for s in members]
        areas = [(np.asarray(Image.open(s.mask)) > 0).mean() for s in members]
        assert len({im.shape for im in images}) == 1
        assert max(areas) / min(areas) < 1.1, areas
        assert np.abs(images[0] - images[1]).mean() > 2.0


def _dice_near_the_mask(image: np.ndarray, mask: np.ndarray, band: int = 6) -> float:
    """Threshold the colour distance from the skin just around the mask (robust to the shifted
    set's illumination ramp and vignetting), within `band` px of it, and compare with the mask."""
    from scipy.ndimage import binary_dilation
    near = binary_dilation(mask, iterations=band)
    skin = np.median(image[near & ~mask], axis=0)
    lesion_like = near & (np.linalg.norm(image - skin, axis=-1) > 30)
    return 2 * (lesion_like & mask).sum() / (lesion_like.sum() + mask.sum())


def _scaled(mask: np.ndarray, factor: float) -> np.ndarray:
    """The mask scaled about its centroid (nearest neighbour)."""
    n = mask.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    cy, cx = np.argwhere(mask).mean(0)
    sy = np.clip(np.rint(cy + (yy - cy) / factor), 0, n - 1).astype(int)
    sx = np.clip(np.rint(cx + (xx - cx) / factor), 0, n - 1).astype(int)
    return mask[sy, sx]


def test_ham_masks_binary_same_size_and_follow_the_lesion(ham_set):
    """The true masks fit the drawn lesions better than the same masks scaled by 0.85 or 1.15 or
    moved by 3 px (measured mean Dice: true 0.85, the best wrong one 0.76)."""
    scores: dict[str, list] = {"true": [], "x0.85": [], "x1.15": [], "moved": []}
    for s in load_dataset(ham_set).samples:
        image, mask_img = Image.open(s.image), Image.open(s.mask)
        assert image.mode == "RGB" and mask_img.mode == "L" and image.size == mask_img.size
        assert set(np.unique(np.asarray(mask_img)).tolist()) == {0, 255}, s.mask
        image, mask = np.asarray(image, np.float32), np.asarray(mask_img) > 0
        scores["true"].append(_dice_near_the_mask(image, mask))
        scores["x0.85"].append(_dice_near_the_mask(image, _scaled(mask, 0.85)))
        scores["x1.15"].append(_dice_near_the_mask(image, _scaled(mask, 1.15)))
        scores["moved"].append(_dice_near_the_mask(image, np.roll(mask, 3, axis=1)))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    assert means["true"] > 0.8, means
    assert all(means["true"] > v + 0.05 for k, v in means.items() if k != "true"), means


def test_ham_deterministic_and_seed_dependent(tmp_path):
    kw = dict(per_class=2, min_size=32, max_size=40, layout="ham10000")
    a = _all_files(make_demo_dataset(tmp_path / "a", seed=7, **kw))
    b = _all_files(make_demo_dataset(tmp_path / "b", seed=7, **kw))
    c = _all_files(make_demo_dataset(tmp_path / "c", seed=8, **kw))
    assert a == b
    images_a = {k: v for k, v in a.items() if k.endswith(".jpg")}
    images_c = {k: v for k, v in c.items() if k.endswith(".jpg")}
    assert len(images_a) == 2 * len(HAM_DEMO_CLASSES) == len(images_c)
    assert not set(images_a.values()) & set(images_c.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_ham_images_are_new_draws_not_the_training_images(tmp_path):
    """Same seed, same class: no HAM lesion reuses a training image's random stream. numpy ignores
    trailing zeros of a list seed, so the obvious default_rng([seed, 1, k]) would have given HAM
    lesion 0 the stream of training image 1."""
    from harness.data.demo import _ham_rng
    assert np.random.default_rng([0, 1, 0]).random() == np.random.default_rng([0, 1]).random()
    training = {tuple(np.random.default_rng([0, i]).random(4)) for i in range(200)}
    ham = {tuple(_ham_rng(0, kind, k).random(4)) for kind in (1, 2, 3, 4) for k in range(200)}
    assert len(ham) == 4 * 200 and not training & ham
    # and on disk: no HAM mask is any training mask of the same size, even allowing for the view turn
    isic = make_demo_dataset(tmp_path / "isic", seed=0, per_class=3, min_size=40, max_size=44)
    ham_root = make_demo_dataset(tmp_path / "ham", seed=0, per_class=3, min_size=40, max_size=44,
                                 layout="ham10000")
    train_masks = [np.asarray(Image.open(m)) > 0 for *_, m in _pairs(isic)]
    for s in load_dataset(ham_root).samples:
        mask = np.asarray(Image.open(s.mask)) > 0
        for other in train_masks:
            if other.shape == mask.shape:
                assert (other != mask).mean() > 0.01


def _skin_and_sizes(samples) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    """Per image: blue/red ratio and brightness of the skin near the centre; per class: sqrt(area)."""
    blue_red, brightness, sizes = [], [], {}
    for image_path, mask_path, label in samples:
        image = np.asarray(Image.open(image_path), np.float32)
        mask = np.asarray(Image.open(mask_path)) > 0
        n = image.shape[0]
        yy, xx = np.mgrid[0:n, 0:n] + 0.5
        skin = image[(np.hypot(yy - n / 2, xx - n / 2) < 0.3 * n) & ~mask]
        if len(skin) >= 20:
            blue_red.append(skin[:, 2].mean() / skin[:, 0].mean())
            brightness.append(skin.mean())
        sizes.setdefault(label, []).append(np.sqrt(mask.mean()))
    return np.array(blue_red), np.array(brightness), sizes


def test_ham_domain_shift_is_real_and_recorded(default_set, ham_set):
    """Measured at seed 0: skin blue/red 0.66 -> 0.53, skin brightness 176 -> 143, and the
    spread of lesion size within a class about 1.5x wider."""
    train_br, train_light, train_sizes = _skin_and_sizes((i, m, label) for label, _, i, m in _pairs(default_set))
    ham_br, ham_light, ham_sizes = _skin_and_sizes((s.image, s.mask, s.label) for s in load_dataset(ham_set).samples)
    assert ham_br.mean() < train_br.mean() - 0.08, (train_br.mean(), ham_br.mean())        # warmer
    assert ham_light.mean() < train_light.mean() - 15, (train_light.mean(), ham_light.mean())  # dimmer

    def spread(sizes):
        return np.mean([np.std(v) / np.mean(v) for v in sizes.values()])
    assert spread(ham_sizes) > 1.2 * spread(train_sizes), (spread(train_sizes), spread(ham_sizes))

    info = json.loads((ham_set / "demo.json").read_text())
    assert info["params"]["shift"] == {k: list(v) for k, v in HAM_SHIFT.items()}
    per_image = info["shift_per_image"]
    assert set(per_image) == {s.id for s in load_dataset(ham_set).samples}
    scales = [v["radius_scale"] for v in per_image.values()]
    assert min(scales) < 0.85 and max(scales) > 1.25
    for v in per_image.values():
        lo, hi = HAM_SHIFT["gain_b"]
        assert lo - 1e-4 <= v["gains"][2] <= hi + 1e-4
        assert abs(v["rotation_deg"]) <= 20.0 + 1e-4


def test_colour_classifier_drops_on_the_ham_set_but_not_to_chance(default_set, ham_set):
    """The logistic regression of test_classes_are_learnable, trained on the whole training demo
    set: in-domain 5-fold CV accuracy measured 1.00; on the HAM set 0.74 (balanced 0.61; majority
    class 0.46, balanced chance 0.14). Margins: a drop of >= 0.15, and >= majority + 0.1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pairs = list(_pairs(default_set))
    x = np.stack([_features(image, mask) for _, _, image, mask in pairs])
    y = np.array([label for label, *_ in pairs])
    ham = load_dataset(ham_set).samples
    x_ham = np.stack([_features(s.image, s.mask) for s in ham])
    y_ham = np.array([s.label for s in ham])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    in_domain = (cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)) == y).mean()
    predicted = model.fit(x, y).predict(x_ham)
    shifted = (predicted == y_ham).mean()
    majority = max(HAM_DEMO_CLASSES.values()) / sum(HAM_DEMO_CLASSES.values())
    assert in_domain > 0.95, in_domain
    assert shifted < in_domain - 0.15, (in_domain, shifted)
    assert shifted > majority + 0.1, (shifted, majority)
    assert balanced_accuracy_score(y_ham, predicted) > 0.35


def test_ham_reuse_and_refusal(tmp_path):
    kw = dict(seed=1, per_class=1, min_size=32, max_size=36)
    root = make_demo_dataset(tmp_path / "h", layout="ham10000", **kw)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_demo_dataset(tmp_path / "h", layout="ham10000", **kw) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(DemoDataError, match=str(root)):           # same arguments, other layout
        make_demo_dataset(root, **kw)
    with pytest.raises(DemoDataError, match=str(root)):
        make_demo_dataset(root, layout="ham10000", **{**kw, "seed": 2})
    isic = make_demo_dataset(tmp_path / "i", **kw)
    with pytest.raises(DemoDataError, match=str(isic)):           # a training build is not a HAM one
        make_demo_dataset(isic, layout="ham10000", **kw)
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text().replace("HAM_", "XAM_"))
    with pytest.raises(DemoDataError):
        make_demo_dataset(root, layout="ham10000", **kw)
    assert "XAM_" in metadata.read_text()                          # left as the user made it
    assert before.keys() == set(root.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "i"]


def test_isic_gpt_builds_from_before_the_layout_option_are_reused(tmp_path):
    """The isic-gpt params have no `layout` key, so a data/demo made by the previous version (whose
    demo.json had no `layout` at all) is still reused rather than refused."""
    root = make_demo_dataset(tmp_path / "d", seed=1, per_class=1)
    info = json.loads((root / "demo.json").read_text())
    assert "layout" not in info["params"] and info["layout"] == "isic-gpt"
    del info["layout"]
    (root / "demo.json").write_text(json.dumps(info))
    assert make_demo_dataset(root, seed=1, per_class=1) == root


def test_rejects_an_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="isic-gpt, ham10000"):
        make_demo_dataset(tmp_path / "x", layout="ham")
    assert not (tmp_path / "x").exists()


def test_cli_layout_ham10000(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from entrypoints.demo_data import demo_data
    from harness.config import DemoDataConfig
    from harness.data.demo import DEMO_LAYOUTS
    assert tuple(demo_data.params[0].type.choices) == DEMO_LAYOUTS

    runner = CliRunner()
    out = tmp_path / "given"
    result = runner.invoke(demo_data, ["--layout", "ham10000", "--output-dir", str(out), "--per-class", "2"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert Counter(s.label for s in load_dataset(out).samples) == {name: 2 for name in HAM_DEMO_CLASSES}
    assert load_dataset(out).layout == "ham10000"

    monkeypatch.chdir(tmp_path)                         # no --output-dir: the layout's default folder
    result = runner.invoke(demo_data, ["--layout", "ham10000", "--per-class", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / DemoDataConfig.ham_output_dir).layout == "ham10000"
    result = runner.invoke(demo_data, ["--per-class", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / DemoDataConfig.output_dir).layout == "isic-gpt"

    result = runner.invoke(demo_data, ["--layout", "ham", "--output-dir", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "ham10000" in result.output
    assert not (tmp_path / "bad").exists()


def test_extra_test_images_grow_the_test_split_and_leave_the_training_split_as_it_was(tmp_path):
    """The embedded demo (extra_test): the flat set's train split, byte for byte and in the same order,
    and a test split of its ~26 images plus DEMO_EXTRA_TEST new draws (~150 in all)."""
    from harness.data.demo import DEMO_EXTRA_TEST, DEMO_SPLIT
    from harness.data.prepare import load_prepared
    flat = load_prepared(str(make_demo_dataset(tmp_path / "flat")), "auto", *DEMO_SPLIT, progress=False)
    grown_dir = make_demo_dataset(tmp_path / "grown", extra_test=True)
    assert (grown_dir / "train" / "images").is_dir() and (grown_dir / "test" / "images").is_dir()
    grown = load_prepared(str(grown_dir), "auto", 0.5, 7, progress=False)      # a fixed split ignores both
    train_f, train_g = flat.dataset.split("train").samples, grown.dataset.split("train").samples
    assert [(s.id, s.label) for s in train_f] == [(s.id, s.label) for s in train_g]
    assert all(a.image.read_bytes() == b.image.read_bytes() and a.mask.read_bytes() == b.mask.read_bytes()
               for a, b in zip(train_f, train_g))
    test_f, test_g = flat.dataset.split("test"), grown.dataset.split("test")
    assert {s.id for s in test_f.samples} < {s.id for s in test_g.samples}
    assert len(test_g) == len(test_f) + sum(DEMO_EXTRA_TEST.values()) >= 150
    assert Counter(test_g.class_counts()) == Counter(test_f.class_counts()) + Counter(DEMO_EXTRA_TEST)
    new = sorted({s.id for s in test_g.samples} - {s.id for s in test_f.samples})
    assert new[0] == f"DEMO_{sum(DEMO_CLASSES.values()):07d}"                 # drawn after the others
    assert make_demo_dataset(tmp_path / "grown", extra_test=True) == grown_dir  # reused, same params
    with pytest.raises(DemoDataError, match="already exists"):
        make_demo_dataset(tmp_path / "grown")                                   # not the flat build
    with pytest.raises(ValueError, match="extra_test needs"):
        make_demo_dataset(tmp_path / "x", per_class=3, extra_test=True)
