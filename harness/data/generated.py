"""Where a generated set is: `runs:/<generate run id>` (the run's tag skindualgen.output_dir), a folder
or a manifest CSV. Needs MLflow only, so the stages that read a generated set (evaluate, classify,
segment) do not import the generation stack."""
from __future__ import annotations

from pathlib import Path

import mlflow

from harness import tracking
from harness.data.records import DataError, Dataset
from harness.schema import TAG_OUTPUT_DIR, TAG_SET_DIGEST, TAG_STAGE

OWNER_FILE = "run.json"        # in a generated folder: {"run_id": the generate run that wrote it}


def generated_set(spec: str) -> tuple[Path, mlflow.entities.Run | None]:
    """A generated set given as `runs:/<generate run id>`, a folder or a manifest CSV -> (path, the
    generate run or None). Raise DataError saying what is wrong."""
    spec = spec.strip()
    if not spec.startswith("runs:/"):
        return Path(spec).expanduser().resolve(), None
    run_id = spec[len("runs:/"):].strip("/").split("/")[0]
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise DataError(f"{spec}: no such run in {tracking.tracking_uri()} ({e})") from e
    out = run.data.tags.get(TAG_OUTPUT_DIR)
    if not out:
        raise DataError(f"{spec}: run has no tag {TAG_OUTPUT_DIR} (stage {run.data.tags.get(TAG_STAGE, '?')!r},"
                        f" status {run.info.status}); give a FINISHED generate run or the generated folder")
    if not Path(out).exists():
        raise DataError(f"{out}: output folder of generate run {run_id} does not exist on this machine "
                        "(moved?); copy it here and pass its path")
    return Path(out), run


def read_set(path: Path, progress: bool = True) -> tuple[Dataset, str]:
    """A dataset folder / manifest (a generated folder: its manifest.csv) and its dataset digest (every
    file's sha256 with the ids, labels, splits and descriptions): the digest generate tags its set with."""
    from harness.data.layouts import load_dataset
    from harness.data.splits import dataset_digest
    from harness.data.validate import validate
    dataset = load_dataset(path, "manifest" if (path / "manifest.csv").is_file() else "auto")
    shas = dataset.extra.get("file_sha256")      # a manifest generate wrote holds them ({} for an empty set)
    if shas is None:
        shas = {k: (v.image_sha256, v.mask_sha256) for k, v in validate(dataset, progress=progress).items()}
    return dataset, dataset_digest(dataset, shas)


def check_same_set(run: mlflow.entities.Run, path: Path, digest: str) -> None:
    """Refuse a generate run's folder whose contents are no longer the set the run logged (its tag
    TAG_SET_DIGEST; runs from before the tag are not checked)."""
    logged = run.data.tags.get(TAG_SET_DIGEST)
    if logged and logged != digest:
        raise DataError(f"{path}: this is not the set generate run {run.info.run_id} wrote (dataset digest {digest} "
                        f"on disk, {logged} logged): it was changed or replaced since; generate it again or give "
                        "the folder itself")


def folder_owner(out: Path) -> str:
    """The generate run id a generated folder was written by ("" when it says none)."""
    import json
    try:
        return json.loads((out / OWNER_FILE).read_text()).get("run_id", "")
    except (OSError, ValueError):
        return ""


def check_output_folder(out: Path) -> None:
    """Before generating into `out`: refuse a folder holding the set of a FINISHED or RUNNING run (or a
    set whose run is unknown), so no run's logged set is replaced under it. A set of a FAILED or KILLED
    run is no one's result: it is replaced (generate says so)."""
    import sys
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / "manifest.csv").is_file():
        raise DataError(f"{out} exists and is not a generated set (no manifest.csv): not overwriting it")
    owner = folder_owner(out)
    status = ""
    if owner:
        try:
            status = mlflow.get_run(owner).info.status
        except mlflow.exceptions.MlflowException:
            status = "not in this tracking store"
    if status in ("FAILED", "KILLED"):
        print(f"generate: {out} holds the set of {status} run {owner}; replacing it", file=sys.stderr)
        return
    whose = f"generate run {owner} ({status})" if owner else "a generate run it does not name"
    raise DataError(f"--output-dir {out} already holds the generated set of {whose}: choose another folder "
                    "(default: outputs/generate/<run id>) or delete that one")
