"""The embedded demo dataset: layout, masks, determinism, learnability, reuse and refusal."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.demo import DEMO_CLASSES, DemoDataError, make_demo_dataset

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
