"""The turn-taking used by the tracking benchmark (bench/run.py): threads run one step at a time, in
turn, and a failing thread never leaves the others waiting; two real tiny fine-tunes go through it. No
timings are asserted. Also: a benchmark's temporary MLflow store does not outlive it."""
import os
import threading

import mlflow
import pytest

from bench.gpu import tracking_store
from bench.run import TakeTurns, finetunes_taking_turns


def _run(turns, name, steps, log, fail_at=None):
    for step in range(steps):
        turns.step(name, last=step == steps - 1)
        if fail_at == step:
            turns.abort()
            raise RuntimeError("boom")
        log.append((name, step))


def test_threads_alternate_step_by_step_and_their_turns_are_summed():
    turns, log = TakeTurns(["a", "b"], timeout=60), []
    threads = [threading.Thread(target=_run, args=(turns, n, 6, log)) for n in ("b", "a")]   # b starts first
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    # a goes first (the names' order), then strictly a b a b ...; both last steps come after every turn
    timed = log[:10]
    assert timed == [(n, s) for s in range(5) for n in ("a", "b")]
    assert sorted(log[10:]) == [("a", 5), ("b", 5)]
    # 5 timed turns each (the last step is not timed), each turn's seconds kept and summed
    assert [len(turns.turns[n]) for n in ("a", "b")] == [5, 5]
    for n in ("a", "b"):
        assert turns.wall[n] == pytest.approx(sum(turns.turns[n]))
        assert turns.cpu[n] >= 0
    assert turns.window_cpu >= 0


def test_a_failing_thread_releases_the_other():
    turns, log = TakeTurns(["a", "b"], timeout=60), []
    errors = []

    def failing():
        try:
            _run(turns, "a", 6, log, fail_at=2)
        except RuntimeError as e:
            errors.append(e)

    threads = [threading.Thread(target=failing), threading.Thread(target=_run, args=(turns, "b", 6, log))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors and turns.aborted
    assert [s for n, s in log if n == "b"] == list(range(6))     # b went on to the end


def test_close_hook_runs_once_when_every_thread_has_finished():
    calls = []
    turns = TakeTurns(["a", "b"], on_close=lambda: calls.append(len(turns.finished)), timeout=60)
    threads = [threading.Thread(target=_run, args=(turns, n, 3, [])) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert calls == [2]


@pytest.mark.parametrize("before", [None, "http://server:5000"])
def test_tracking_store_restores_the_environment(before, monkeypatch):
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with pytest.raises(KeyError), tracking_store("/tmp/bench"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/bench/m.db"
        raise KeyError("a benchmark failed")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_two_real_finetunes_take_turns_through_finetunes_training_step(tiny_folder, demo_small, small, experiment,
                                                                      tmp_path):
    """The benchmark's wrapper of training_step must take every argument finetune passes (it once broke
    the whole bench when finetune began to pass `rank`), and put the real function back after."""
    from harness.config import FinetuneConfig
    from harness.dualgen import train as T
    original = T.training_step
    cfgs = {n: small(FinetuneConfig, data_dir=str(demo_small), base_model=str(tiny_folder), max_train_steps=3,
                     output_dir=str(tmp_path / n), test_fraction=0.25) for n in ("a", "b")}
    turns = finetunes_taking_turns(cfgs)
    assert [len(turns.turns[n]) for n in ("a", "b")] == [2, 2]        # steps 0 and 1 timed, the last not
    assert T.training_step is original
    runs = mlflow.search_runs(experiment_names=["bench"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert {r.data.params["output_dir"] for r in runs} == {str(tmp_path / "a"), str(tmp_path / "b")}
