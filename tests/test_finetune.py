"""finetune / generate on a small SD2-shaped base: losses, artifacts, resume equality, NaN handling,
seeded generation, registry URIs. Uses a randomly initialised tiny base saved to a local folder (the
same `load_base` path as the shipped pre-trained one) to stay fast; test_pipeline_e2e.py fine-tunes
the shipped weights."""
import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from harness.config import FinetuneConfig, GenerateConfig
from harness.data import load_dataset
from harness.data.validate import validate
from harness.dualgen.generate import generate, plan, resolve_model_uri
from harness.dualgen.mlflow_model import ModelURIError
from harness.dualgen.train import NonFiniteLossError, finetune
from harness.schema import (
    STAGE_FINETUNE, STAGE_GENERATE, TAG_FINETUNE_RUN, TAG_MODEL_VERSION, TAG_PREDICTION_TYPE, TAG_RESUMED_FROM,
    TAG_STAGE,
)


@pytest.fixture
def cfg_for(tiny_folder, demo_small, small):
    """`cfg_for(out, **kw)`: the test profile's fine-tune on demo_small, here 6 steps with a checkpoint every 3."""
    def cfg_for(out, **kw):
        return small(FinetuneConfig, **{"data_dir": str(demo_small), "base_model": str(tiny_folder),
                                        "max_train_steps": 6, "checkpointing_steps": 3, "output_dir": str(out),
                                        "test_fraction": 0.25, **kw})
    return cfg_for


def test_finetune_logs_losses_share_and_artifacts(cfg_for, experiment, tmp_path):
    cfg = cfg_for(tmp_path / "ft", mask_loss_weighting="none")   # Eq. 8 literally
    run_id = finetune(cfg, experiment=experiment, progress=False)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_STAGE] == STAGE_FINETUNE
    assert run.data.tags[TAG_PREDICTION_TYPE] == "epsilon"
    assert run.data.params["lora_rank"] == "4" and run.data.params["learning_rate"] == "0.0001"
    client = mlflow.tracking.MlflowClient()
    for key in ("train/loss", "train/loss_diffusion", "train/loss_bce", "train/loss_dice"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5, 6]
    total = client.get_metric_history(run_id, "train/loss")[0].value
    parts = sum(client.get_metric_history(run_id, f"train/loss_{k}")[0].value for k in ("diffusion", "bce", "dice"))
    assert total == pytest.approx(parts, rel=1e-5)                 # lambdas = 1
    assert run.data.metrics["params/unet_trainable_share_pct"] < 10.0  # > 90 % fewer trainable (UNet)
    assert run.data.metrics["params/reduction_pct"] > 90.0
    arts = {a.path for a in client.list_artifacts(run_id, "dualgen")}
    assert {"dualgen/lora", "dualgen/vae", "dualgen/mask_channels.safetensors", "dualgen/training.json"} <= arts
    lora = client.list_artifacts(run_id, "dualgen/lora")
    assert [a.path for a in lora] == ["dualgen/lora/pytorch_lora_weights.safetensors"]
    assert any(a.path.startswith("images") for a in client.list_artifacts(run_id))   # validation grid
    # checkpoints with a total limit
    assert sorted(p.name for p in (tmp_path / "ft").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    # the pyfunc model generates
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    import pandas as pd
    out = model.predict(pd.DataFrame({"class_name": ["melanoma"], "seed": [3]}),
                        params={"num_inference_steps": 2, "guidance_scale": 1.22, "resolution": 32})
    assert out.image_png[0][:4] == b"\x89PNG" and out.mask_png[0][:4] == b"\x89PNG"


def test_resume_gives_the_same_weights(cfg_for, experiment, tmp_path):
    full = cfg_for(tmp_path / "a", max_train_steps=8, checkpointing_steps=3)
    finetune(full, experiment=experiment, progress=False)
    part = cfg_for(tmp_path / "b", max_train_steps=8, checkpointing_steps=3)
    with pytest.raises(KeyboardInterrupt):
        finetune(part, experiment=experiment, progress=False, stop_after_step=5)   # "killed" after step 5
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and not (tmp_path / "b" / "model").exists()
    # the same command again, no --resume-from-checkpoint: it continues its folder's latest checkpoint
    # (never step 0 over them, which would let the checkpoint limit delete them)
    again = finetune(part, experiment=experiment, progress=False)
    run = mlflow.get_run(again)
    assert run.data.tags[TAG_RESUMED_FROM].endswith("checkpoint-3") and run.data.metrics["resumed_from_step"] == 3
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and (tmp_path / "b" / "checkpoint-6").is_dir()
    # a checkpoint of other settings is refused with a clear message, not trained over
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match="cannot resume, the run differs from the checkpoint in lora_rank"):
        finetune(cfg_for(tmp_path / "b", max_train_steps=8, checkpointing_steps=3, lora_rank=8),
                 experiment=experiment, progress=False)
    for name in ("lora/pytorch_lora_weights.safetensors", "mask_channels.safetensors"):
        a, b = load_file(tmp_path / "a" / "model" / name), load_file(tmp_path / "b" / "model" / name)
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # and training did move the weights
    first = load_file(tmp_path / "a" / "checkpoint-3" / "mask_channels.safetensors")
    last = load_file(tmp_path / "a" / "model" / "mask_channels.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in first)
    statuses = sorted(r.info.status for r in mlflow.search_runs(experiment_names=[experiment], output_format="list"))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]          # the interrupted one: KILLED, not FAILED


