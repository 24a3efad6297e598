"""The README's team setup, for real: a PostgreSQL server (binaries from the `pgserver` wheel of the
test extra) behind `mlflow server` with proxied artifacts. The CLI stages run against it over HTTP, the
registry alias resolves through it, and two `tune` processes share one Optuna study in PostgreSQL."""
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from harness.schema import (METRIC_FID, PARAM_BEST_GUIDANCE, PARAM_BEST_STEPS, STAGE_EVALUATE, STAGE_FINETUNE,
                            STAGE_GENERATE, STAGE_PREPARE, STAGE_REGISTER, STAGE_REPORT, STAGE_TUNE_TRIAL,
                            TAG_BEST_TRIAL_RUN, TAG_MLFLOW_PARENT_RUN, TAG_MODEL_VERSION, TAG_OPTUNA_STUDY,
                            TAG_OPTUNA_TRIAL, TAG_STAGE)

pytestmark = pytest.mark.slow

EXPERIMENT = "team"
TUNE_EXPERIMENT = "team-tune"
TUNE_TRIALS = 2
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with databases `mlflow` and `optuna`; yields its base URL
    (postgresql://postgres@127.0.0.1:<port>). Stopped and deleted afterwards."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None:
        pytest.fail("PostgreSQL binaries not found: they come with the `pgserver` package of the test extra "
                    "(pip install -e '.[test]')")
    package = Path(spec.submodule_search_locations[0])
    # PostgreSQL refuses to run as root: under root it runs as `nobody`, who cannot reach a site-packages
    # inside root's home, so the binaries (and the wheel's bundled libpq beside them) are copied to a
    # folder everyone can read.
    user = "nobody" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="skindualgen-pg-"))
    root.chmod(0o755)
    shutil.copytree(package / "pginstall", root / "pgserver" / "pginstall")
    shutil.copytree(package.parent / "pgserver.libs", root / "pgserver.libs")
    bindir, data = root / "pgserver" / "pginstall" / "bin", root / "data"
    data.mkdir()
    if user:
        shutil.chown(data, user)
    port = free_port()

    def pg(tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / tool), "-D", str(data), *args], user=user, capture_output=True,
                              text=True, timeout=120)

    try:
        init = pg("initdb", "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        start = pg("pg_ctl", "-w", "-t", "60", "-l", str(data / "server.log"),
                   "-o", f"-h 127.0.0.1 -p {port} -k {data} -F", "start")
        log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
        assert start.returncode == 0, f"PostgreSQL did not start:\n{start.stderr}\n{log}"
        import psycopg
        url = f"postgresql://postgres@127.0.0.1:{port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
            conn.execute("CREATE DATABASE optuna")
        yield url
    finally:
        pg("pg_ctl", "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """The README's `mlflow server` on a free port: runs in PostgreSQL, artifacts proxied into a folder
    of its own. Yields (http URI, artifacts folder); the server is stopped afterwards."""
    root = tmp_path_factory.mktemp("server")
    artifacts = root / "artifacts"
    port = free_port()
    # no server-side job runner: the harness submits no jobs, and it would start 8 more processes
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
                                 "--artifacts-destination", str(artifacts), "--serve-artifacts",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{(root / 'server.log').read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"mlflow server not up:\n{(root / 'server.log').read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield uri, artifacts
    finally:
        stop_group(proc)


class Cli:
    """`python -m entrypoints.cli ...` processes with MLFLOW_TRACKING_URI set to the server; output
    goes to <work>/logs/<name>.out|.err."""

    def __init__(self, work: Path, uri: str):
        self.work, self.logs = work, work / "logs"
        self.logs.mkdir(parents=True)
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            self.env.pop(key, None)
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, *args: str, cwd: Path | None = None) -> tuple[str, subprocess.Popen]:
        return self.start_python(name, "-m", "entrypoints.cli", *args, cwd=cwd)

    def start_python(self, name: str, *args: str, cwd: Path | None = None) -> tuple[str, subprocess.Popen]:
        with open(self.logs / f"{name}.out", "w") as out, open(self.logs / f"{name}.err", "w") as err:
            proc = subprocess.Popen([sys.executable, *args], cwd=cwd or self.work, env=self.env, stdout=out,
                                    stderr=err)
        self.started.append(proc)
        return name, proc

    def finish(self, started: tuple[str, subprocess.Popen]) -> str:
        name, proc = started
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = (self.logs / f"{name}.out").read_text()
        assert proc.returncode == 0, \
            f"{name} exited {proc.returncode}:\n{out[-2000:]}\n{(self.logs / f'{name}.err').read_text()[-4000:]}"
        return out

    def run(self, name: str, *args: str) -> str:
        return self.finish(self.start(name, *args))

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_id(stdout: str, stage: str) -> str:
    found = re.search(rf"{stage} run ([0-9a-f]{{32}})", stdout)
    assert found, f"no '{stage} run <id>' in:\n{stdout}"
    return found.group(1)


def release_when_waiting(gate, lock_holder, workers: list[tuple[str, subprocess.Popen]], logs: Path) -> None:
    """Wait until every worker is blocked on the table lock_holder locked (so all of them are at the
    same write at once: the tune workers with their first trial in hand), then commit lock_holder's
    transaction, which releases them. The waits are counted in gate's database. A worker that ends
    first fails the test with the end of its stderr (<logs>/<name>.err)."""
    deadline = time.monotonic() + 300
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    while gate.execute(query).fetchone()[0] < len(workers):
        for name, proc in workers:
            assert proc.poll() is None, (f"{name} ended before the lock was released (exit {proc.returncode}):\n"
                                         f"{(logs / f'{name}.err').read_text()[-4000:]}")
        assert time.monotonic() < deadline, "the workers never all waited on the lock"
        time.sleep(0.5)
    lock_holder.commit()


@pytest.fixture(scope="module")
def team(postgres, tracking_server, demo_small, tmp_path_factory):
    """The team workflow on the server, each step a CLI process, at the smallest sizes that run:
    prepare and finetune (at once: finetune reads the data itself), generate, evaluate; then two `tune`
    workers, each in a working directory of its own as on two machines, on the finetuned model and one
    Optuna storage in PostgreSQL (whose trial table stays locked until both wait on it, so both run
    trials at the same time) while register, generate from models:/skindualgen@champion and report run."""
    import optuna
    import psycopg
    uri, _ = tracking_server
    cli = Cli(tmp_path_factory.mktemp("work"), uri)
    data, exp = str(demo_small), ("--experiment", EXPERIMENT)
    storage = f"{postgres}/optuna"
    try:
        prepare = cli.start("prepare", "prepare", "--data-dir", data, *exp)
        ft = run_id(cli.run("finetune", "finetune", "--profile", "demo", "--data-dir", data, "--base-model", "tiny",
                            "--resolution", "32", "--train-batch-size", "2", "--max-train-steps", "2",
                            "--mask-warmup-steps", "0", "--validation-epochs", "0", "--checkpointing-steps", "0",
                            *exp), "finetune")
        cli.finish(prepare)
        small = ("--per-class", "1", "--num-inference-steps", "2", "--resolution", "32")
        gen = run_id(cli.run("generate", "generate", "--model-uri", f"runs:/{ft}/model", *small, *exp), "generate")
        features = cli.work / "features"       # the real split's FID statistics: computed once, by evaluate
        cli.run("evaluate", "evaluate", "--real", data, "--fake", f"runs:/{gen}", "--lpips-pairs", "4",
                "--lpips-size", "32", "--msssim-size", "161", "--judges", "none",
                "--cache-dir", str(features), *exp)

        optuna.storages.RDBStorage(storage)          # the Optuna tables, so they can be locked
        lock_holder = psycopg.connect(storage)
        lock_holder.execute("LOCK TABLE trials IN EXCLUSIVE MODE")
        workers = []
        for name in ("tune-a", "tune-b"):
            (cli.work / name).mkdir()
            workers.append(cli.start(name, "tune", "--model-uri", f"runs:/{ft}/model", "--data-dir", data,
                                     "--trials", str(TUNE_TRIALS), "--steps-min", "1", "--steps-max", "3",
                                     "--per-class", "1", "--resolution", "32", "--storage", storage,
                                     "--cache-dir", str(features), "--experiment", TUNE_EXPERIMENT,
                                     cwd=cli.work / name))
        registered = cli.run("register", "register", *exp)
        pinned = run_id(cli.run("generate-pinned", "generate", "--model-uri", "models:/skindualgen@champion",
                                *small, *exp), "generate")
        with psycopg.connect(storage, autocommit=True) as gate:
            release_when_waiting(gate, lock_holder, workers, cli.logs)
        lock_holder.close()
        report = run_id(cli.run("report", "report", "--output-dir", "reports", *exp), "report")
        tunes = [run_id(cli.finish(worker), "tune") for worker in workers]
    finally:
        cli.stop_all()
    return {"work": cli.work, "finetune": ft, "generate": gen, "pinned": pinned, "report": report,
            "registered": registered, "tunes": tunes, "storage": storage}


def test_stages_track_to_postgres_and_artifacts_go_over_http(postgres, tracking_server, team):
    import psycopg
    from mlflow import MlflowClient
    uri, artifacts = tracking_server
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags[TAG_STAGE], []).append(run)
    assert {s: len(r) for s, r in by_stage.items()} == {STAGE_PREPARE: 1, STAGE_FINETUNE: 1, STAGE_GENERATE: 2,
                                                         STAGE_EVALUATE: 1, STAGE_REGISTER: 1, STAGE_REPORT: 1}
    assert all(r.info.status == "FINISHED" for r in runs)

    # the runs live in PostgreSQL
    with psycopg.connect(f"{postgres}/mlflow") as conn:
        rows = conn.execute("SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(exp.experiment_id),))
        assert {row[0] for row in rows} == {r.info.run_id for r in runs}

    # artifacts travel over HTTP into the server's artifacts folder, never into the working directory
    assert exp.artifact_location.startswith("mlflow-artifacts:/")
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    work = team["work"]
    assert not (work / "mlruns").exists() and not (work / "mlartifacts").exists()

    def on_server(artifact_uri: str) -> Path:
        return artifacts / artifact_uri.removeprefix("mlflow-artifacts:/")

    report_uri = client.get_run(team["report"]).info.artifact_uri
    downloaded = Path(client.download_artifacts(team["report"], "report.md", str(work / "download")))
    local = work / "reports" / EXPERIMENT / "report.md"
    assert (on_server(report_uri) / "report.md").read_bytes() == local.read_bytes() == downloaded.read_bytes()
    assert (on_server(client.get_run(team["generate"]).info.artifact_uri) / "manifest.csv").is_file()
    [model] = client.search_logged_models([exp.experiment_id])
    assert model.source_run_id == team["finetune"] and model.artifact_location.startswith("mlflow-artifacts:/")
    assert (on_server(model.artifact_location) / "MLmodel").is_file()

    # the registry is on the server: the champion is the finetuned model, and generation resolved it
    champion = client.get_model_version_by_alias("skindualgen", "champion")
    assert champion.run_id == team["finetune"]
    assert f"models:/skindualgen/{champion.version}" in team["registered"]
    assert client.get_run(team["pinned"]).data.tags[TAG_MODEL_VERSION] == f"skindualgen/{champion.version}"


def test_two_tune_workers_share_one_study(tracking_server, team):
    import optuna
    from mlflow import MlflowClient
    uri, _ = tracking_server
    client = MlflowClient(tracking_uri=uri)
    parents = {run_id: client.get_run(run_id) for run_id in team["tunes"]}
    [study_name] = {p.data.tags[TAG_OPTUNA_STUDY] for p in parents.values()}   # same command, same study
    assert [s.study_name for s in optuna.get_all_study_summaries(team["storage"])] == [study_name]
    trials = optuna.load_study(study_name=study_name, storage=team["storage"]).trials

    # the study's total, whoever ran them: workers stop at TUNE_TRIALS (one more if both started the last at once)
    assert TUNE_TRIALS <= len(trials) <= TUNE_TRIALS + 1
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    ran = {run_id: int(p.data.metrics["n_trials_this_run"]) for run_id, p in parents.items()}
    assert sum(ran.values()) == len(trials) and min(ran.values()) >= 1    # both workers ran trials
    assert len({tuple(t.params.values()) for t in trials}) == len(trials)   # and did not repeat each other

    # each trial is a nested run of the tune run of the worker that ran it
    children: dict[str, int] = {run_id: 0 for run_id in parents}
    for t in trials:
        child = client.get_run(t.user_attrs["mlflow_run_id"])
        assert child.info.status == "FINISHED" and child.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert child.data.tags[TAG_STAGE] == STAGE_TUNE_TRIAL
        assert child.data.tags[TAG_OPTUNA_TRIAL] == str(t.number)
        assert int(child.data.params["num_inference_steps"]) == t.params["num_inference_steps"]
        assert float(child.data.params["guidance_scale"]) == t.params["guidance_scale"]
        assert child.data.metrics[METRIC_FID] == t.value
        children[child.data.tags[TAG_MLFLOW_PARENT_RUN]] += 1
    assert children == ran

    # both workers waited for each other's trials and report the study's best (the same trial)
    best_value = min(t.value for t in trials)
    best = {t.user_attrs["mlflow_run_id"]: t for t in trials if t.value == best_value}
    [best_run] = {p.data.tags[TAG_BEST_TRIAL_RUN] for p in parents.values()}
    assert best_run in best
    for p in parents.values():
        assert p.data.metrics["best_fid"] == best_value
        assert p.data.metrics["n_trials"] == len(trials)
        assert int(p.data.params[PARAM_BEST_STEPS]) == best[best_run].params["num_inference_steps"]
        assert float(p.data.params[PARAM_BEST_GUIDANCE]) == best[best_run].params["guidance_scale"]


def race(postgres: str, uri: str, work: Path, table: str, code: str) -> None:
    """Run `code` in two processes at the same moment against the tracking server: the server's `table`
    stays locked until both wait to write to it, so their writes meet. Both must succeed."""
    import psycopg
    cli = Cli(work, uri)
    lock_holder = psycopg.connect(f"{postgres}/mlflow")
    lock_holder.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    try:
        workers = [cli.start_python(name, "-c", code) for name in ("worker-a", "worker-b")]
        with psycopg.connect(f"{postgres}/mlflow", autocommit=True) as gate:
            release_when_waiting(gate, lock_holder, workers, cli.logs)
        for worker in workers:
            cli.finish(worker)
    finally:
        lock_holder.close()
        cli.stop_all()


def test_workers_starting_on_one_new_experiment_at_once(postgres, tracking_server, tmp_path):
    """Two processes set up the same new experiment at once (two `tune` workers, `main --max-parallel`
    children): both add its description tags, both start, and the tags are there once."""
    from mlflow import MlflowClient
    from harness.schema import TAG_MLFLOW_NOTE
    uri, _ = tracking_server
    race(postgres, uri, tmp_path, "experiment_tags", "from harness import tracking; tracking.setup('race-setup')")
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("race-setup")
    assert exp.tags[TAG_MLFLOW_NOTE]


def test_runs_logging_one_new_dataset_at_once(postgres, tracking_server, tmp_path):
    """Two runs log the same dataset, new to the experiment, at once (classify children of `main
    --max-parallel` on one synthetic set): both runs have it as input, and the experiment has it once."""
    import psycopg
    from mlflow import MlflowClient
    uri, _ = tracking_server
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("race-inputs")
    code = ("import mlflow, pandas as pd; from harness import tracking; "
            f"mlflow.set_tracking_uri({uri!r}); "
            f"run = mlflow.start_run(experiment_id={exp_id!r}); "
            "ds = mlflow.data.from_pandas(pd.DataFrame({'id': ['a', 'b'], 'label': [0, 1]}), source='set', "
            "name='synthetic', targets='label'); "
            "tracking.log_input(ds, context='synthetic'); mlflow.end_run()")
    race(postgres, uri, tmp_path, "datasets", code)
    runs = client.search_runs([exp_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all([d.dataset.name for d in r.inputs.dataset_inputs] == ["synthetic"] for r in runs)
    with psycopg.connect(f"{postgres}/mlflow") as conn:
        assert conn.execute("SELECT count(*) FROM datasets WHERE experiment_id = %s",
                            (int(exp_id),)).fetchone()[0] == 1
