"""A `main` killed mid-step (issue 18, item 4), and how `main` reaps the runs a killed one left RUNNING.

Which kill: the job's or machine's end, which takes every process of it at once (a scheduler ending
the job, the container's cgroup killed, the OOM killer, a lost machine). With `--launcher mlflow` a
process-group kill is not that: mlflow starts each asynchronous `mlflow run` child as the leader of its
own session (os.setsid), so the running steps survive main's group, carry on and end their own runs. So
the test stops main, collects its whole process tree (with the default fork launcher: main, the fork
server and the forked steps) and SIGKILLs all of it while a classify fold on generated images trains:
the runs it leaves RUNNING are what the re-run must find and mark KILLED.

The slow test runs a real `main` at the smallest settings (`--models squeezenet1_1`, `--set` sizes, a
28-image demo set), kills it, runs it again and compares its report with that of an uninterrupted
`main` in another experiment of the same store."""
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.tracking import reap_killed_runs
from harness.report.figures import LABEL_H
from harness.schema import (
    STAGE_CLASSIFY, STAGE_CLASSIFY_FOLD, STAGE_MAIN, STAGE_REGISTER, STAGE_REPORT, TAG_HOST, TAG_MLFLOW_PARENT_RUN,
    TAG_PID, TAG_STAGE, TAG_STEP_PREFIX, TAG_TRAIN_SET,
)

REPO = Path(__file__).resolve().parent.parent


def test_reap_marks_killed_the_runs_of_gone_processes_and_their_children(experiment):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = MlflowClient()
    exp_id = mlflow.set_experiment(experiment).experiment_id
    host = socket.gethostname()

    def run(pid=None, parent=None, on=host, status=None):
        tags = {TAG_HOST: on, **({TAG_PID: str(pid)} if pid else {}), **({TAG_MLFLOW_PARENT_RUN: parent} if parent else {})}
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        if status:
            client.set_terminated(run_id, status)
        return run_id

    dead = run(gone.pid)
    not_started = run(parent=dead)             # a child whose stage had not tagged its pid yet
    alive = run(os.getpid())
    started_child = run(os.getpid(), parent=dead)   # its own process lives: not the parent's to end
    elsewhere = run(gone.pid, on=host + "-elsewhere")   # another host's pid says nothing here
    finished = run(gone.pid, status="FINISHED")
    assert reap_killed_runs(experiment, log=lambda msg: None) == sorted([dead, not_started])
    status = {r: client.get_run(r).info.status for r in (dead, not_started, alive, started_child, elsewhere, finished)}
    assert status == {dead: "KILLED", not_started: "KILLED", alive: "RUNNING", started_child: "RUNNING",
                      elsewhere: "RUNNING", finished: "FINISHED"}


def test_reap_leaves_a_run_its_process_ended_finished_after_the_search(experiment, monkeypatch):
    """The race main's fork children met: a short stage (judges with no model) ends its run FINISHED and
    exits between another stage's search for RUNNING runs and its check of their pids; the check then
    finds the pid gone, and the run must stay FINISHED (it was marked KILLED, failing main)."""
    from harness import tracking
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = MlflowClient()
    exp_id = mlflow.set_experiment(experiment).experiment_id
    run_id = client.create_run(exp_id, tags={TAG_HOST: socket.gethostname(), TAG_PID: str(gone.pid)}).info.run_id

    def ended_meanwhile(pid):          # the stage finishes while the reaper looks at its pid
        client.set_terminated(run_id, "FINISHED")
        return False
    monkeypatch.setattr(tracking, "_alive", ended_meanwhile)
    assert reap_killed_runs(experiment, log=lambda msg: None) == []
    assert client.get_run(run_id).info.status == "FINISHED"


# ------------------------------------------------------------------------------------------------
# A real `main`, killed during classify
# ------------------------------------------------------------------------------------------------

# The smallest `main` that has every kind of step: one classifier (so explain runs), no segmenter, a
# 2-step fine-tune, 2-step sampling, a judges run with no judge in it. Classify trains long enough (2 folds
# x 30 epochs of 1 step) for the kill to land inside a fold.
SMALL_MAIN = ["--profile", "demo", "--models", "squeezenet1_1", "--max-parallel", "2",   # demo: its own small data
              "--set", "finetune.max_train_steps=2", "--set", "finetune.mask_warmup_steps=2",
              "--set", "finetune.validation_epochs=0", "--set", "finetune.checkpointing_steps=0",
              "--set", "generate.num_inference_steps=2",
              "--set", "evaluate.lpips_pairs=4", "--set", "judges.cas_model=none",
              "--set", "judges.consistency_model=none",
              "--set", "classify.image_size=32", "--set", "classify.epochs=30", "--set", "classify.val_every=10",
              "--set", "explain.n_images=1"]
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
MAIN_TIMEOUT = 900


