"""MLflow tracking: store, experiment, the tags every run carries, params, and run reuse.

- Store: `MLFLOW_TRACKING_URI` if set, else `sqlite:///<cwd>/mlflow.db` (MLflow 3 dropped the file
  store); artifacts then go to `./mlruns/`.
- Experiment: `--experiment` / `MLFLOW_EXPERIMENT_NAME`, else "skindualgen".
- Tags on every run: `skindualgen.stage`, `skindualgen.dataset_digest`, `skindualgen.code_version`
  (git commit, "+dirty" when the work tree has uncommitted changes to tracked files),
  `skindualgen.lib.<name>` for the libraries that shape results.
- Params: the stage's whole config dataclass, as strings.
Inside `mlflow run`, MLFLOW_RUN_ID is set and `stage_run` resumes that run instead of making one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Any, Iterator

import mlflow
import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from harness.config import EMPTY_WORDS, shown
from harness.errors import ConfigError, Stopped, TrackingLost, one_line
from harness.schema import (
    METRIC_PEAK_GPU_GIB, METRIC_PEAK_RSS_GIB, TAG_CODE, TAG_DIGEST, TAG_HOST, TAG_LIB_PREFIX, TAG_MLFLOW_EXPERIMENT_KIND,
    TAG_MLFLOW_NOTE, TAG_MLFLOW_PARENT_RUN, TAG_PID, TAG_PROFILE, TAG_PROFILE_RULE, TAG_STAGE, TAG_THREADS,
)
from harness.stages import STAGES

DEFAULT_EXPERIMENT = "skindualgen"
TRACKED_LIBRARIES = (
    "torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "mlflow", "timm",
    "segmentation-models-pytorch", "torch-fidelity", "lpips", "pytorch-msssim", "MedPy",
    "optuna", "albumentations", "numpy", "scikit-learn",
)


EXPERIMENT_KIND = {TAG_MLFLOW_EXPERIMENT_KIND: "custom_model_development"}   # the UI's model-training view
EXPERIMENT_DESCRIPTION = (
    "SkinDualGen reproduction: Stable Diffusion 2 fine-tuned with LoRA to generate a skin-lesion image and its "
    "mask from one prompt; the synthetic pairs augment real data for classifiers and segmenters (paper "
    "Tables 1-3). Filter one step with `tags.skindualgen.stage = '<stage>'`; a `main` run's children are "
    "nested under it; the `report` run holds the tables.")
STAGE_DESCRIPTIONS = {name: stage.description for name, stage in STAGES.items()}   # harness/stages.py


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def without_password(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) \
        if parts.password else uri


# the first look at a tracking store: a short timeout and one retry, so a wrong URI fails in seconds
# (MLflow's defaults, 7 retries with backoff and a 120 s timeout, took 249 s), while the stage's own
# requests keep MLflow's retries (they carry a training over a server restart)
STORE_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """os.environ with `values` inside the block (None: the variable removed), as before after it."""
    def put(pairs):
        for k, v in pairs.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    saved = {k: os.environ.get(k) for k in values}
    put(values)
    try:
        yield
    finally:
        put(saved)


def short_retries() -> contextlib.AbstractContextManager:
    """MLflow's HTTP requests inside the block use STORE_CHECK_ENV's retries and timeout."""
    return environment(STORE_CHECK_ENV)


@functools.lru_cache(maxsize=None)
def check_store(uri: str) -> None:
    """Raise ConfigError, one line naming the store (without its password), when the tracking store at
    `uri` cannot be read: unreachable, not an MLflow server, a corrupt sqlite file, a missing DB driver.
    Checked once per process and URI."""
    try:
        with short_retries():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:            # whatever the store's library raises: requests, sqlalchemy, an import
        raise ConfigError(f"tracking store {without_password(uri)} cannot be used: {one_line(e)}") from None


def setup(experiment: str | None = None, create: bool = True) -> str:
    """Point MLflow at the store and experiment; return the experiment name. With create=False (stages
    that only read an experiment: report, register) a name that does not exist is an error, not a new
    empty experiment.

    Order: the argument, $MLFLOW_EXPERIMENT_NAME, the experiment of $MLFLOW_EXPERIMENT_ID (what
    `mlflow run` sets for its child process), "skindualgen"."""
    mlflow.set_tracking_uri(tracking_uri())
    check_store(tracking_uri())
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        exp = mlflow.get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"])
        name = exp.name if exp is not None else None
    name = name or DEFAULT_EXPERIMENT
    if not create and mlflow.get_experiment_by_name(name) is None:
        names = sorted(e.name for e in mlflow.search_experiments())[:10]
        raise ConfigError(f"experiment {name!r} does not exist in {without_password(tracking_uri())} (experiments there: "
                          f"{', '.join(names) or 'none'}); nothing to read")
    if not os.environ.get("MLFLOW_RUN_ID"):
        exp = mlflow.set_experiment(name)
        describe_experiment(exp)
    return name


def describe_experiment(exp) -> None:
    """Open the experiment in the UI's model-training view, with a description (only what is missing).

    Workers that start on a new experiment at once (two `tune`s, `main --max-parallel`) all find a tag
    missing and all add it; a SQL store refuses every insert but the first (unique key), and for them
    the tag is there: only a refusal that leaves the tag missing is an error."""
    client = mlflow.tracking.MlflowClient()
    wanted = {**EXPERIMENT_KIND, TAG_MLFLOW_NOTE: EXPERIMENT_DESCRIPTION}
    for key, value in wanted.items():
        if key in (exp.tags or {}):
            continue
        try:
            client.set_experiment_tag(exp.experiment_id, key, value)
        except mlflow.exceptions.MlflowException:
            if key not in client.get_experiment(exp.experiment_id).tags:
                raise


def log_input(dataset, context: str) -> None:
    """mlflow.log_input for runs that log the same dataset at once (children of `main --max-parallel`):
    a SQL store keeps a dataset once per experiment (unique name and digest), so of two first inserts
    one is refused (BAD_REQUEST); on its second try that run finds the dataset and links to it."""
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "BAD_REQUEST":
            raise
        mlflow.log_input(dataset, context=context)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Git commit of the harness source, with "+dirty" if tracked files have uncommitted changes."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from harness import __version__
        return f"v{__version__}-nogit"
    return sha + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def config_params(config: Any) -> dict[str, str]:
    """A config dataclass (or dict) as MLflow params: flat, every value a string, no blank (`shown`)."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: shown(k, v) for k, v in items.items()}


