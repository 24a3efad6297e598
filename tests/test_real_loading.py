"""The loading paths real runs take, exercised offline with small files placed where the libraries look.

- A hub id as `--base-model`: the tiny SD2-shaped model written into a Hugging Face cache (the layout
  huggingface_hub itself writes: blobs, snapshot symlinks, refs/main) under a fresh HF_HOME, with
  HF_HUB_OFFLINE=1; finetune resolves the id (and a pinned revision) to the snapshot and tags it.
- A v-prediction base (as the 768-px SD2) through finetune, generate and evaluate; predict_x0 against
  the schedulers' own pred_original_sample.
- `--pretrained true`: torchvision checkpoints in $TORCH_HOME/hub/checkpoints/, timm's Swin-T and smp's
  encoders in the Hugging Face cache, torch-fidelity's Inception and torchvision's AlexNet (LPIPS) in
  $TORCH_HOME. The files hold randomly initialised weights of the real architectures (with their
  1000-class ImageNet heads): the check is that the code under test finds and loads them, and says
  exactly where they go when they are not there.
"""
import hashlib
import json
import os
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from harness import quality
from harness.config import EvaluateConfig, FinetuneConfig, GenerateConfig
from harness.downstream import classify, segment
from harness.dualgen.base import TINY_BASE_DIR, BaseModelError
from harness.dualgen.generate import generate
from harness.dualgen.losses import diffusion_target, predict_x0
from harness.dualgen.train import finetune
from harness.schema import (
    STAGE_EVALUATE, STAGE_FINETUNE, STAGE_GENERATE, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_COMPARABLE,
    TAG_EXTRACTOR, TAG_FINETUNE_RUN, TAG_GENERATE_RUN, TAG_LPIPS_NET, TAG_PREDICTION_TYPE, TAG_STAGE,
)

BASE_ID = "tiny-org/sd2-base"       # one commit, epsilon
V_ID = "tiny-org/sd2-v"             # two commits: V_REV (v_prediction) and main (epsilon)
BASE_REV = hashlib.sha1(b"sd2-base commit 1").hexdigest()
V_REV = hashlib.sha1(b"sd2-v commit 1").hexdigest()
V_MAIN = hashlib.sha1(b"sd2-v commit 2").hexdigest()

# torchvision's DEFAULT ImageNet weights: the file names its downloads are saved under
TORCHVISION_FILES = {"densenet121": "densenet121-a639ec97.pth", "resnet34": "resnet34-b627a593.pth",
                     "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth"}
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
SWIN_REPO = "timm/swin_tiny_patch4_window7_224.ms_in1k"
SMP_REPOS = {"unet": ("smp-hub/resnet34.imagenet", "7a57b34f723329ff020b3f8bc41771163c519d0c"),
             "deeplabv3plus": ("smp-hub/resnet50.imagenet", "00cb74e366966d59cd9a35af57e618af9f88efe9")}
# the classifiers' heads, replaced by a num_classes one
HEADS = {"densenet121": "classifier.", "resnet34": "fc.", "squeezenet1_1": "classifier.1.", "swin_tiny": "head.fc."}
NUM_CLASSES = 5


# ------------------------------------------------------------------------------------------------
# The caches
# ------------------------------------------------------------------------------------------------

def add_snapshot(cache: Path, repo_id: str, revision: str, files: dict[str, bytes], main: bool = True) -> Path:
    """Files of one commit of a model repo, as huggingface_hub's downloads leave them: the bytes in
    blobs/<hash>, snapshots/<revision>/<path> a relative symlink to its blob, refs/main the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_prediction_type(files: dict[str, bytes], kind: str) -> dict[str, bytes]:
    config = json.loads(files["scheduler/scheduler_config.json"])
    return {**files, "scheduler/scheduler_config.json": json.dumps({**config, "prediction_type": kind}).encode()}


def safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in state.items()})


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """Fresh HF_HOME and TORCH_HOME for this module, offline (set after huggingface_hub was imported)."""
    root = tmp_path_factory.mktemp("homes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "hf"))
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            mp.delenv(name, raising=False)
        yield {"hf_cache": root / "hf" / "hub", "checkpoints": root / "torch" / "hub" / "checkpoints"}


@pytest.fixture(scope="module")
def bases(homes, tiny_folder):
    """BASE_ID at BASE_REV (main); V_ID at V_REV (v_prediction) and at V_MAIN (main, epsilon, the other
    files the same blobs, as the hub cache shares unchanged files between commits)."""
    files = folder_files(tiny_folder)
    assert json.loads(files["scheduler/scheduler_config.json"])["prediction_type"] == "epsilon"
    add_snapshot(homes["hf_cache"], BASE_ID, BASE_REV, files)
    add_snapshot(homes["hf_cache"], V_ID, V_REV, with_prediction_type(files, "v_prediction"), main=False)
    add_snapshot(homes["hf_cache"], V_ID, V_MAIN, files)
    return homes["hf_cache"]


@pytest.fixture(scope="module")
def classifier_weights(homes):
    """torchvision checkpoints for three classifiers, timm's Swin-T in the hub cache: {model: file}."""
    import timm
    import torchvision
    torch.manual_seed(0)
    homes["checkpoints"].mkdir(parents=True, exist_ok=True)
    out = {}
    for name, file in TORCHVISION_FILES.items():
        out[name] = homes["checkpoints"] / file
        torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), out[name])
    swin = timm.create_model(classify.SWIN, num_classes=1000)
    out["swin_tiny"] = add_snapshot(homes["hf_cache"], SWIN_REPO, "1" * 40,
                                    {"model.safetensors": safetensors_bytes(swin.state_dict())}) / "model.safetensors"
    return out


