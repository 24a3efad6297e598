"""Bad option values through the real CLI (in process): each is refused before any model or data
loads, with exit status 2 and one line naming the option, the value and what is allowed, and no
MLflow run is left behind (issue "Faults": one kind of error)."""
import mlflow
import pytest
from click.testing import CliRunner

from entrypoints.cli import cli

CASES = [
    # command, options, a phrase of the message
    ("finetune", ["--lora-rank", "0"], "--lora-rank must be >= 1, got 0"),
    ("finetune", ["--lora-rank", "-2"], "--lora-rank must be >= 1"),
    ("finetune", ["--resolution", "65"], "--resolution must be a positive multiple of 8"),
    ("finetune", ["--train-batch-size", "0"], "--train-batch-size must be >= 1"),
    ("finetune", ["--mixed-precision", "fp7"], "--mixed-precision must be one of no, fp16, bf16, got 'fp7'"),
    ("finetune", ["--lr-scheduler", "bogus"], "--lr-scheduler must be one of linear, cosine"),
    ("finetune", ["--learning-rate", "0"], "--learning-rate must be > 0"),
    ("finetune", ["--prompt-dropout", "1.5"], "--prompt-dropout must be in [0, 1]"),
    ("finetune", ["--lora-targets", ","], "--lora-targets must name at least one module"),
    ("generate", ["--per-class", "-5"], "--per-class must be >= 0, got -5"),
    ("generate", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("generate", ["--num-inference-steps", "0"], "--num-inference-steps must be >= 1"),
    ("generate", ["--resolution", "65"], "--resolution must be a positive multiple of 8"),
    ("generate", ["--mask-threshold", "2"], "--mask-threshold must be in [0, 1]"),
    ("tune", ["--steps-min", "50", "--steps-max", "10"], "--steps-min (50) must be <= --steps-max (10)"),
    ("tune", ["--guidance-min", "8", "--guidance-max", "2"], "--guidance-min (8.0) must be <= --guidance-max (2.0)"),
    ("tune", ["--trials", "0"], "--trials must be >= 1"),
    ("tune", ["--resolution", "100"], "--resolution must be a positive multiple of 8"),
]


@pytest.mark.parametrize("command, options, phrase", CASES, ids=[f"{c} {' '.join(o)}" for c, o, _ in CASES])
def test_a_bad_option_is_one_line_exit_2_and_no_run(command, options, phrase, experiment):
    result = CliRunner().invoke(cli, [command, *options, "--experiment", experiment])
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.output
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is None or not mlflow.search_runs([exp.experiment_id], output_format="list")


@pytest.mark.parametrize("command", ["report", "register"])
def test_report_and_register_refuse_an_experiment_that_does_not_exist(command, experiment, tmp_path):
    """A typo in --experiment is an error naming it, not a new empty experiment with an empty report."""
    result = CliRunner().invoke(cli, [command, "--experiment", experiment + "-typo"]
                                + (["--output-dir", str(tmp_path)] if command == "report" else []))
    assert result.exit_code == 2, result.output
    assert f"experiment '{experiment}-typo' does not exist" in result.output
    assert mlflow.get_experiment_by_name(experiment + "-typo") is None and not any(tmp_path.iterdir())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_manifest_gets_the_users_umask_not_mkstemps_0600(umask, mode, demo_small, tmp_path):
    import os

    from harness import files
    from harness.data.prepare import load_prepared, write_manifest
    prepared = load_prepared(str(demo_small), progress=False)
    old = os.umask(umask)
    files._umask.cache_clear()
    try:
        path = write_manifest(prepared, tmp_path / "m" / "manifest.csv")
    finally:
        os.umask(old)
        files._umask.cache_clear()
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in path.parent.iterdir()] == ["manifest.csv"]         # no temp file left


def test_sigterm_of_a_finetune_ends_its_run_killed_and_the_cli_exits_143(demo_small, experiment, tmp_path):
    """The real CLI in a subprocess, stopped by SIGTERM while it trains: exit 128 + 15, one line, run KILLED."""
    import os
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "finetune", "--profile", "demo",
                             "--data-dir", str(demo_small), "--max-train-steps", "100000", "--resolution", "32",
                             "--output-dir", str(tmp_path / "ft"), "--experiment", experiment],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120                            # imports and the tiny base: ~15 s here
    while time.time() < deadline:
        exp = mlflow.get_experiment_by_name(experiment)
        runs = mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []
        if runs and mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "train/loss"):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "stopped by signal SIGTERM; the run is marked KILLED" in err and "Traceback" not in err
    [run] = mlflow.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id], output_format="list")
    assert run.info.status == "KILLED"


def test_kill_9_of_a_finetune_is_reaped_by_the_next_stage_and_the_same_command_resumes(demo_small, experiment,
                                                                                         tmp_path):
    """kill -9 leaves no chance to end the run: the next stage started in the experiment marks it KILLED
    (its recorded pid is gone), and the same finetune command again resumes from the latest checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.schema import TAG_RESUMED_FROM
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    out = tmp_path / "ft"
    command = [sys.executable, "-m", "entrypoints.cli", "finetune", "--profile", "demo", "--data-dir", str(demo_small),
               "--max-train-steps", "30", "--checkpointing-steps", "5", "--resolution", "32", "--mask-warmup-steps", "0",
               "--validation-epochs", "0", "--output-dir", str(out), "--experiment", experiment]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180                          # imports, the tiny base, 5 steps: ~20 s here
    while time.time() < deadline and not list(out.glob("checkpoint-*")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "finetune ended before it could be killed"
    [killed] = mlflow.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id], output_format="list")
    assert killed.info.status == "RUNNING"                # nobody could end it
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if not p.name.startswith("."))
    assert saved and saved[-1] < 30

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {killed.info.run_id} was left RUNNING by a process that is gone: marked KILLED" in again.stderr
    runs = {r.info.run_id: r for r in mlflow.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id],
                                                         output_format="list")}
    assert runs.pop(killed.info.run_id).info.status == "KILLED"
    [resumed] = runs.values()
    assert resumed.info.status == "FINISHED" and resumed.data.tags[TAG_RESUMED_FROM].endswith(f"checkpoint-{saved[-1]}")
    assert resumed.data.metrics["resumed_from_step"] == saved[-1]
