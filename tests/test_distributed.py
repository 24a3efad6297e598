"""Data-parallel finetune: the command a user runs, `accelerate launch ... -m entrypoints.cli finetune`,
with 2 processes on CPU (gloo), a fresh run and then a resume from one of its checkpoints.

On CPU, accelerate 1.15 starts several processes only with `--multi_gpu` (torchrun); `--cpu
--num_processes 2` starts one process unless MPI is installed. CUDA_VISIBLE_DEVICES="" keeps the
processes on CPU on a host with GPUs too; HF_HOME in tmp keeps a user's accelerate config out.

That the ranks hold the same weights is recorded by the harness itself: at every checkpoint and at
the end, each process hashes its own LoRA + mask-layer weights, the hashes are gathered over
torch.distributed, training stops if they differ, and rank 0 writes them into state.json /
training.json. The test checks both recorded hashes and recomputes rank 0's from the saved files.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from harness.config import FinetuneConfig
from harness.dualgen.train import finetune, weights_sha256
from harness.schema import TAG_NUM_PROCESSES, TAG_RESUMED_FROM, TRAINING_JSON

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT_FILES = {"lora.safetensors", "mask_channels.safetensors", "optim.pt", "state.json"}


def launch_finetune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(cwd / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "entrypoints.cli", "finetune", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def saved_sha(folder: Path) -> str:
    """weights_sha256 of a checkpoint's files (the LoRA in peft keys + the mask layers)."""
    return weights_sha256(load_file(folder / "lora.safetensors") | load_file(folder / "mask_channels.safetensors"))


def model_tensors(model_dir: Path) -> dict:
    """Every tensor of the saved model folder's safetensors files (their metadata order varies)."""
    return {f"{p.relative_to(model_dir)}:{k}": v for p in sorted(model_dir.rglob("*.safetensors"))
            for k, v in load_file(p).items()}


def test_two_processes_one_run_one_checkpoint_set_equal_ranks_and_resume(tiny_folder, demo_small, experiment,
                                                                          tmp_path):
    out = tmp_path / "ft"
    # 21 training images, 2 per process -> global batches of 4: 6 steps in the epoch, the last batch
    # holding 1 image (the second process then repeats it)
    args = ["--data-dir", str(demo_small), "--base-model", str(tiny_folder), "--resolution", "32",
            "--train-batch-size", "2", "--epochs", "1", "--lr-scheduler", "linear", "--mask-warmup-steps", "4",
            "--validation-epochs", "0", "--validation-steps", "2", "--checkpointing-steps", "2",
            "--test-fraction", "0.25", "--output-dir", str(out), "--experiment", experiment]
    done = launch_finetune(tmp_path, *args)

    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FINISHED"
    assert done.stdout.count("finetune run ") == 1 and run.info.run_id in done.stdout      # rank 0 reports
    assert run.data.tags[TAG_NUM_PROCESSES] == "2"
    assert run.data.metrics["max_train_steps"] == 6 and run.data.metrics["n_train_images"] == 21
    client = mlflow.tracking.MlflowClient()
    losses = {key: sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
              for key in ("train/loss", "train/loss_diffusion", "train/loss_bce", "train/loss_dice")}
    for history in losses.values():
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    # the linear decay spans the 6 updates (accelerate steps the schedule once per process per update)
    lr = sorted(client.get_metric_history(run.info.run_id, "train/lr"), key=lambda m: m.step)
    assert [m.value for m in lr] == pytest.approx([1e-4 * (6 - s) / 6 for s in range(1, 7)])
    assert {"dualgen/lora", "dualgen/training.json"} <= {a.path for a in client.list_artifacts(run.info.run_id, "dualgen")}

    # one checkpoint set, written by one process, nothing half-written
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "model"]
    hashes = {}
    for step in (2, 4, 6):
        ckpt = out / f"checkpoint-{step}"
        assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES
        state = json.loads((ckpt / "state.json").read_text())
        assert (state["global_step"], state["num_processes"]) == (step, 2)
        # both processes' own hashes, gathered at that step: equal, and those of the saved weights
        rank0, rank1 = state["weights_sha256_per_process"]
        assert rank0 == rank1 == saved_sha(ckpt)
        hashes[step] = rank0
    assert len(set(hashes.values())) == 3                                   # training moved the weights
    training = json.loads((out / "model" / TRAINING_JSON).read_text())
    assert training["weights_sha256_per_process"] == [hashes[6], hashes[6]]
    model = model_tensors(out / "model")

    # resume from step 4 under 2 processes: steps 5 and 6 again, the same numbers, one more run
    launch_finetune(tmp_path, *args, "--resume-from-checkpoint", str(out / "checkpoint-4"))
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    [resumed] = [r for r in runs if r.info.run_id != run.info.run_id]
    assert resumed.info.status == "FINISHED" and len(runs) == 2
    assert resumed.data.tags[TAG_RESUMED_FROM] == str(out / "checkpoint-4")
    for key, history in losses.items():
        again = sorted(client.get_metric_history(resumed.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in again] == [(m.step, m.value) for m in history[4:]], key
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "model"]
    state = json.loads((out / "checkpoint-6" / "state.json").read_text())
    assert state["weights_sha256_per_process"] == [hashes[6], hashes[6]] == [saved_sha(out / "checkpoint-6")] * 2
    again = model_tensors(out / "model")
    assert again.keys() == model.keys() and all(torch.equal(again[k], model[k]) for k in model)

    # a single process cannot resume it: its batches of step 5 would not be those of the two
    cfg = FinetuneConfig(data_dir=str(demo_small), base_model=str(tiny_folder), resolution=32, train_batch_size=2,
                         epochs=1, lr_scheduler="linear", mask_warmup_steps=4, validation_epochs=0, validation_steps=2,
                         checkpointing_steps=2, test_fraction=0.25, output_dir=str(out), resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="written by a run of 2 data-parallel process"):
        finetune(cfg, experiment=experiment, progress=False)
    assert len(mlflow.search_runs(experiment_names=[experiment], output_format="list")) == 2
