"""SD2-base at full width on CPU: the real architecture (random weights) through the user's commands.

The base is written into a Hugging Face hub cache as `stabilityai/stable-diffusion-2-base`, so
`finetune --base-model stabilityai/stable-diffusion-2-base` and `generate` run exactly as a user's
would, offline, only at 128 px and for 2 steps. Each stage runs as its own process (the console
script), so the peak memory it logs is its own.
"""
import json
import math
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from PIL import Image

from harness.dualgen.tiny import build_sd2_shaped_components, count_params, save_components
from harness.schema import METRIC_PEAK_RSS_GIB, STAGE_FINETUNE, STAGE_GENERATE, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_STAGE

pytestmark = pytest.mark.slow

SD2_ID = "stabilityai/stable-diffusion-2-base"
REVISION = "1cb61502fc8b634cdb04e7cd69e06051a728bedf"
LOSSES = ("train/loss", "train/loss_diffusion", "train/loss_bce", "train/loss_dice")


@pytest.fixture(scope="module")
def sd2_home(tmp_path_factory):
    """HF_HOME with the SD2-shaped base cached at REVISION (refs/main), as a download leaves it (the files
    stored in the snapshot folder itself, as huggingface_hub does where it cannot make symlinks);
    returns (HF_HOME, parameter counts)."""
    home = tmp_path_factory.mktemp("hf")
    repo = home / "hub" / ("models--" + SD2_ID.replace("/", "--"))
    parts = build_sd2_shaped_components(seed=0)
    counts = {name: count_params(parts[name]) for name in ("unet", "vae", "text_encoder")}
    save_components(parts, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return home, counts


def stage(args, home, mlflow_store):
    """`skindualgen <args>` in a process of its own, offline, on the session's store."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": mlflow_store}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sd2_base_shaped_finetunes_and_generates_at_128px_on_cpu(sd2_home, isic_dir, experiment, mlflow_store,
                                                                  tmp_path):
    home, counts = sd2_home
    assert counts["unet"] > 860e6 and counts["text_encoder"] > 340e6      # SD2-base: 866M UNet, 340M OpenCLIP-H
    stage(["finetune", "--data-dir", str(isic_dir), "--base-model", SD2_ID, "--resolution", "128",
           "--train-batch-size", "1", "--max-train-steps", "2", "--mask-warmup-steps", "2", "--log-every", "1",
           "--gradient-checkpointing", "true", "--validation-epochs", "0", "--validation-steps", "1",
           "--checkpointing-steps", "0", "--output-dir", str(tmp_path / "ft"), "--experiment", experiment],
          home, mlflow_store)
    client = mlflow.tracking.MlflowClient()
    (ft,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert ft.info.status == "FINISHED"
    assert (ft.data.tags[TAG_BASE_MODEL], ft.data.tags[TAG_BASE_REVISION]) == (SD2_ID, REVISION)
    assert ft.data.metrics["params/total"] > sum(counts.values())      # + LoRA and the mask channels
    for name in LOSSES:                                   # both steps, every term finite
        history = client.get_metric_history(ft.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2] and all(math.isfinite(m.value) for m in history), name
    # the widened VAE of the saved model decodes 4 channels (RGB + mask)
    vae_config = json.loads((tmp_path / "ft" / "model" / "vae" / "config.json").read_text())
    assert (vae_config["in_channels"], vae_config["out_channels"], vae_config["block_out_channels"]) == \
        (4, 4, [128, 256, 512, 512])

    stage(["generate", "--model-uri", f"runs:/{ft.info.run_id}/model", "--classes", "melanoma", "--per-class", "1",
           "--num-inference-steps", "2", "--resolution", "128", "--output-dir", str(tmp_path / "gen"),
           "--experiment", experiment], home, mlflow_store)
    (image_file,) = (tmp_path / "gen" / "images" / "melanoma").iterdir()
    (mask_file,) = (tmp_path / "gen" / "masks" / "melanoma").iterdir()
    image, mask = Image.open(image_file), np.asarray(Image.open(mask_file))
    assert image.mode == "RGB" and image.size == (128, 128) and np.asarray(image).std() > 0
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}

    # peak memory, logged by each stage: more than the fp32 weights it holds (4 bytes per parameter)
    weights_gib = 4 * sum(counts.values()) / 2**30
    peaks = {run.data.tags[TAG_STAGE]: run.data.metrics[METRIC_PEAK_RSS_GIB]
             for run in mlflow.search_runs(experiment_names=[experiment], output_format="list")}
    print(f"SD2-shaped at 128 px on CPU: fp32 weights {weights_gib:.2f} GiB, peak RSS {peaks}")
    assert set(peaks) == {STAGE_FINETUNE, STAGE_GENERATE} and min(peaks.values()) > weights_gib