@pytest.fixture(scope="module")
def small_main(tmp_path_factory):
    """(start, run, client, work): start(experiment) -> the Popen of the small `main` in a new session
    (its output appended to work/<experiment>.log); run(experiment) -> that output, once it exited 0."""
    from harness.data.demo import make_demo_dataset
    work = tmp_path_factory.mktemp("kill")
    real = make_demo_dataset(work / "kill-demo", per_class=4)                 # 21 train / 7 test
    ham = make_demo_dataset(work / "kill-ham", per_class=2, layout="ham10000")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    args = [sys.executable, "-m", "entrypoints.cli", "main", "--data-dir", str(real), "--eval-data", str(ham),
            *SMALL_MAIN]

    def start(experiment):
        with open(work / f"{experiment}.log", "a") as log:
            return subprocess.Popen([*args, "--experiment", experiment], cwd=work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def run(experiment):
        proc = start(experiment)
        try:
            code = proc.wait(timeout=MAIN_TIMEOUT)
        finally:
            if proc.poll() is None:                 # timed out: leave no step running behind
                kill_tree(proc.pid)
                proc.wait()
        out = (work / f"{experiment}.log").read_text()
        assert code == 0, out[-6000:]
        return out

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])       # for the artifact downloads
    yield start, run, MlflowClient(env["MLFLOW_TRACKING_URI"]), work
    mlflow.set_tracking_uri(previous)


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def wait_for_training_fold(client, experiment, proc, work, timeout=MAIN_TIMEOUT):
    """A classify fold run on generated images (so after the generation) that is RUNNING and has logged a
    training loss (polled every 0.2 s)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for r in runs_of(client, experiment):
            if (r.data.tags.get(TAG_STAGE) == STAGE_CLASSIFY_FOLD and r.info.status == "RUNNING"
                    and r.data.tags.get(TAG_TRAIN_SET) in ("synth", "hybrid") and "train/loss" in r.data.metrics):
                return r
        assert proc.poll() is None, (work / f"{experiment}.log").read_text()[-6000:]
        time.sleep(0.2)
    raise AssertionError(f"no classify fold trained within {timeout} s")


def kill_tree(pid: int) -> int:
    """SIGKILL process `pid` and every descendant at once, as a job's end does. Each process is stopped
    as it is found (so none starts another meanwhile) until the tree stops growing; then all are killed.
    Returns how many processes were killed."""
    found: dict[int, psutil.Process] = {}
    todo = [psutil.Process(pid)]
    while todo:
        for proc in todo:
            found[proc.pid] = proc
            try:
                proc.suspend()
            except psutil.NoSuchProcess:
                pass
        todo = []
        for proc in list(found.values()):
            try:
                todo += [c for c in proc.children() if c.pid not in found]
            except psutil.NoSuchProcess:
                pass
    for proc in found.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(found)


def report_of(client, experiment) -> dict:
    """The files of the experiment's report run (text or, for the figures, bytes)."""
    [run] = [r for r in runs_of(client, experiment) if r.data.tags.get(TAG_STAGE) == STAGE_REPORT]
    assert run.info.status == "FINISHED"
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    return {f.name: f.read_bytes() if f.suffix == ".png" else f.read_text(encoding="utf-8")
            for f in sorted(folder.iterdir()) if f.is_file()}


def masked(text: str, client, experiment) -> str:
    """Run ids (and the 8-character prefixes that name generated files and folders) and the experiment's
    name and id masked: they differ between experiments by construction."""
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    text = RUN_ID.sub("<run>", text.replace(experiment, "<experiment>"))
    for run in runs_of(client, experiment):
        text = text.replace(run.info.run_id[:8], "<run8>")
    return text.replace(f'"experiment_id": "{exp_id}"', '"experiment_id": "<id>"')