def test_resume_refuses_a_different_config(cfg_for, experiment, tmp_path):
    finetune(cfg_for(tmp_path / "c", max_train_steps=3), experiment=experiment, progress=False)
    with pytest.raises(ValueError, match="lora_rank: 4 -> 8"):
        finetune(cfg_for(tmp_path / "c", max_train_steps=6, lora_rank=8, resume_from_checkpoint="latest"),
                 experiment=experiment, progress=False)


def test_bf16_mixed_precision_trains_the_mask_row_in_fp32(cfg_for, tiny_folder, experiment, tmp_path):
    """bf16 autocast on CPU, the path a GPU takes: the frozen VAE is bf16 while its trained mask layer
    stays fp32 (a conv mixing the two failed before, found by the GPU check), and the RGB rows of that
    layer keep their pretrained values."""
    cfg = cfg_for(tmp_path / "bf", mixed_precision="bf16", max_train_steps=3, mask_warmup_steps=3,
                  checkpointing_steps=0)
    run_id = finetune(cfg, experiment=experiment, progress=False)
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "train/loss")
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    trained = load_file(tmp_path / "bf" / "model" / "mask_channels.safetensors")
    weight = trained["decoder.conv_out.weight"]
    assert weight.dtype == torch.float32
    base = load_file(tiny_folder / "vae" / "diffusion_pytorch_model.safetensors")["decoder.conv_out.weight"]
    assert torch.equal(weight[:3].to(torch.bfloat16).float(), base.to(torch.bfloat16).float())
    initial = -base.to(torch.bfloat16).float().mean(dim=0)          # widen_vae's mask row, from bf16 weights
    assert (weight[3] - initial).abs().max() > 1e-3                   # the mask row learned