def run_tags(stage: str, dataset_digest: str | None = None) -> dict[str, str]:
    import torch                        # every stage has it imported by now; the thread count changes the numbers
    tags = {TAG_STAGE: stage, TAG_CODE: code_version(), TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
            TAG_THREADS: str(torch.get_num_threads())}
    if dataset_digest:
        tags[TAG_DIGEST] = dataset_digest
    tags.update({TAG_LIB_PREFIX + k: v for k, v in library_versions().items()})
    return tags


# ------------------------------------------------------------------------------------------------
# Runs of a killed stage
# ------------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this host. A zombie counts as gone: a killed stage whose parent
    died too is reparented to PID 1, and where PID 1 does not reap (some containers) it stays a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:          # another user's process: it exists
        return True


def reap_killed_runs(experiment: str, log=None) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose process (tags skindualgen.host/pid, set by
    every stage) is gone from this host, and every RUNNING child of such a run. Returns their ids.
    Every stage does this as it starts (stage_run), so a run whose process died without a word (kill -9,
    power loss) does not stay RUNNING for ever; a live process's run, or another host's, is never touched."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    running = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 output_format="list")
    host = socket.gethostname()

    def dead(run) -> bool:
        tags = run.data.tags
        pid = tags.get(TAG_PID, "")
        return tags.get(TAG_HOST) == host and pid.isdigit() and not _alive(int(pid))

    gone = {r.info.run_id for r in running if dead(r)}
    gone |= {r.info.run_id for r in running if r.data.tags.get(TAG_MLFLOW_PARENT_RUN) in gone
             and not r.data.tags.get(TAG_PID)}
    client = MlflowClient()
    # read again now that the process is known to be gone: it may have ended its run FINISHED between
    # the search and the check (a stage ends its run before its process exits), which must stand
    gone = {run_id for run_id in gone if client.get_run(run_id).info.status == "RUNNING"}
    for run_id in sorted(gone):
        client.set_terminated(run_id, "KILLED")
        (log or _stderr)(f"run {run_id} was left RUNNING by a process that is gone: marked KILLED")
    return sorted(gone)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def stage_run(stage: str, config: Any, dataset_digest: str | None = None, experiment: str | None = None,
              run_name: str | None = None, nested: bool = False,
              extra_tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, resume) the run of one stage, with tags and whole config as params.

    An exception inside the block ends the run FAILED (mlflow's context manager does this) and
    re-raises, so a crash never leaves a FINISHED run behind.
    """
    name = setup(experiment)
    if not nested:
        reap_killed_runs(name)
    interval = system_metrics_interval()
    if interval > 0:
        mlflow.set_system_metrics_sampling_interval(interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    with stop_signals_raise(), \
            mlflow.start_run(run_name=run_name or stage, nested=nested, log_system_metrics=interval > 0) as run:
        try:
            description = {TAG_MLFLOW_NOTE: STAGE_DESCRIPTIONS[stage]} if stage in STAGE_DESCRIPTIONS else {}
            chosen = getattr(config, "profile_choice", None)      # config.with_profile: which profile, and why
            profile = {TAG_PROFILE: chosen[0], TAG_PROFILE_RULE: chosen[1]} if chosen else {}
            mlflow.set_tags({**run_tags(stage, dataset_digest), **description, **profile, **(extra_tags or {})})
            log_config(run.info.run_id, config_params(config))
            yield run
            mlflow.log_metrics(peak_memory())
        except (KeyboardInterrupt, Stopped):
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))     # not FAILED: it was stopped
            raise
        except TrackingLost:          # one short try to say FAILED (end_run lets go of the run even when
            with short_retries(), contextlib.suppress(Exception):    # it cannot); else the next stage reaps it
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While a stage runs, SIGTERM and SIGHUP raise Stopped (SIGINT already raises KeyboardInterrupt), so
    its run ends KILLED instead of staying RUNNING; the handlers before are put back after. Only the
    main thread can set handlers: elsewhere (a stage run in a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


SYSTEM_METRICS_ENV = "SKINDUALGEN_SYSTEM_METRICS_SECONDS"
SYSTEM_METRICS_SECONDS = 10.0          # the default sampling interval; `main --profile demo` sets 2 s


def system_metrics_interval() -> float:
    """Seconds between samples of MLflow's system metrics (CPU, memory, disk, network; GPU utilisation
    and memory through nvidia-ml-py when a GPU is present) on every stage run: $SKINDUALGEN_SYSTEM_METRICS_SECONDS,
    else 10; 0 turns them off."""
    raw = os.environ.get(SYSTEM_METRICS_ENV, "")
    try:
        value = float(raw) if raw else SYSTEM_METRICS_SECONDS
    except ValueError:
        raise ConfigError(f"${SYSTEM_METRICS_ENV} must be a number of seconds (0 = off), got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"${SYSTEM_METRICS_ENV} must be >= 0 (0 = off), got {raw!r}")
    return value


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory so far (GiB), and CUDA's peak allocation where torch has
    used CUDA. Read by the resource module, so a stage run in a process of its own logs its own peak."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux, bytes on macOS
    out = {METRIC_PEAK_RSS_GIB: kib / (2**30 if sys.platform == "darwin" else 2**20)}
    torch = sys.modules.get("torch")                 # never imported here: tracking stays torch-free
    if torch is not None and torch.cuda.is_initialized():
        out[METRIC_PEAK_GPU_GIB] = torch.cuda.max_memory_allocated() / 2**30
    return out


RESOLVED_PREFIX = "resolved."


def log_config(run_id: str, params: dict[str, str]) -> None:
    """Log the config as params. Under `mlflow run` the run already holds the entry point's raw -P
    values (e.g. resolution='' meaning "the profile's value"); MLflow forbids changing a param, so a
    key whose resolved value differs is logged as `resolved.<key>` beside the raw one."""
    existing = mlflow.get_run(run_id).data.params
    out = {}
    for key, value in params.items():
        if key in existing and existing[key] != value:
            out[RESOLVED_PREFIX + key] = value
        elif key not in existing:
            out[key] = value
    for i in range(0, len(out), 100):
        mlflow.log_params(dict(list(out.items())[i:i + 100]))


def effective_params(run: mlflow.entities.Run) -> dict[str, str]:
    """A run's config as the stage resolved it (`resolved.<key>` wins over the raw key), an option left
    empty as "" again (its param shows a word, `shown`)."""
    params = dict(run.data.params)
    for key in [k for k in params if k.startswith(RESOLVED_PREFIX)]:
        params[key[len(RESOLVED_PREFIX):]] = params.pop(key)
    return {k: "" if v in EMPTY_WORDS else v for k, v in params.items()}


def find_reusable_run(stage: str, params: dict[str, str], experiment: str | None = None,
                      code: str | None = None) -> mlflow.entities.Run | None:
    """Newest FINISHED run of `stage` whose params equal `params` (compared as strings) and whose
    code version equals `code` (default: this checkout's). None when there is none."""
    exp = mlflow.get_experiment_by_name(setup(experiment))
    if exp is None:
        return None
    code = code or code_version()
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=(f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{TAG_CODE}` = '{code}' "
                       f"and attributes.status = '{RunStatus.to_string(RunStatus.FINISHED)}'"),
        order_by=["attributes.start_time DESC"], output_format="list")
    wanted = {k: "" if str(v) in EMPTY_WORDS else str(v) for k, v in params.items()}   # as effective_params reads
    for run in runs:
        params = effective_params(run)
        if all(params.get(k) == v for k, v in wanted.items()):
            return run
    return None