@pytest.fixture(scope="module")
def segmenter_weights(homes):
    """smp's encoder weights in the hub cache at the revisions smp pins (a torchvision ResNet state dict
    with its ImageNet head, which smp's encoder drops on load): {model: file}."""
    import torchvision
    torch.manual_seed(1)
    out = {}
    for name, (repo_id, revision) in SMP_REPOS.items():
        resnet = getattr(torchvision.models, segment.SEGMENTERS[name].encoder)(weights=None)
        out[name] = add_snapshot(homes["hf_cache"], repo_id, revision,
                                 {"model.safetensors": safetensors_bytes(resnet.state_dict())}) / "model.safetensors"
    return out


@pytest.fixture(scope="module")
def metric_weights(homes):
    """torch-fidelity's Inception and torchvision's AlexNet in torch hub's checkpoint folder."""
    import torchvision
    homes["checkpoints"].mkdir(parents=True, exist_ok=True)
    _, random_inception = quality._inception_class()
    torch.save(random_inception(seed=1).state_dict(), homes["checkpoints"] / INCEPTION_FILE)
    torch.manual_seed(2)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), homes["checkpoints"] / ALEXNET_FILE)
    return {"inception": homes["checkpoints"] / INCEPTION_FILE, "alexnet": homes["checkpoints"] / ALEXNET_FILE}


@pytest.fixture(scope="module")
def demo_tiny(tmp_path_factory):
    """The demo generator at 2 per class (7 train and 7 test images): evaluate's Inception pass stays short."""
    from harness.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", seed=0, per_class=2, min_size=32, max_size=40)


@pytest.fixture
def finetune_cfg(small):
    """`finetune_cfg(data, out, **kw)`: the test profile's fine-tune, here with 2 mask warm-up steps."""
    def finetune_cfg(data, out, **kw):
        return small(FinetuneConfig, **{"data_dir": str(data), "mask_warmup_steps": 2, "output_dir": str(out),
                                        "test_fraction": 0.25, **kw})
    return finetune_cfg


# ------------------------------------------------------------------------------------------------
# 1. A hub id as the base model
# ------------------------------------------------------------------------------------------------

def test_hub_id_resolves_to_the_cached_snapshot_and_its_commit_is_tagged(bases, demo_tiny, finetune_cfg, experiment,
                                                                          tmp_path):
    from huggingface_hub import try_to_load_from_cache
    snapshot = bases / "models--tiny-org--sd2-base" / "snapshots" / BASE_REV
    # the cache is laid out as huggingface_hub reads it
    assert try_to_load_from_cache(BASE_ID, "unet/config.json", cache_dir=bases) == str(snapshot / "unet" / "config.json")
    assert try_to_load_from_cache(V_ID, "model_index.json", cache_dir=bases, revision=V_REV) is not None

    run = mlflow.get_run(finetune(finetune_cfg(demo_tiny, tmp_path / "ft", base_model=BASE_ID), experiment=experiment,
                                  progress=False))
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STAGE] == STAGE_FINETUNE
    assert run.data.tags[TAG_BASE_MODEL] == BASE_ID
    assert run.data.tags[TAG_BASE_REVISION] == BASE_REV                 # refs/main -> the commit
    assert run.data.tags[TAG_PREDICTION_TYPE] == "epsilon"

    # an id, or a commit, that is not in the cache: the id, the revision and the places the files go in
    missing = bases / "models--tiny-org--not-there"
    for base_model, revision, places in (
            ("tiny-org/not-there", "", [missing / "snapshots", missing / "refs" / "main"]),
            (BASE_ID, "f" * 40, [bases / "models--tiny-org--sd2-base" / "snapshots" / ("f" * 40)])):
        with pytest.raises(BaseModelError) as err:
            finetune(finetune_cfg(demo_tiny, tmp_path / "missing", base_model=base_model, revision=revision),
                     experiment=experiment, progress=False)
        message = str(err.value)
        assert repr(base_model) in message and f"revision {revision or 'main'}" in message
        assert all(str(place) in message for place in places) and f"hf download {base_model}" in message
    assert len(mlflow.search_runs(experiment_names=[experiment], output_format="list")) == 1   # no run started


