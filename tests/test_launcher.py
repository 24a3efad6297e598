"""The two ways `main` starts a child (harness/launcher.py) make the same run: a fork of the warm server
and a stock `mlflow run` of `prepare` get the same params and MLflow project tags under the same parent,
and a forked child that is killed is a dead child whose run `main` fails by name."""
import os
import signal
import time

import mlflow
import pytest

from harness import launcher
from harness.errors import ConfigError
from harness.pipeline import PROJECT_DIR, Pipeline, PipelineConfig, Step, finish
from harness.schema import TAG_HOST, TAG_PID

# tags that differ between any two runs by construction
PER_RUN_TAGS = {"mlflow.runName", TAG_PID, TAG_HOST}


def wait(child, timeout=300):
    t0 = time.monotonic()
    while child.poll() is None:
        assert time.monotonic() - t0 < timeout, "child did not exit"
        time.sleep(0.1)
    return child.poll()


@pytest.fixture
def in_parent(experiment, tmp_path):
    """A parent run (as `main`'s) of the test's experiment, with a fresh prepared-data folder."""
    with mlflow.start_run(experiment_id=mlflow.set_experiment(experiment).experiment_id) as parent:
        yield experiment, parent.info.run_id, {"seed": "42", "output_dir": str(tmp_path / "prepared")}


def test_a_forked_child_makes_the_run_mlflow_run_makes(in_parent):
    experiment, parent_id, params = in_parent
    forked = launcher.launch_fork(PROJECT_DIR, "prepare", params, experiment)
    assert wait(forked) == 0
    stock = launcher.launch_mlflow(PROJECT_DIR, "prepare", params, experiment, "local")
    assert wait(stock) == 0
    a, b = mlflow.get_run(forked.run_id), mlflow.get_run(stock.run_id)
    assert a.info.status == b.info.status == "FINISHED"
    assert a.data.params == b.data.params and a.data.params["output_dir"] == params["output_dir"]
    keys = set(a.data.tags) | set(b.data.tags)
    differ = {k for k in keys if a.data.tags.get(k) != b.data.tags.get(k)} - PER_RUN_TAGS
    assert differ == set(), {k: (a.data.tags.get(k), b.data.tags.get(k)) for k in differ}
    assert a.data.tags["mlflow.parentRunId"] == parent_id
    assert a.data.tags["mlflow.project.entryPoint"] == "prepare"
    assert int(a.data.tags[TAG_PID]) != os.getpid()       # its own process
    # the same work, but a fork's peak RSS counts the server's preloaded pages it shares
    assert {k: v for k, v in a.data.metrics.items() if not k.startswith("sys/")} == \
        {k: v for k, v in b.data.metrics.items() if not k.startswith("sys/")}


def test_a_killed_forked_child_fails_its_run_by_name(in_parent):
    experiment, parent_id, params = in_parent
    child = launcher.launch_fork(PROJECT_DIR, "prepare", params, experiment)
    pid = None
    t0 = time.monotonic()
    while pid is None and time.monotonic() - t0 < 120:     # the stage tags its pid once its run starts
        pid = mlflow.get_run(child.run_id).data.tags.get(TAG_PID)
        time.sleep(0.05)
    assert pid is not None and child.poll() is None
    os.kill(int(pid), signal.SIGKILL)
    code = wait(child)
    assert code == -signal.SIGKILL
    logged = []
    pipe = Pipeline(PipelineConfig(), experiment, parent_id, logged.append)
    assert finish(pipe, Step("prepare", None, params), child, time.perf_counter(), code) is None
    assert mlflow.get_run(child.run_id).info.status == "FAILED"
    assert logged and logged[0].startswith(f"[prepare] run {child.run_id} FAILED")


def test_fork_needs_the_local_env_manager_and_auto_picks_it():
    assert launcher.choose("auto", "local") == "fork"
    assert launcher.choose("auto", "virtualenv") == "mlflow"
    assert launcher.choose("mlflow", "local") == "mlflow"
    with pytest.raises(ConfigError, match="needs --env-manager local"):
        launcher.choose("fork", "conda")
    with pytest.raises(ConfigError, match="must be one of"):
        launcher.choose("thread", "local")


def test_underscore_aliases_are_added_once_when_the_cli_module_runs_twice():
    """A forked child of `python -m entrypoints.cli main` runs that module again as __mp_main__; the
    second pass must not add the `--data_dir` aliases again (click warned about every option)."""
    import runpy
    import warnings

    from entrypoints.cli import cli
    before = {name: [list(p.opts) for p in cmd.params] for name, cmd in cli.commands.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # runpy: the module is already imported
        runpy.run_module("entrypoints.cli", run_name="__mp_main__")
    assert {name: [list(p.opts) for p in cmd.params] for name, cmd in cli.commands.items()} == before
    assert ["--data-dir", "--data_dir"] in before["classify"]
