"""Which MLflow run fills which row of a table: read-only searches and the choice rule.

Choice rule (printed in every report, `CHOICE_RULE`): for each table row, the candidates are the
runs of the experiment with the row's stage and keys (evaluate: tag `comparison`; classify /
segment: params `model` and `train_set`, and for Table 3 a non-empty `eval_data`), restricted to
one dataset digest when the report is given one. Of these, the newest FINISHED run (latest start
time; ties: latest end time, then run id) fills every cell of the row. FAILED, KILLED and RUNNING
runs are ignored (and listed). A metric the chosen run lacks is a missing cell: it is never taken
from an older run, so one row never mixes runs.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Run

from harness import tracking
from harness.intervals import Interval
from harness.schema import (CI_HIGH_SUFFIX, CI_LOW_SUFFIX, TAG_DIGEST, TAG_MISSING_PREFIX, TAG_NO_INTERVAL_PREFIX, TAG_PREFIX,
                            TAG_STAGE)

FINISHED = "FINISHED"

CHOICE_RULE = (
    "each table row uses the newest FINISHED run (latest start time; ties: latest end time) among the runs "
    "of this experiment with the row's stage and keys (evaluate: tag `comparison`; classify/segment: params "
    "`model` and `train_set`, Table 3 also a non-empty `eval_data`){digest}; FAILED, KILLED and RUNNING "
    "runs are ignored; a metric that run lacks is shown as missing (—), never taken from another run "
    "and never as 0")


def newest_first(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.end_time or 0, r.info.run_id), reverse=True)


class RunIndex:
    """Every run of one experiment, by stage, fetched once per stage (read-only)."""

    def __init__(self, experiment_id: str, dataset_digest: str = ""):
        self.experiment_id = experiment_id
        self.dataset_digest = dataset_digest
        self._by_stage: dict[str, list[Run]] = {}
        self._by_id: dict[str, Run | None] = {}

    def stage(self, stage: str) -> list[Run]:
        """Runs of `stage` (tag skindualgen.stage), newest first, of the report's dataset digest if any."""
        if stage not in self._by_stage:
            flt = f"tags.`{TAG_STAGE}` = '{stage}'"
            if self.dataset_digest:
                flt += f" and tags.`{TAG_DIGEST}` = '{_quote(self.dataset_digest)}'"
            runs = mlflow.search_runs([self.experiment_id], filter_string=flt, output_format="list")
            self._by_stage[stage] = newest_first(runs)
            for r in runs:
                self._by_id[r.info.run_id] = r
        return self._by_stage[stage]

    def get(self, run_id: str) -> Run | None:
        """Any run by id (lineage lookups may leave the experiment); None when it does not exist."""
        if not run_id:
            return None
        if run_id not in self._by_id:
            try:
                self._by_id[run_id] = mlflow.get_run(run_id)
            except mlflow.exceptions.MlflowException:
                self._by_id[run_id] = None
        return self._by_id[run_id]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


@dataclass
class Choice:
    """The run chosen for one row (None: missing, `reason` says why) and the runs passed over."""
    run: Run | None
    reason: str = ""
    ignored: list[Run] = field(default_factory=list)     # matching runs that are not FINISHED
    n_candidates: int = 0


def choose(candidates: list[Run], what: str, none_reason: str = "") -> Choice:
    """Apply the choice rule to the runs matching one row (any order)."""
    runs = newest_first(candidates)
    finished = [r for r in runs if r.info.status == FINISHED]
    ignored = [r for r in runs if r.info.status != FINISHED]
    if finished:
        return Choice(finished[0], "", ignored, len(runs))
    if not runs:
        return Choice(None, none_reason or f"no {what} run", [], 0)
    by_status: dict[str, list[str]] = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r.info.run_id)
    parts = [f"run {status} ({', '.join(ids)})" if len(ids) == 1 else
             f"{len(ids)} runs {status} ({', '.join(ids)})" for status, ids in by_status.items()]
    return Choice(None, f"{what}: " + "; ".join(parts) + ", no FINISHED run", ignored, len(runs))


def metric_value(run: Run, key: str) -> tuple[float | None, str]:
    """(value, "") or (None, why it is missing)."""
    value = run.data.metrics.get(key)
    if value is None:
        why = run.data.tags.get(TAG_MISSING_PREFIX + key)        # the run said why it logged none
        return None, (f"run {run.info.run_id}: {why}" if why else f"metric `{key}` absent in run {run.info.run_id}")
    if not math.isfinite(value):
        return None, f"metric `{key}` is {value} in run {run.info.run_id}"
    return float(value), ""


NO_RUN_INTERVAL = "the run logged none"


def metric_interval(run: Run, key: str) -> Interval:
    """The 95 % interval a run logged for one metric (`<key>_ci_low`, `<key>_ci_high`), or why there is
    none: the run's tag `skindualgen.no_interval/<key>` when it logged one (e.g. one test image)."""
    m = run.data.metrics
    low, high = m.get(key + CI_LOW_SUFFIX), m.get(key + CI_HIGH_SUFFIX)
    if low is not None and high is not None:
        return Interval(float(low), float(high))
    return Interval(None, None, run.data.tags.get(TAG_NO_INTERVAL_PREFIX + key, NO_RUN_INTERVAL))


def param(run: Run, key: str) -> str:
    """A resolved param, else the tag `skindualgen.<key>` the stage also sets, else ""."""
    value = tracking.effective_params(run).get(key)
    if value is None:
        value = run.data.tags.get(TAG_PREFIX + key, "")
    return value


# ------------------------------------------------------------------------------------------------
# Links
# ------------------------------------------------------------------------------------------------

def strip_credentials(uri: str) -> str:
    """`https://user:secret@host/x` -> `https://host/x`; other URIs unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri


UI_URL_ENV = "MLFLOW_UI_URL"


def ui_base(tracking_uri: str, ui_url: str = "") -> str:
    """The MLflow UI base URL for links: `ui_url` (--ui-url), else the environment variable MLFLOW_UI_URL,
    else the tracking URI when it is http(s), else "" (no links)."""
    base = ui_url or os.environ.get(UI_URL_ENV, "") or (tracking_uri if re.match(r"^https?://", tracking_uri or "") else "")
    return strip_credentials(base).rstrip("/")


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """`<server>/#/experiments/<exp id>/runs/<run id>`, or "" when there is no UI server."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base and run_id else ""


__all__ = ["CHOICE_RULE", "UI_URL_ENV", "Choice", "RunIndex", "choose", "metric_interval", "metric_value", "newest_first",
           "param", "run_link", "strip_credentials", "ui_base"]