# ------------------------------------------------------------------------------------------------
# 2. v-prediction
# ------------------------------------------------------------------------------------------------

def test_v_prediction_base_pinned_by_revision_finetunes_generates_and_evaluates(
        bases, metric_weights, demo_tiny, finetune_cfg, small, experiment, tmp_path):
    ft_id = finetune(finetune_cfg(demo_tiny, tmp_path / "ft", base_model=V_ID, revision=V_REV),
                     experiment=experiment, progress=False)
    ft = mlflow.get_run(ft_id)
    assert ft.info.status == "FINISHED"
    # the pinned commit was loaded, not main (whose scheduler is epsilon)
    assert ft.data.tags[TAG_BASE_REVISION] == V_REV and ft.data.tags[TAG_PREDICTION_TYPE] == "v_prediction"
    # a hub base pinned to a commit is not copied into the model: generate loads it from the cache again
    meta = json.loads((tmp_path / "ft" / "model" / "dualgen.json").read_text())
    assert meta["base_included"] is False
    assert meta["base"] == {"model_id": V_ID, "revision": V_REV, "prediction_type": "v_prediction"}

    gen_id, out = generate(small(GenerateConfig, model_uri=f"runs:/{ft_id}/model", classes="melanoma,dermatofibroma",
                                 num_inference_steps=2, output_dir=str(tmp_path / "gen"), seed=5),
                           experiment=experiment, progress=False)
    gen = mlflow.get_run(gen_id)
    assert gen.info.status == "FINISHED" and gen.data.tags[TAG_STAGE] == STAGE_GENERATE
    assert gen.data.tags[TAG_FINETUNE_RUN] == ft_id and gen.data.metrics["n_generated"] == 2
    assert len(list((out / "images").rglob("*.png"))) == 2

    ev_id = quality.evaluate(small(EvaluateConfig, real=str(demo_tiny), fake=f"runs:/{gen_id}", test_fraction=0.25,
                                   cache_dir=str(tmp_path / "stats"), lpips_pairs=4, judges="none"),
                             experiment=experiment, progress=False)
    ev = mlflow.get_run(ev_id)
    assert ev.info.status == "FINISHED" and ev.data.tags[TAG_STAGE] == STAGE_EVALUATE
    assert ev.data.tags[TAG_GENERATE_RUN] == gen_id and ev.data.tags[TAG_FINETUNE_RUN] == ft_id
    assert ev.data.metrics["n_real"] == 7 and ev.data.metrics["n_fake"] == 2 and ev.data.metrics["fid"] >= 0
    # with the standard weights in place the run says its numbers are comparable
    assert ev.data.tags[TAG_COMPARABLE] == "true" and ev.data.tags[TAG_EXTRACTOR] == "standard:inception-v3-compat"


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_predict_x0_equals_the_schedulers_pred_original_sample(kind):
    """At timesteps across the SD2 schedule, batched, against diffusers' own step() of DDPM and DDIM."""
    from diffusers import DDIMScheduler, DDPMScheduler
    config = DDIMScheduler.load_config(TINY_BASE_DIR, subfolder="scheduler")     # SD2-base's settings
    g = torch.Generator().manual_seed(0)
    timesteps = torch.tensor([0, 1, 250, 500, 750, 998, 999])
    z_t = torch.randn(len(timesteps), 4, 8, 8, generator=g)
    output = torch.randn(len(timesteps), 4, 8, 8, generator=g)
    for cls in (DDPMScheduler, DDIMScheduler):
        scheduler = cls.from_config({**config, "prediction_type": kind})
        if cls is DDIMScheduler:
            scheduler.set_timesteps(50)
        ours = predict_x0(scheduler, z_t, output, timesteps)
        for i, t in enumerate(timesteps.tolist()):
            step = scheduler.step(output[i:i + 1], t, z_t[i:i + 1], generator=g)
            torch.testing.assert_close(ours[i:i + 1], step.pred_original_sample, rtol=1e-5, atol=1e-5)
        # and the training target of a noised latent gives that latent back
        x0 = torch.randn(len(timesteps), 4, 8, 8, generator=g)
        noise = torch.randn(len(timesteps), 4, 8, 8, generator=g)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        torch.testing.assert_close(predict_x0(scheduler, noisy, diffusion_target(scheduler, x0, noise, timesteps),
                                              timesteps), x0, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# 3. Pretrained backbones and the standard metric weights
# ------------------------------------------------------------------------------------------------

def assert_loaded(model: torch.nn.Module, expected: dict, skip: str = "") -> None:
    """Every tensor of the file (but those starting with `skip`) is in the model, equal."""
    got = model.state_dict()
    checked = [k for k in expected if not (skip and k.startswith(skip))]
    assert checked and len(checked) >= len(expected) - 2
    for key in checked:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("name", classify.MODELS)
def test_pretrained_classifier_loads_the_placed_imagenet_weights(classifier_weights, name):
    file = classifier_weights[name]
    expected = load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)
    model = classify.build_model(name, NUM_CLASSES, 224, pretrained=True)
    assert_loaded(model, expected, skip=HEADS[name])
    assert model.state_dict()[HEADS[name] + "weight"].shape[0] == NUM_CLASSES
    assert expected[HEADS[name] + "weight"].shape[0] == 1000


