"""The fault suite (issue "Faults"): bad input through the real CLI (in process, one table: exit code 2,
one line naming the option or file, the run left FAILED or none, nothing written), kill -TERM and
kill -9 of a finetune (KILLED, resumed), tracking stores that cannot be used, and a tracking server's
outage during a finetune (subprocesses, a real `mlflow server`)."""
import mlflow
import pytest
from click.testing import CliRunner

from entrypoints.cli import cli

# The fault table: command, options ({demo}: a small dataset, {png}: a PNG named .csv, {taken}: a file
# where a folder belongs, {model}: an empty folder), the exit code, a phrase of the one-line message,
# the status of any run left (None: no run at all), and what is left on disk: nothing new in the working
# folder, and every file there (the user's) unchanged.
OPTION_CASES = [
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
    ("tune", ["--storage", "mysql://u:s3cret@127.0.0.1/db", "--model-uri", "runs:/0/model"],
     "--storage mysql://127.0.0.1/db cannot be used: ModuleNotFoundError: No module named 'MySQLdb'"),
]
CASES = [(command, options, 2, phrase, None) for command, options, phrase in OPTION_CASES] + [
    ("prepare", ["--data-dir", "{png}", "--layout", "manifest", "--output-dir", "prepared"], 2,
     "{png}: not a UTF-8 text file (byte 0 is 0x89)", "FAILED"),
    ("prepare", ["--data-dir", "{demo}", "--output-dir", "{taken}"], 2, "{taken}", "FAILED"),
    ("finetune", ["--profile", "demo", "--data-dir", "{demo}", "--resolution", "32", "--max-train-steps", "1",
                  "--output-dir", "{taken}"], 2, "{taken}", None),
    ("generate", ["--model-uri", "{model}", "--per-class", "1", "--profile", "paper", "--output-dir", "{taken}"], 2,
     "{taken} exists and is not a generated set", None),
    ("generate", ["--model-uri", "runs:/" + "0" * 32 + "/model", "--per-class", "1"], 2,
     f"runs:/{'0' * 32}/model: no run '{'0' * 32}' in the tracking store", None),
]


@pytest.mark.parametrize("command, options, code, phrase, status", CASES,
                         ids=[f"{c} {' '.join(o)}" for c, o, *_ in CASES])
def test_a_fault_is_one_line_with_its_exit_code_its_run_status_and_nothing_left_on_disk(
        command, options, code, phrase, status, experiment, demo_small, tmp_path, monkeypatch):
    png = tmp_path / "photo.csv"
    png.write_bytes(bytes([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) + bytes(range(256)) * 4)
    (tmp_path / "taken").write_text("a file the user keeps\n")
    (tmp_path / "model").mkdir()
    places = {"{demo}": str(demo_small), "{png}": str(png), "{taken}": str(tmp_path / "taken"),
              "{model}": str(tmp_path / "model")}

    def fill(text):
        for key, value in places.items():
            text = text.replace(key, value)
        return text
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [command, *map(fill, options), "--experiment", experiment])
    assert result.exit_code == code, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and fill(phrase) in error_lines[0] and "Traceback" not in result.output, result.output
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []
    assert [r.info.status for r in runs] == ([] if status is None else [status] * len(runs)) and (runs or not status)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, sorted(set(after) ^ set(before))


def test_a_report_into_a_file_is_one_line_naming_it_and_the_file_is_kept(experiment, demo_small, tmp_path):
    CliRunner().invoke(cli, ["prepare", "--data-dir", str(demo_small), "--output-dir", str(tmp_path / "p"),
                             "--experiment", experiment])         # report reads an experiment that exists
    (tmp_path / "taken").write_text("a file the user keeps\n")
    result = CliRunner().invoke(cli, ["report", "--output-dir", str(tmp_path / "taken"), "--experiment", experiment])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert str(tmp_path / "taken") in line and (tmp_path / "taken").read_text() == "a file the user keeps\n"


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


