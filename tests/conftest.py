"""Shared fixtures: a real sqlite MLflow store in a tmp dir, and small datasets on disk.

Environment is fixed before torch is imported: 1 OpenMP thread and passive waiting (2 spinning threads
on 2 shared cores were at times ~100x slower per op), and no hub access at all.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from threadpoolctl import threadpool_limits  # noqa: E402

# pytest imports numpy before this file (pyproject's filterwarnings names a pandas warning class), so
# OpenBLAS has already started one thread per core and ignores OMP_NUM_THREADS: apply it here too
# (FID's 2048x2048 eigvals took ~40 s with 2 threads on 2 busy cores, ~10 s with 1).
threadpool_limits(int(os.environ["OMP_NUM_THREADS"]), user_api="blas")

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

_counter = itertools.count()

# The test profile: the one table of small settings the tests run every stage with, by field name.
# `small(cfg_cls, **overrides)` applies the entries the config class has, then a test's own values
# (which so stand out). A field is in here when several tests shrank it by hand, at the value most of
# them used; a test that used another passes it as an override. A setting that would change tests that
# rely on the default (test_fraction: the downstream tests keep the paper's split) stays with the tests
# that set it. The mask warm-up runs 4 steps, not 400: no test here checks what it learns (the
# end-to-end test checks that it falls, at the demo's length). It is not a `--profile` of harness.config: PROFILES are what
# users run (demo, paper), per stage; these sizes only exercise code paths.
SMALL = {
    "resolution": 32,               # finetune, generate, tune
    "train_batch_size": 2, "max_train_steps": 2,   # finetune (`epochs` below does not count once steps are set)
    "validation_epochs": 0, "validation_steps": 2, "checkpointing_steps": 0,   # one validation grid, at the end
    "mask_warmup_steps": 4,         # finetune: the warm-up's code runs, briefly
    "per_class": 1, "num_inference_steps": 3,      # generate, tune (per_class)
    "lpips_pairs": 10, "lpips_size": 64, "msssim_size": 176,   # evaluate; msssim_size must stay > 160
    "image_size": 32, "epochs": 1, "folds": 2, "seeds": 1,     # classify, segment
    "batch_size": 8,                # classify, segment, evaluate; generate's and tune's default
}


def make_small(cfg_cls, **overrides):
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    return cfg_cls(**{**{k: v for k, v in SMALL.items() if k in names}, **overrides})


@pytest.fixture(scope="session")
def small():
    """`small(cfg_cls, **overrides)`: the config with the test profile (SMALL) applied, then overrides."""
    return make_small


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One sqlite store for the session (creating one costs seconds); tests use their own experiment."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def experiment(mlflow_store, monkeypatch):
    """A fresh experiment name in the session store; no leftover active run or MLFLOW_RUN_ID."""
    import mlflow
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(mlflow_store)
    while mlflow.active_run():
        mlflow.end_run()
    return f"test-{os.getpid()}-{next(_counter)}"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A randomly initialised tiny SD2-shaped base saved as a local diffusers folder (fast; it loads
    through the same `load_base` path as the shipped pre-trained one)."""
    from harness.dualgen.tiny import build_tiny_components, save_components
    return save_components(build_tiny_components(seed=0), tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The demo generator at 4 per class and 32-48 px."""
    from harness.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", seed=0, per_class=4, min_size=32, max_size=48)


def lesion_pair(rng: np.random.Generator, size: int, colour) -> tuple[Image.Image, Image.Image]:
    """A skin-coloured square with a coloured disc, and the disc's 0/255 mask."""
    yy, xx = np.mgrid[:size, :size]
    r = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (224, 180, 160)
    img[inside] = colour
    img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img), Image.fromarray((inside * 255).astype(np.uint8))


CLASS_COLOURS = {"melanoma": (40, 30, 40), "melanocytic nevus": (120, 80, 50), "vascular lesion": (170, 30, 60)}


@pytest.fixture
def isic_dir(tmp_path):
    """ISIC-GPT layout: 3 classes x 6 images, masks in all accepted places, both description forms."""
    root = tmp_path / "isic"
    rng = np.random.default_rng(1)
    desc = {}
    for ci, (label, colour) in enumerate(CLASS_COLOURS.items()):
        (root / "images" / label).mkdir(parents=True)
        for k in range(6):
            sid = f"ISIC_{ci}{k:05d}"
            img, mask = lesion_pair(rng, 48, colour)
            img.save(root / "images" / label / f"{sid}.jpg" if k % 2 else root / "images" / label / f"{sid}.png")
            where = [root / "masks" / label / f"{sid}.png", root / "masks" / f"{sid}.png",
                     root / "masks" / label / f"{sid}_segmentation.png"][k % 3]
            where.parent.mkdir(parents=True, exist_ok=True)
            mask.save(where)
            desc[sid] = (f"a dermoscopic lesion photo of {label} for skin cancer diagnosis, case {k}"
                         if k % 2 else {"description": f"a dermoscopic lesion photo of {label}, case {k}"})
    (root / "descriptions.json").write_text(json.dumps(desc))
    return root


@pytest.fixture
def ham_dir(tmp_path):
    """HAM10000 layout: metadata CSV, images split over part_1/part2 folders, nested mask folder;
    several images per lesion_id."""
    root = tmp_path / "ham"
    p1, p2 = root / "HAM10000_images_part_1", root / "ham10000_images_part2"
    masks = root / "HAM10000_segmentations_lesion_tschandl" / "HAM10000_segmentations_lesion_tschandl"
    for d in (p1, p2, masks):
        d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"]
    n = 0
    for dx, count in {"nv": 12, "mel": 8, "bkl": 6, "vasc": 4}.items():
        for k in range(count):
            lesion = f"HAM_{dx}{k // 2:04d}"          # two images per lesion
            sid = f"ISIC_{n:07d}"
            img, mask = lesion_pair(rng, 40, (60 + 10 * k, 40, 40))
            img.save((p1 if n % 2 else p2) / f"{sid}.jpg", quality=95)
            mask.save(masks / f"{sid}_segmentation.png")
            rows.append(f"{lesion},{sid},{dx},histo,50.0,male,back,vidir_modern")
            n += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def manifest_csv(tmp_path):
    """A manifest CSV with paths relative to it, pointing into a flat folder of files."""
    root = tmp_path / "odd"
    (root / "files").mkdir(parents=True)
    rng = np.random.default_rng(3)
    lines = ["image,mask,label,description,split"]
    for i in range(12):
        label = ["nevus", "melanoma"][i % 2]
        img, mask = lesion_pair(rng, 32, CLASS_COLOURS["melanoma"])
        img.save(root / "files" / f"x{i}.png")
        mask.save(root / "files" / f"x{i}_m.png")
        lines.append(f"files/x{i}.png,files/x{i}_m.png,{label},\"desc, {i}\",{'test' if i < 4 else 'train'}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end files first: with `-n 2 --dist loadfile` one worker starts the ~9-minute
    pipeline test at once while the other runs every other file, so the suite takes about as long
    as that one test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