@pytest.mark.slow
def test_main_killed_during_classify_continues_and_reports_as_if_uninterrupted(small_main):
    start, run, client, work = small_main
    t0 = time.perf_counter()

    # 1. main and all its processes, SIGKILLed while a classify fold trains
    proc = start("killed")
    fold = wait_for_training_fold(client, "killed", proc, work)
    assert kill_tree(proc.pid) >= 3               # main, the fork server and the classify step
    proc.wait()
    before = {r.info.run_id: r for r in runs_of(client, "killed")}
    left_running = {i for i, r in before.items() if r.info.status == "RUNNING"}
    finished = {i for i, r in before.items() if r.info.status == "FINISHED"}
    stage = {i: r.data.tags.get(TAG_STAGE) for i, r in before.items()}
    [main1] = [i for i in before if stage[i] == STAGE_MAIN]
    killed_classify = fold.data.tags[TAG_MLFLOW_PARENT_RUN]
    assert {fold.info.run_id, killed_classify, main1} <= left_running
    assert {"prepare", "finetune", "generate"} <= {stage[i] for i in finished}
    # the parent tags each step it started with its run: the finished steps by name
    finished_steps = {k[len(TAG_STEP_PREFIX):]: v for k, v in before[main1].data.tags.items()
                      if k.startswith(TAG_STEP_PREFIX) and v in finished}
    assert {"prepare", "finetune", "generate"} <= set(finished_steps)

    # 2. main again: reaps the runs the kill left RUNNING, reuses the finished steps, does the rest
    out = run("killed")
    t_killed = time.perf_counter() - t0
    after = {r.info.run_id: r for r in runs_of(client, "killed")}
    for run_id in left_running:
        assert after[run_id].info.status == "KILLED", (stage[run_id], after[run_id].info.status)
        assert f"run {run_id} was left RUNNING by a process that is gone: marked KILLED" in out
    assert not [i for i, r in after.items() if r.info.status == "RUNNING"]
    [main2] = [i for i, r in after.items() if r.data.tags.get(TAG_STAGE) == STAGE_MAIN and i != main1]
    assert after[main2].info.status == "FINISHED"
    for name, run_id in finished_steps.items():
        if stage[run_id] in (STAGE_REGISTER, STAGE_REPORT):
            continue                              # never reused: they look at what exists now
        assert after[main2].data.tags[TAG_STEP_PREFIX + name] == run_id, name
        assert f"[{name}] reused run {run_id}" in out
    for one in ("prepare", "finetune", "generate"):   # no new run of them
        assert [i for i, r in after.items() if r.data.tags.get(TAG_STAGE) == one] == [finished_steps[one]]
    classify_runs = [r for r in after.values() if r.data.tags.get(TAG_STAGE) == STAGE_CLASSIFY]
    assert len([r for r in classify_runs if r.info.status == "FINISHED"]) == 3      # one per training set
    assert killed_classify in {r.info.run_id for r in classify_runs if r.info.status == "KILLED"}

    # 3. the same main, uninterrupted, in another experiment: the same report
    t1 = time.perf_counter()
    run("uninterrupted")
    t_ref = time.perf_counter() - t1
    killed, ref = report_of(client, "killed"), report_of(client, "uninterrupted")
    assert set(killed) == set(ref) and {"report.md", "report.json", "table2.csv", "figure3.png"} <= set(ref)
    # what differs: the killed experiment's report names the runs the kill left in its tables' reach as
    # ignored (not FINISHED), in report.json and one line of report.md
    k_json, r_json = json.loads(killed.pop("report.json")), json.loads(ref.pop("report.json"))
    assert r_json.pop("ignored_runs") == []
    ignored = k_json.pop("ignored_runs")
    assert killed_classify in {r["run_id"] for r in ignored}
    assert all(r["status"] == "KILLED" and r["run_id"] in left_running for r in ignored)
    assert masked(json.dumps(k_json), client, "killed") == masked(json.dumps(r_json), client, "uninterrupted")
    k_md = [line for line in masked(killed.pop("report.md"), client, "killed").splitlines()
            if not line.startswith("- **Ignored runs**")]
    assert k_md == masked(ref.pop("report.md"), client, "uninterrupted").splitlines()
    for name in ref:                              # the tables (md, tex, csv) and the figures
        k, r = killed[name], ref[name]
        if isinstance(r, str):
            k, r = masked(k, client, "killed"), masked(r, client, "uninterrupted")
        elif name == "figure3.png":               # its one model strip names the explain run: the pixels under it
            k, r = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[LABEL_H:] for png in (k, r))
            assert k.shape == r.shape and k.size > 0
            k, r = k.tobytes(), r.tobytes()
        assert k == r, name
    print(f"killed + re-run main {t_killed:.0f} s, uninterrupted main {t_ref:.0f} s")