def test_nan_loss_stops_with_failed_run(cfg_for, experiment, tmp_path):
    cfg = cfg_for(tmp_path / "n", lambda_bce=float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        finetune(cfg, experiment=experiment, progress=False)
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FAILED"
    assert not (tmp_path / "n" / "model").exists()


@pytest.fixture
def finetuned(cfg_for, experiment, tmp_path):
    return finetune(cfg_for(tmp_path / "ft", max_train_steps=2), experiment=experiment, progress=False)


@pytest.fixture
def gen_cfg(small):
    """`gen_cfg(uri, out, **kw)`: the test profile's generate, here 2 per class, seed 5."""
    def gen_cfg(uri, out, **kw):
        return small(GenerateConfig, **{"model_uri": uri, "per_class": 2, "output_dir": str(out), "seed": 5, **kw})
    return gen_cfg


def test_generate_writes_a_dataset_and_is_seeded(finetuned, gen_cfg, experiment, tmp_path):
    uri = f"runs:/{finetuned}/model"
    run_a, out_a = generate(gen_cfg(uri, tmp_path / "g1"), experiment=experiment, progress=False)
    _, out_b = generate(gen_cfg(uri, tmp_path / "g2"), experiment=experiment, progress=False)
    _, out_c = generate(gen_cfg(uri, tmp_path / "g3", batch_size=3), experiment=experiment, progress=False)
    ds = load_dataset(out_a)
    assert len(ds) == 14 and len(ds.classes) == 7
    validate(ds, progress=False)                                    # masks binary, sizes match
    files_a = sorted(p.relative_to(out_a) for p in out_a.rglob("*.png"))
    # same seeds -> identical pixels; another batch size only changes float summation order (<= 2 levels)
    import numpy as np
    from PIL import Image
    for other, tol in ((out_b, 0), (out_c, 2)):
        names = {p.name.split("_")[-1]: p for p in other.rglob("*.png") if "images" in p.parts}
        for rel in files_a:
            if rel.parts[0] == "images":
                a = np.asarray(Image.open(out_a / rel)).astype(int)
                b = np.asarray(Image.open(names[rel.name.split("_")[-1]])).astype(int)
                assert np.abs(a - b).max() <= tol
    manifest = (out_a / "manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("id,image,mask,label,description,split") and len(manifest) == 15
    run = mlflow.get_run(run_a)
    assert run.data.tags[TAG_FINETUNE_RUN] == finetuned
    assert run.data.metrics["n_generated"] == 14


def test_generate_auto_takes_the_profile_the_model_was_finetuned_with(cfg_for, experiment, tmp_path):
    from harness.config import with_profile
    from harness.dualgen.generate import model_profile
    from harness.schema import TAG_PROFILE
    cfg = cfg_for(tmp_path / "ft", max_train_steps=2)
    cfg.profile_choice = ("demo", "--profile demo")           # as with_profile leaves it
    run_id = finetune(cfg, experiment=experiment, progress=False)
    assert mlflow.get_run(run_id).data.tags[TAG_PROFILE] == "demo"
    made_with = model_profile(f"runs:/{run_id}/model")
    assert made_with == "demo"
    chosen = with_profile(GenerateConfig, STAGE_GENERATE, "auto", {"model_uri": f"runs:/{run_id}/model"}, made_with)
    assert chosen.profile_choice == ("demo", "auto: the model's fine-tune ran with demo -> demo")
    assert chosen.resolution == 64


def test_plan_balance_tops_up_match_real_copies_counts_per_class_fixed():
    training = {"classes": ["a", "b", "c"], "class_counts": {"a": 10, "b": 4, "c": 7}}
    assert plan(training, GenerateConfig(balance=True)) == [("a", 0), ("b", 6), ("c", 3)]
    assert plan(training, GenerateConfig(match_real=True)) == [("a", 10), ("b", 4), ("c", 7)]
    assert plan(training, GenerateConfig(match_real=True, classes="c,a")) == [("c", 7), ("a", 10)]
    assert plan(training, GenerateConfig(per_class=2, classes="b")) == [("b", 2)]
    for bad in (GenerateConfig(per_class=2, balance=True), GenerateConfig(balance=True, match_real=True),
                GenerateConfig(per_class=2, match_real=True), GenerateConfig()):
        with pytest.raises(ValueError, match="exactly one of --per-class N, --balance or --match-real"):
            plan(training, bad)
    with pytest.raises(ValueError, match=r"class\(es\) \['z'\] unknown"):
        plan(training, GenerateConfig(per_class=1, classes="z"))


def test_balance_end_to_end_uses_training_counts(finetuned, gen_cfg, experiment, tmp_path):
    """The fixture's training split holds equal counts, so --balance plans nothing: the run still
    FINISHES with a valid, empty, digested set (the unequal case is planned in the test above)."""
    out = tmp_path / "bal"
    run_id, _ = generate(gen_cfg(f"runs:/{finetuned}/model", out, per_class=0, balance=True),
                      experiment=experiment, progress=False)
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{finetuned}/dualgen/training.json"))
    counts = json.loads(folder.read_text())["class_counts"]
    top = max(counts.values())
    expected = {c: top - n for c, n in counts.items() if top - n > 0}
    assert load_dataset(out / "manifest.csv").class_counts() == expected
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["n_generated"] == sum(expected.values())

def test_registry_uris_resolve_or_list_what_exists(finetuned, experiment):
    client = mlflow.tracking.MlflowClient()
    name = f"sdg-{experiment}"
    mv = mlflow.register_model(f"runs:/{finetuned}/model", name)
    client.set_registered_model_alias(name, "champion", mv.version)
    assert resolve_model_uri(f"models:/{name}@champion")[0] == f"models:/{name}/{mv.version}"
    assert resolve_model_uri(f"models:/{name}/{mv.version}")[1][TAG_MODEL_VERSION] == f"{name}/{mv.version}"
    with pytest.raises(ModelURIError, match="has no alias 'gold'; aliases: champion->v1"):
        resolve_model_uri(f"models:/{name}@gold")
    with pytest.raises(ModelURIError, match=r"has no version 9; versions: \[1\]"):
        resolve_model_uri(f"models:/{name}/9")
    with pytest.raises(ModelURIError, match=f"no registered model 'nope'.*{name}"):
        resolve_model_uri("models:/nope@champion")


def test_demo_profile_per_class_gives_way_to_balance_and_match_real():
    from harness.config import with_profile
    training = {"classes": ["a", "b"], "class_counts": {"a": 5, "b": 2}}
    demo = with_profile(GenerateConfig, STAGE_GENERATE, "demo", {})
    assert (demo.per_class, demo.resolution) == (4, 64)
    match = with_profile(GenerateConfig, STAGE_GENERATE, "demo", {"match_real": True, "per_class": None})
    assert (match.per_class, match.resolution) == (0, 64) and plan(training, match) == [("a", 5), ("b", 2)]
    balance = with_profile(GenerateConfig, STAGE_GENERATE, "demo", {"balance": True})
    assert plan(training, balance) == [("a", 0), ("b", 3)]
    both = with_profile(GenerateConfig, STAGE_GENERATE, "demo", {"match_real": True, "per_class": 3})
    with pytest.raises(ValueError, match="exactly one of"):      # an explicit count still conflicts
        plan(training, both)
