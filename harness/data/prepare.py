"""`prepare`: validate a dataset, fix a seeded stratified split, write the manifest, log it to MLflow.

Later stages call `load_prepared` with the same arguments: given a prepared manifest it trusts the
file hashes stored there (no re-hashing); given a raw folder it validates and splits the same way,
so both paths give the same split and the same dataset digest.
"""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from harness.files import user_file_mode
from harness import tracking
from harness.config import DemoDataConfig, PrepareConfig
from harness.data.layouts import load_dataset
from harness.data.records import DataError, Dataset
from harness.data.splits import dataset_digest, train_test_split
from harness.data.validate import validate
from harness.schema import STAGE_PREPARE, TAG_CLASSES, TAG_DIGEST, TAG_LAYOUT

MANIFEST_FIELDS = ("id", "image", "mask", "label", "description", "split", "group",
                   "image_sha256", "mask_sha256")


@dataclass
class Prepared:
    dataset: Dataset                          # every sample has split "train" or "test"
    digest: str                               # the dataset digest used everywhere else
    file_sha256: dict[str, tuple[str, str]]   # id -> (image sha256, mask sha256)
    name: str

    def rows(self, relative_to: Path | None = None) -> list[dict[str, str]]:
        def rel(p):
            if p is None:
                return ""
            return os.path.relpath(p, relative_to) if relative_to else str(p)
        return [{"id": s.id, "image": rel(s.image), "mask": rel(s.mask), "label": s.label,
                 "description": s.description, "split": s.split, "group": s.group,
                 "image_sha256": self.file_sha256[s.id][0], "mask_sha256": self.file_sha256[s.id][1]}
                for s in sorted(self.dataset.samples, key=lambda s: s.id)]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """"" -> the embedded demo dataset (generated on first use, deterministic); else the path."""
    if not data_dir:
        from harness.data.demo import make_demo_dataset
        demo = DemoDataConfig()
        return make_demo_dataset(demo.output_dir, seed=demo.seed, extra_test=demo.extra_test)
    return Path(data_dir).expanduser().resolve()


def dataset_name(data_dir: str | os.PathLike | None) -> str:
    if not data_dir:
        return "demo"
    p = Path(data_dir).expanduser().resolve()
    return (p.parent.name if p.is_file() else p.name) or "dataset"


def load_prepared(data_dir: str | os.PathLike | None = "", layout: str = "auto",
                  test_fraction: float = PrepareConfig.test_fraction, seed: int = PrepareConfig.seed,
                  progress: bool = True) -> Prepared:
    path = resolve_data_dir(data_dir)
    dataset = load_dataset(path, layout)
    shas = dataset.extra.get("file_sha256")
    if not shas:
        shas = {k: (v.image_sha256, v.mask_sha256) for k, v in validate(dataset, progress=progress).items()}
    dataset = train_test_split(dataset, test_fraction, seed)
    return Prepared(dataset=dataset, digest=dataset_digest(dataset, shas), file_sha256=shas,
                    name=dataset_name(data_dir))


def write_manifest(prepared: Prepared, path: Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename. Paths relative to the CSV."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(prepared.rows(relative_to=path.parent))
        os.chmod(tmp, user_file_mode())          # mkstemp makes 0600: the team shares the manifest
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def log_dataset_input(prepared: Prepared, context: str, source: str | None = None) -> None:
    """Log the dataset as an MLflow dataset input whose digest is our dataset digest."""
    import pandas as pd
    df = pd.DataFrame(prepared.rows())
    ds = mlflow.data.from_pandas(df, source=source or str(prepared.dataset.root), name=prepared.name,
                                 targets="label", digest=prepared.digest)
    tracking.log_input(ds, context=context)


def class_count_metrics(dataset: Dataset) -> dict[str, float]:
    metrics = {"n_samples": len(dataset), "n_classes": len(dataset.classes)}
    for split in ("train", "test"):
        part = dataset.split(split)
        metrics[f"n_{split}"] = len(part)
        metrics.update({f"{split}_count/{k}": v for k, v in part.class_counts().items()})
    metrics.update({f"class_count/{k}": v for k, v in dataset.class_counts().items()})
    return metrics


def prepare(cfg: PrepareConfig, experiment: str | None = None, progress: bool = True) -> tuple[Prepared, Path]:
    """Validate + split + manifest + MLflow run. On bad input: DataError, no manifest, run FAILED."""
    with tracking.stage_run(STAGE_PREPARE, cfg, experiment=experiment):
        prepared = load_prepared(cfg.data_dir, cfg.layout, cfg.test_fraction, cfg.seed, progress=progress)
        manifest = write_manifest(prepared, Path(cfg.output_dir) / prepared.name / "manifest.csv")
        mlflow.set_tag(TAG_DIGEST, prepared.digest)
        mlflow.set_tags({TAG_LAYOUT: prepared.dataset.layout,
                         TAG_CLASSES: ",".join(prepared.dataset.classes)})
        log_dataset_input(prepared, context="prepare", source=str(manifest))
        mlflow.log_metrics(class_count_metrics(prepared.dataset))
        mlflow.log_artifact(str(manifest))
    return prepared, manifest


__all__ = ["Prepared", "prepare", "load_prepared", "write_manifest", "resolve_data_dir",
           "log_dataset_input", "class_count_metrics", "DataError"]