def test_a_tracking_store_that_cannot_be_used_fails_in_seconds_with_one_line_naming_it(tmp_path):
    """Unreachable, not MLflow (a plain web server), a corrupt sqlite file, a missing DB driver: the real
    CLI in subprocesses (started together), each exit 2 with one line naming the store, its password
    never shown; MLflow's own retries took 249 s for the first (the timeout below is > 2x the 30 s allowed)."""
    import http.server
    import os
    import socket
    import subprocess
    import sys
    import threading

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    with socket.socket() as s:                           # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 100)
    cases = {f"http://127.0.0.1:{closed}": "NewConnectionError",
             f"http://127.0.0.1:{web.server_address[1]}": "error code",
             f"sqlite:///{garbage}": "file is not a database",
             "mysql://user:s3cret@127.0.0.1/db": "No module named"}
    procs = {}
    for uri in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        procs[uri] = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "prepare", "--experiment", "x",
                                       "--output-dir", str(tmp_path / "prepared")],
                                      env={**env, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for uri, phrase in cases.items():
            out, err = procs[uri].communicate(timeout=90)
            lines = [line for line in err.splitlines() if line.startswith("Error:")]
            assert procs[uri].returncode == 2, err
            assert len(lines) == 1 and "Traceback" not in err, err
            shown = uri.replace("user:s3cret@", "")
            assert lines[0].startswith(f"Error: tracking store {shown} cannot be used") and phrase in lines[0], err
            assert "s3cret" not in out + err
    finally:
        web.shutdown()
        for proc in procs.values():
            proc.kill()
    assert not (tmp_path / "prepared").exists()


def test_help_shows_each_options_type_or_its_words_and_the_words_are_the_libraries():
    from diffusers.optimization import SchedulerType

    from harness.config import LR_SCHEDULERS
    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}
    shown = " ".join(CliRunner().invoke(cli, ["finetune", "--help"], terminal_width=400).output.split())
    for phrase in ("--resolution INTEGER", "--learning-rate, --learning_rate FLOAT", "--augment BOOLEAN",
                   "--mixed-precision, --mixed_precision [no|fp16|bf16]",
                   "--data-dir, --data_dir TEXT default: (embedded demo)", "--revision TEXT default: (main)",
                   "--lr-scheduler, --lr_scheduler [" + "|".join(LR_SCHEDULERS) + "]"):
        assert phrase in shown, phrase
    shown = " ".join(CliRunner().invoke(cli, ["segment", "--help"], terminal_width=400).output.split())
    assert "--train-set, --train_set [real|synth|hybrid|augmented]" in shown
    result = CliRunner().invoke(cli, ["finetune", "--resolution", "big"])
    assert result.exit_code == 2 and "'big' is not a valid int" in result.output


def _tracking_server(root, port):
    """`mlflow server` on 127.0.0.1:port over the sqlite store in `root` (the same store each time)."""
    import subprocess
    import time
    import urllib.request
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env={**__import__("os").environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90                 # ~5 s here
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.3)


def _stop(proc):
    import os
    import signal
    os.killpg(proc.pid, signal.SIGKILL)              # the server and its uvicorn worker: gone at once
    proc.wait(timeout=30)


def test_a_tracking_server_outage_is_ridden_out_and_a_lost_one_stops_the_finetune_keeping_its_checkpoints(
        demo_small, tmp_path):
    """Over HTTP: the server killed for 20 s while a finetune runs and started again on the same store ->
    the finetune finishes with every loss step (MLflow's HTTP retries carry it). The server killed for
    good -> the finetune stops, one line, its checkpoints kept, and the same command resumes once a
    server answers. MLflow's default retries (7, backoff 2) give up after ~4 min; phase 2 lowers them
    to seconds so the test is short: the bound it checks is that the stage gives up at all."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from harness.schema import TAG_RESUMED_FROM
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}

    def command(out, steps):
        return [sys.executable, "-m", "entrypoints.cli", "finetune", "--profile", "demo", "--data-dir",
                str(demo_small), "--max-train-steps", str(steps), "--checkpointing-steps", "10", "--resolution", "32",
                "--mask-warmup-steps", "0", "--validation-epochs", "0", "--output-dir", str(out),
                "--experiment", "outage"]

    def wait_for_checkpoint(out, proc):
        deadline = time.monotonic() + 180            # imports, the tiny base, 10 steps: ~10 s here
        while not list(out.glob("checkpoint-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)

    def runs():
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = client.get_experiment_by_name("outage")
        return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])

    # 1. a 20 s outage
    server = _tracking_server(tmp_path, port)
    proc = subprocess.Popen(command(tmp_path / "a", 60), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_checkpoint(tmp_path / "a", proc)
    _stop(server)
    time.sleep(20)
    assert proc.poll() is None, "the finetune ended inside the outage"
    server = _tracking_server(tmp_path, port)
    out, err = proc.communicate(timeout=400)         # MLflow's retries span ~4 min
    assert proc.returncode == 0, err[-3000:]
    client, [first] = runs()
    assert first.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(first.info.run_id, "train/loss")) == list(range(1, 61))

    # 2. the server gone for good
    short = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    proc = subprocess.Popen(command(tmp_path / "b", 300), env=short, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_checkpoint(tmp_path / "b", proc)
    _stop(server)
    out, err = proc.communicate(timeout=120)         # gave up ~10 s after the kill here
    lines = [line.split("Error: ", 1)[1] for line in err.replace("\r", "\n").splitlines() if "Error: " in line]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"tracking store {uri} stopped answering (API request to {uri}/api/")
    assert f"the checkpoints in {tmp_path / 'b'} are kept" in lines[0]
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "b").glob("checkpoint-*"))
    assert kept and kept[-1] < 300
    server = _tracking_server(tmp_path, port)
    try:
        again = subprocess.run(command(tmp_path / "b", 300), env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        _stop(server)
    client, [_, lost, resumed] = runs()
    assert lost.info.status in ("FAILED", "KILLED")  # FAILED if its one short try reached the store, else reaped
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags[TAG_RESUMED_FROM].endswith(f"checkpoint-{kept[-1]}")
