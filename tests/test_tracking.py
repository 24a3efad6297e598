"""Tags, params and run reuse against a real sqlite MLflow store."""
import dataclasses
import os

import mlflow
import pytest

from harness import tracking
from harness.config import PrepareConfig
from harness.schema import (METRIC_PEAK_RSS_GIB, STAGE_FINETUNE, STAGE_PREPARE, TAG_CODE, TAG_DIGEST, TAG_LIB_PREFIX,
                            TAG_STAGE, TAG_THREADS)


def test_stage_run_tags_and_params(experiment):
    import torch
    cfg = PrepareConfig(data_dir="/data/x", test_fraction=0.25)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)              # the thread count changes results: each run records its own
        with tracking.stage_run(STAGE_PREPARE, cfg, dataset_digest="abc123", experiment=experiment) as run:
            pass
    finally:
        torch.set_num_threads(threads)
    r = mlflow.get_run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags[TAG_STAGE] == STAGE_PREPARE
    assert r.data.tags[TAG_DIGEST] == "abc123"
    assert r.data.tags[TAG_CODE] == tracking.code_version()
    assert r.data.tags[TAG_LIB_PREFIX + "torch"].startswith("2.14")
    assert r.data.tags[TAG_THREADS] == "1"
    assert r.data.params == {f.name: tracking.shown(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    assert "" not in r.data.params.values()                    # no blank: an empty option shows what it means


def test_empty_options_show_a_word_and_read_back_as_empty(experiment):
    cfg = PrepareConfig(data_dir="", output_dir="")
    with tracking.stage_run(STAGE_PREPARE, cfg, experiment=experiment) as run:
        pass
    r = mlflow.get_run(run.info.run_id)
    assert r.data.params["data_dir"] == "(embedded demo)" and r.data.params["output_dir"] == "(default)"
    assert tracking.effective_params(r)["data_dir"] == "" and tracking.effective_params(r)["seed"] == "42"
    assert tracking.find_reusable_run(STAGE_PREPARE, {"data_dir": "", "seed": "42"}, experiment).info.run_id == \
        run.info.run_id
    assert tracking.shown("synth", "") == "(none)" and tracking.shown("synth", "x") == "x"
    # as main looks for a step's run: by the step's whole config as logged (the words included)
    assert tracking.find_reusable_run(STAGE_PREPARE, tracking.config_params(cfg), experiment).info.run_id == \
        run.info.run_id
    assert mlflow.get_experiment(r.info.experiment_id).name == experiment


def proc_status_gib(field: str) -> float:
    """The kernel's own account of this process (Linux /proc/self/status: VmHWM peak, VmRSS now)."""
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) / 2**20                  # kB


def test_every_stage_run_logs_the_process_peak_memory(experiment):
    before = proc_status_gib("VmHWM")
    with tracking.stage_run(STAGE_PREPARE, PrepareConfig(data_dir="x"), "d", experiment) as run:
        extra = before - proc_status_gib("VmRSS") + 0.3   # up to the peak so far, then 300 MiB beyond it
        block = bytearray(int(extra * 2**30))
        block[::4096] = b"x" * len(block[::4096])        # touch every page
    after = proc_status_gib("VmHWM")
    logged = mlflow.get_run(run.info.run_id).data.metrics[METRIC_PEAK_RSS_GIB]
    # getrusage's ru_maxrss and /proc's VmHWM are two counters of the same peak: equal within a few pages
    assert before + 0.25 < logged and logged == pytest.approx(after, abs=0.01)


def test_failure_marks_run_failed(experiment):
    with pytest.raises(RuntimeError):
        with tracking.stage_run(STAGE_PREPARE, PrepareConfig(), experiment=experiment) as run:
            raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_code_version_is_a_git_commit():
    v = tracking.code_version()
    sha = v.split("+")[0]
    assert len(sha) == 40 and int(sha, 16) >= 0
    assert v.endswith("+dirty") or "+" not in v


def test_find_reusable_run_compares_params_as_strings(experiment):
    cfg = PrepareConfig(test_fraction=0.2, seed=3)
    assert tracking.find_reusable_run(STAGE_PREPARE, tracking.config_params(cfg), experiment) is None
    with tracking.stage_run(STAGE_PREPARE, cfg, experiment=experiment) as run:
        pass
    found = tracking.find_reusable_run(STAGE_PREPARE, {"test_fraction": "0.2", "seed": "3"}, experiment)
    assert found.info.run_id == run.info.run_id
    assert tracking.find_reusable_run(STAGE_PREPARE, {"seed": 3}, experiment).info.run_id == run.info.run_id
    assert tracking.find_reusable_run(STAGE_PREPARE, {"seed": "4"}, experiment) is None
    assert tracking.find_reusable_run(STAGE_FINETUNE, {"seed": "3"}, experiment) is None
    assert tracking.find_reusable_run(STAGE_PREPARE, {"seed": "3"}, experiment, code="0" * 40) is None


def test_failed_runs_are_not_reused(experiment):
    cfg = PrepareConfig(seed=11)
    with pytest.raises(ValueError):
        with tracking.stage_run(STAGE_PREPARE, cfg, experiment=experiment):
            raise ValueError
    assert tracking.find_reusable_run(STAGE_PREPARE, tracking.config_params(cfg), experiment) is None


def test_resumes_run_created_by_mlflow_run(experiment, monkeypatch):
    """`mlflow run` creates the run and passes MLFLOW_RUN_ID; the stage must log into that run."""
    tracking.setup(experiment)
    outer = mlflow.start_run()
    mlflow.end_run("RUNNING")   # mlflow run leaves it RUNNING for the child process
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    with tracking.stage_run(STAGE_PREPARE, PrepareConfig(), experiment=experiment) as run:
        assert run.info.run_id == outer.info.run_id
    r = mlflow.get_run(outer.info.run_id)
    assert r.data.tags[TAG_STAGE] == STAGE_PREPARE and r.info.status == "FINISHED"


def test_default_store_is_sqlite_in_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.tracking_uri() == "http://server:5000"


def test_every_stage_run_samples_system_metrics(experiment, monkeypatch):
    """MLflow's system metrics (CPU, memory; GPU when present) on every stage run, at the interval of
    $SKINDUALGEN_SYSTEM_METRICS_SECONDS (main's demo: 2 s; default 10 s); 0 turns them off."""
    import time

    from harness.errors import ConfigError
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "0.5")
    with tracking.stage_run(STAGE_PREPARE, {"k": "v"}, experiment=experiment) as run:
        time.sleep(2.0)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and all(0 <= m.value <= 100 * os.cpu_count() for m in history)
    assert "system/system_memory_usage_megabytes" in mlflow.get_run(run.info.run_id).data.metrics
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "0")
    with tracking.stage_run(STAGE_PREPARE, {"k": "v"}, experiment=experiment) as off:
        time.sleep(0.2)
    assert not [k for k in mlflow.get_run(off.info.run_id).data.metrics if k.startswith("system/")]
    for bad in ("fast", "-1"):
        monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, bad)
        with pytest.raises(ConfigError, match="SKINDUALGEN_SYSTEM_METRICS_SECONDS"):
            tracking.system_metrics_interval()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "ctrl-c"])
def test_a_stopped_stage_run_ends_killed_with_what_it_logged(how, experiment):
    """SIGTERM / SIGHUP (what timeout, docker and schedulers send) and Ctrl-C end the run KILLED, not
    RUNNING for ever nor FAILED; the handlers from before are put back."""
    import signal
    import time

    from harness.errors import Stopped
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else Stopped):
        with tracking.stage_run(STAGE_PREPARE, {"k": "v"}, experiment=experiment) as run:
            mlflow.log_metric("progress", 7)
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), getattr(signal, how))
            time.sleep(10)                                   # the signal arrives first
    r = mlflow.get_run(run.info.run_id)
    assert r.info.status == "KILLED" and r.data.metrics["progress"] == 7
    assert signal.getsignal(signal.SIGTERM) is before and mlflow.active_run() is None
