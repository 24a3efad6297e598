"""How sure a claim's check is: the paired interval of a − b (a cell's own interval is the one its
run logged, read by `runs.metric_interval`).

A check a − b compares two runs scored on the same test images. Its interval is recomputed here from
the two runs' per-image artifacts (classify: `predictions/<set>.csv`, one row per fold model and
image; segment: `segmentation/<set>.csv`, one row per image), paired: one resample of the test
images serves both runs, each run's models are resampled on their own (`paired_*_intervals`). Its
point value is the difference of the two logged metrics, as before. Table 1's numbers (FID, ...) have
no per-image values: their difference gets the wider unpaired interval from the two runs' own.
"""
from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from harness.intervals import Interval, paired_classification_intervals, paired_mean_intervals
from harness.report.tables import Cell
from harness.schema import ARTIFACT_CLASSIFY_PREDICTIONS, ARTIFACT_SEGMENT_SCORES, CLASSIFY_METRICS, SEGMENT_METRICS

@dataclass
class PerImage:
    """One run's per-image results on one eval set, models x images, images in `ids` order."""
    ids: list[str]
    groups: list[str]
    classes: list[str]               # classify: the model's classes (prob_<class> columns); segment: []
    y_true: np.ndarray               # (N,) class index (classify)
    values: np.ndarray               # classify: (M, N) predicted class index; segment: (1, N, 4) SEGMENT_METRICS


def _eval_set(cell: Cell) -> str:
    return "ham" if cell.table == "table3" else "test"


def _read_rows(run_id: str, artifact: str) -> tuple[list[str], list[dict]]:
    with tempfile.TemporaryDirectory(prefix="skindualgen-evidence-") as tmp:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp))
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)


def _model_key(row: dict) -> tuple[int, int]:
    """A classify model is one (seed, fold); files from before --seeds have no seed column."""
    return int(row.get("seed") or 0), int(row["fold"])


def _classify_per_image(fields: list[str], rows: list[dict]) -> PerImage:
    classes = [f[len("prob_"):] for f in fields if f.startswith("prob_")]
    models = sorted({_model_key(r) for r in rows})
    first = {r["id"]: r for r in rows if _model_key(r) == models[0]}
    ids = list(first)
    pred = np.empty((len(models), len(ids)), dtype=np.int64)
    for m, key in enumerate(models):
        by_id = {r["id"]: r["predicted_label"] for r in rows if _model_key(r) == key}
        if set(by_id) != set(ids):
            raise ValueError(f"model (seed, fold) {key} scored other images than {models[0]}")
        pred[m] = [classes.index(by_id[i]) for i in ids]
    y_true = np.array([classes.index(first[i]["true_label"]) for i in ids])
    return PerImage(ids, [first[i].get("group", "") for i in ids], classes, y_true, pred)


def _segment_per_image(rows: list[dict]) -> PerImage:
    """(seed models, N, 4) scores; files from before --seeds have no seed column (one model)."""
    seeds = sorted({int(r.get("seed") or 0) for r in rows})
    by_seed = {s: {r["id"]: r for r in rows if int(r.get("seed") or 0) == s} for s in seeds}
    first = by_seed[seeds[0]]
    ids = list(first)
    if any(set(m) != set(ids) for m in by_seed.values()):
        raise ValueError("the seeds' models scored different images")
    scores = np.array([[[float(by_seed[s][i][k]) for k in SEGMENT_METRICS] for i in ids] for s in seeds])  # (M, N, 4)
    return PerImage(ids, [first[i].get("group", "") for i in ids], [], np.zeros(len(ids), np.int64), scores)


def unpaired_difference(a: Interval, b: Interval) -> Interval:
    """The interval of a − b from the two values' own intervals, [a.low − b.high, a.high − b.low], for
    numbers with no per-image values to pair (Table 1's FID: one number per evaluate run). Wider than a
    paired interval, so it decides less, never more."""
    if not (a.ok and b.ok):
        return Interval(None, None, "no interval for one of the two values: " + (a.reason or b.reason))
    return Interval(a.low - b.high, a.high - b.low)


class Evidence:
    """Per-image artifacts of the report's runs, downloaded once each, and the checks' paired intervals."""

    def __init__(self):
        self._cache: dict[tuple[str, str], PerImage | str] = {}

    def per_image(self, cell: Cell) -> PerImage | str:
        """The cell's run's per-image results on its eval set, or why they cannot be read."""
        classify = cell.section == "classification"
        artifact = (ARTIFACT_CLASSIFY_PREDICTIONS if classify else ARTIFACT_SEGMENT_SCORES).format(set=_eval_set(cell))
        key = (cell.run_id, artifact)
        if key not in self._cache:
            self._cache[key] = self._load(cell.run_id, artifact, classify)
        return self._cache[key]

    @staticmethod
    def _load(run_id: str, artifact: str, classify: bool) -> PerImage | str:
        try:
            fields, rows = _read_rows(run_id, artifact)
        except (OSError, mlflow.exceptions.MlflowException):
            return f"run {run_id[:8]} has no {artifact} artifact"
        if not rows:
            return f"run {run_id[:8]}'s {artifact} has no rows"
        try:
            return _classify_per_image(fields, rows) if classify else _segment_per_image(rows)
        except (KeyError, ValueError) as e:
            return f"run {run_id[:8]}'s {artifact} cannot be read ({e})"

    def paired(self, a: Cell, b: Cell) -> Interval:
        """The 95 % interval of a − b (same metric, same eval set), paired over the shared test images."""
        if a.section == b.section == "quality":
            return unpaired_difference(a.ci, b.ci)
        if a.section not in ("classification", "segmentation") or a.section != b.section:
            return Interval(None, None, "one number per run (no per-image values to resample)")
        pa, pb = self.per_image(a), self.per_image(b)
        for p in (pa, pb):
            if isinstance(p, str):
                return Interval(None, None, p)
        if set(pa.ids) != set(pb.ids):
            return Interval(None, None, f"the two runs scored different test images ({len(pa.ids)} and "
                                        f"{len(pb.ids)}, {len(set(pa.ids) & set(pb.ids))} shared)")
        order = [pb.ids.index(i) for i in pa.ids]                   # b's images in a's order
        if a.section == "segmentation":
            ivs = paired_mean_intervals(pa.values, pb.values[:, order], pa.groups)
            return dict(zip(SEGMENT_METRICS, ivs))[a.metric]
        if pa.classes != pb.classes:
            return Interval(None, None, f"the two runs have different classes ({pa.classes} vs {pb.classes})")
        ivs = paired_classification_intervals(pa.y_true, pa.values, pb.values[:, order], len(pa.classes), pa.groups)
        return ivs[a.metric] if a.metric in CLASSIFY_METRICS else Interval(None, None, f"no interval for {a.metric}")

    def n_units(self, cell: Cell) -> int | None:
        """How many test units (lesion groups) the cell's run was scored on, when its artifact is readable."""
        p = self.per_image(cell) if cell.run_id else "no run"
        return None if isinstance(p, str) else len({g or f"\0{i}" for i, g in enumerate(p.groups)})


__all__ = ["Evidence", "PerImage", "unpaired_difference"]
