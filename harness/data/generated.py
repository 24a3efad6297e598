"""Where a generated set is: `runs:/<generate run id>` (the run's tag skindualgen.output_dir), a folder
or a manifest CSV. Needs MLflow only, so the stages that read a generated set (evaluate, classify,
segment) do not import the generation stack."""
from __future__ import annotations

from pathlib import Path

import mlflow

from harness import tracking
from harness.data.records import DataError
from harness.schema import TAG_OUTPUT_DIR, TAG_STAGE


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