@pytest.mark.parametrize("name", segment.MODELS)
def test_pretrained_segmenter_loads_the_placed_encoder_weights(segmenter_weights, name):
    expected = {k: v for k, v in load_file(segmenter_weights[name]).items() if not k.startswith("fc.")}
    model = segment.build_model(name, pretrained=True)
    assert_loaded(model.encoder, expected)


def test_missing_backbone_weights_name_the_file_and_where_it_goes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints, cache = tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "hf" / "hub"
    for name, file in TORCHVISION_FILES.items():
        with pytest.raises(classify.PretrainedUnavailable, match=str(checkpoints / file)):
            classify.build_model(name, NUM_CLASSES, 224, pretrained=True)
    with pytest.raises(classify.PretrainedUnavailable) as err:
        classify.build_model("swin_tiny", NUM_CLASSES, 224, pretrained=True)
    assert SWIN_REPO in str(err.value) and str(cache / ("models--" + SWIN_REPO.replace("/", "--"))) in str(err.value)
    for name, (repo_id, revision) in SMP_REPOS.items():
        with pytest.raises(segment.PretrainedUnavailable) as err:
            segment.build_model(name, pretrained=True)
        folder = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision
        assert repo_id in str(err.value) and str(folder / "model.safetensors") in str(err.value)
    # without --pretrained nothing is looked for
    assert classify.build_model("squeezenet1_1", NUM_CLASSES, 224) is not None


def test_standard_fid_and_lpips_weights_are_found_else_the_fallback_is_tagged(metric_weights, monkeypatch,
                                                                                 tmp_path):
    fid, lpips_net = quality.build_fid_extractor(), quality.build_lpips()
    assert fid.id == "standard:inception-v3-compat" and lpips_net.id == "standard:lpips-alex-v0.1"
    assert_loaded(fid.net, torch.load(metric_weights["inception"], weights_only=True))
    alexnet = torch.load(metric_weights["alexnet"], weights_only=True)
    assert torch.equal(lpips_net.net.net.slice1[0].weight, alexnet["features.0.weight"])
    assert torch.equal(lpips_net.net.net.slice5[-2].weight, alexnet["features.10.weight"])
    tags = quality.extractor_tags(fid, lpips_net)
    assert tags[TAG_COMPARABLE] == "true" and tags[TAG_LPIPS_NET] == "standard:lpips-alex-v0.1"

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))             # nothing there
    fid, lpips_net = quality.build_fid_extractor(), quality.build_lpips()
    tags = quality.extractor_tags(fid, lpips_net)
    assert tags[TAG_EXTRACTOR] == "fallback:inception-random-he-seed0"
    assert tags[TAG_LPIPS_NET] == "fallback:lpips-alex-random-seed0" and tags[TAG_COMPARABLE] == "false"
