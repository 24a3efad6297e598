"""The `segment` stage (paper Sec. 4.3.2, Tables 2 and 3): one model x one training set.

Read top to bottom: `build_model` (smp U-Net / DeepLabV3+), `train_one_epoch` (the training step),
`evaluate` (predict every image, score it, write its mask), `segment` (the run).

Protocol (paper): U-Net with a ResNet34 encoder, DeepLabV3+ with a ResNet50 encoder (smp,
encoder_weights=None unless --pretrained), 512 px (LANCZOS images, nearest masks), batch 8, 20
epochs, Adam lr 1e-3, smp Dice loss, mixed precision on GPU only; albumentations paired
augmentation (harness.data.augment.paired_augmentation: the same spatial transform on image and
mask). The training set is one of real / synth / hybrid (sets.py); no cross-validation (the paper
describes k-fold for classification only). The final model is evaluated on the real test split and
optionally on `--eval-data` (HAM10000, every image: the lesion class does not matter here).

Evaluation at the ground truth's resolution: the model sees the image resized to image_size; its
logits are resized back (bilinear) to the ground-truth mask's own size, thresholded there
(sigmoid(logit) > 0.5) and compared with the mask as it is on disk, so Dice, IoU, ASD and HD (in
pixels of the original mask) do not depend on the training size. Per image:
dice, iou (%), asd, hd (px) with the empty-mask rule of metrics.py, which never crashes and never
drops an image: both empty -> dice = iou = 100, asd = hd = 0; exactly one empty -> dice = iou = 0,
asd = hd = the image diagonal. Images whose prediction / ground truth is empty are counted in
`n_empty_pred` / `n_empty_gt` (`ham_n_empty_pred`, ... for HAM).

`--seeds N` trains N models (seeds seed, seed + 1000, ...), each scored on every eval set; the
reported numbers are their mean, `<metric>_seed_std` their spread and `seed<seed>/<metric>` each
one's; intervals resample the images and the seed models (harness/intervals.py).

Logged: params (the config), per-epoch `train/loss`, `time/step_seconds`; `dice`, `iou`, `asd`, `hd`,
`n_empty_pred`, `n_empty_gt` (and `ham_*`) with `_ci_low`/`_ci_high`; per-image scores
`segmentation/{test,ham}.csv` (one row per seed and image); predicted masks
`pred_masks/{test,ham}/<id>.png` (0/255; `.../seed<seed>/` with several seeds); the first seed's model
as the MLflow pyfunc `model` (raw RGB images in, masks out: mlflow_models.py; `load_segmenter(run_id)`
rebuilds the torch module); the training-set composition. `train_segmenter` and
`predict_masks` are the units the run is made of (reference.py reuses them).
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from harness import tracking
from harness.config import SegmentConfig
from harness.data.augment import IMAGENET_MEAN, IMAGENET_STD, PairDataset, load_pair, paired_augmentation
from harness.data.records import Sample
from harness.downstream import decoded, runtime
from harness.downstream.metrics import segmentation_scores, summarize_segmentation
from harness.downstream.mlflow_models import example_image, log_downstream_model
from harness.downstream.sets import DownstreamError, PretrainedUnavailable, load_inputs, log_inputs, seed_list
from harness.hub import hf_cache_place, hf_hub_cache, offline
from harness.intervals import PERCENT, Interval, ci_params, interval_metrics, interval_tags, mean_intervals
from harness.schema import (
    HAM_PREFIX, METRIC_DICE, METRIC_IOU, SEGMENT_METRICS, SEGMENT_MODELS, STAGE_SEGMENT, TAG_DEVICE, TAG_MODEL,
    TAG_TRAIN_SET,
)


@dataclass(frozen=True)
class SegmenterSpec:
    """Per-model facts: the smp architecture class and its encoder."""
    arch: str
    encoder: str


SEGMENTERS = {
    "unet": SegmenterSpec(arch="Unet", encoder="resnet34"),
    "deeplabv3plus": SegmenterSpec(arch="DeepLabV3Plus", encoder="resnet50"),
}
assert tuple(SEGMENTERS) == SEGMENT_MODELS, "one spec per model of schema.SEGMENT_MODELS, in its order"
MODELS = SEGMENT_MODELS
THRESHOLD = 0.5
SCORE_KEYS = (*SEGMENT_METRICS, "n_empty_pred", "n_empty_gt")


def build_model(name: str, pretrained: bool = False) -> nn.Module:
    """smp U-Net (ResNet34) or DeepLabV3+ (ResNet50) with one output channel (the lesion logit).

    pretrained=True loads the encoder's ImageNet weights as smp's encoder_weights="imagenet" does (the
    same hub repo, pinned revision and file, strict load_state_dict into the encoder), but from the
    Hugging Face cache chosen at call time (smp's own download has no cache_dir). When they cannot be
    had it raises PretrainedUnavailable naming the repo and the folder the file goes in."""
    if name not in MODELS:
        raise DownstreamError(f"--model must be one of {', '.join(MODELS)}, got {name!r}")
    import segmentation_models_pytorch as smp
    arch, encoder = SEGMENTERS[name].arch, SEGMENTERS[name].encoder
    weights = encoder_weights(encoder) if pretrained else None     # first: a missing file fails fast
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1)
    if weights is not None:
        model.encoder.load_state_dict(weights)
    return model


def encoder_weights(encoder: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of an smp encoder from its smp hub repo (downloaded into the Hugging Face
    cache when missing, unless HF_HUB_OFFLINE is set)."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]["imagenet"]
    repo_id, revision = settings["repo_id"], settings["revision"]
    try:
        path = hf_hub_download(repo_id, "model.safetensors", revision=revision, cache_dir=hf_hub_cache(),
                               local_files_only=offline())
    except Exception as e:
        raise PretrainedUnavailable(
            f"--pretrained: could not load the ImageNet weights of the {encoder} encoder ({type(e).__name__}: "
            f"{e}). This machine may be offline; put them at {hf_cache_place(repo_id, revision, 'model.safetensors')} "
            f"(hub repo {repo_id} at revision {revision}; `hf download {repo_id} model.safetensors --revision "
            f"{revision}` puts it there), or run with --pretrained false (random initialisation)") from e
    return load_file(path, device="cpu")


def load_segmenter(run_id: str) -> tuple[nn.Module, dict]:
    """A segment run's model (the first seed's), in eval mode, and its model.json, from its MLflow model."""
    from harness.downstream.mlflow_models import downstream_folder
    return load_folder(downstream_folder(f"runs:/{run_id}/model"))


def load_folder(folder: Path) -> tuple[nn.Module, dict]:
    """A segmenter from its model.pt + model.json folder, in eval mode."""
    info = json.loads((folder / "model.json").read_text())
    model = build_model(info["model"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), info


class StreamingPairs(PairDataset):
    """PairDataset without the decode cache: for one evaluation pass over a possibly large set."""

    def pair(self, i: int):
        return load_pair(self.samples[i], self.size)


# ---------------------------------------------------------------------------------------------
# Training step and evaluation
# ---------------------------------------------------------------------------------------------

def train_one_epoch(model, loader, loss_fn, optimizer, scaler, device, amp_dtype, bar=None) -> tuple[float, float]:
    """One pass: Dice loss on the lesion logit, Adam. Returns (mean loss, mean seconds per step)."""
    def compute_loss(batch):
        x, y = runtime.to_device(batch["image"], device), batch["mask"].to(device)
        with runtime.autocast(device, amp_dtype):
            logits = model(x)
        return loss_fn(logits.float(), y)
    return runtime.run_epoch(model, loader, compute_loss, optimizer, scaler, bar)


def train_segmenter(name: str, samples: list[Sample], cfg: SegmentConfig, device, amp_dtype, progress: bool,
                    seed: int, on_epoch=None) -> tuple[nn.Module, dict]:
    """Train `name` from scratch (seeded) on `samples` (image + mask) with the paper's recipe; return the
    model and {"losses": per-epoch mean Dice loss, "step_seconds": mean step time}. `on_epoch(epoch,
    loss)` is called after every epoch (the run logs its curve there)."""
    import segmentation_models_pytorch as smp
    torch.manual_seed(seed)
    model = runtime.prepare_model(build_model(name, cfg.pretrained), device)
    loss_fn = smp.losses.DiceLoss(mode="binary", from_logits=True)
    optimizer = runtime.adam(model, cfg.learning_rate)
    scaler = runtime.grad_scaler(device, amp_dtype)
    train_ds = PairDataset(samples, cfg.image_size, augment=paired_augmentation("paper"),
                           image_norm="imagenet", seed=seed)
    # decode + resize once (or read the pairs the classify / segment runs before this one cached), before
    # loader workers copy the dataset
    train_ds.fill(*decoded.pairs(samples, cfg.image_size, cfg.cache_dir, cfg.num_workers, progress, "decode train"))
    train_dl = runtime.loader(train_ds, cfg.batch_size, True, seed, cfg.num_workers, device, train=True)
    losses, step_seconds = [], []
    bar = tqdm(total=cfg.epochs * len(train_dl), desc=f"segment {name}", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        train_ds.set_epoch(epoch)
        loss, sec = train_one_epoch(model, train_dl, loss_fn, optimizer, scaler, device, amp_dtype, bar)
        losses.append(loss)
        step_seconds.append(sec)
        if on_epoch is not None:
            on_epoch(epoch, loss)
    bar.close()
    return model, {"losses": losses, "step_seconds": float(np.mean(step_seconds))}


def load_mask(sample: Sample) -> np.ndarray:
    """The ground-truth mask as on disk, bool (H, W)."""
    with Image.open(sample.mask) as mk:
        return np.asarray(mk.convert("L")) > 0


@torch.no_grad()
def predict_masks(model, samples: list[Sample], image_size: int, sizes: list[tuple[int, int]], device, amp_dtype,
                  batch_size: int = 8, num_workers: int = 0, progress: bool = False,
                  desc: str = "predict") -> list[np.ndarray]:
    """Predicted masks (bool, one (H, W) per sample, H x W = `sizes[i]`): the image at image_size through
    the model, the logits resized (bilinear) to sizes[i], then sigmoid > THRESHOLD."""
    model.eval()
    ds = StreamingPairs(samples, image_size, augment=None, image_norm="imagenet")
    dl = runtime.loader(ds, batch_size, False, 0, num_workers, device)
    out: list[np.ndarray | None] = [None] * len(samples)
    for batch in tqdm(dl, desc=desc, unit="batch", disable=not progress):
        with runtime.autocast(device, amp_dtype):
            logits = model(runtime.to_device(batch["image"], device)).float()      # (B, 1, S, S)
        for i, logit in zip(batch["index"].tolist(), logits):
            full = nn.functional.interpolate(logit[None], size=sizes[i], mode="bilinear", align_corners=False)
            out[i] = (torch.sigmoid(full[0, 0]) > THRESHOLD).cpu().numpy()
    return out


def evaluate(model, samples: list[Sample], name: str, cfg: SegmentConfig, device, amp_dtype, out_dir: Path,
             progress: bool = True, seed: int | None = None) -> tuple[list[dict], dict[str, float]]:
    """Predict, score and save the mask of every image of `samples` at its ground truth's resolution
    (masks of a run with several seeds under pred_masks/<set>/seed<seed>/). Returns (per-image rows, summary)."""
    gts = [load_mask(s) for s in samples]
    preds = predict_masks(model, samples, cfg.image_size, [g.shape for g in gts], device, amp_dtype,
                          cfg.batch_size, cfg.num_workers, progress, desc=f"evaluate {name}")
    folder = Path("pred_masks") / name / (f"seed{seed}" if seed is not None and cfg.seeds > 1 else "")
    (out_dir / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for s, pred, gt in zip(samples, preds, gts):
        path = folder / f"{s.id}.png"
        Image.fromarray(pred.astype(np.uint8) * 255).save(out_dir / path)
        rows.append({"seed": cfg.seed if seed is None else seed, "id": s.id, "label": s.label, "group": s.group,
                     **segmentation_scores(pred, gt), "pred_mask": path.as_posix()})
    return rows, summarize_segmentation(rows)


def score_intervals(rows_by_seed: list[list[dict]]) -> dict[str, Interval]:
    """The 95 % interval of each of SEGMENT_METRICS over one set: its images (a lesion's together) and
    the run's seed models resampled (harness/intervals.py); every seed's rows in the same image order."""
    scores = np.array([[[float(r[k]) for k in SEGMENT_METRICS] for r in rows] for rows in rows_by_seed])  # (M, N, 4)
    ranges = [PERCENT if k in (METRIC_DICE, METRIC_IOU) else (0.0, np.inf) for k in SEGMENT_METRICS]
    return dict(zip(SEGMENT_METRICS, mean_intervals(scores, [r["group"] for r in rows_by_seed[0]], bounds=ranges)))


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "id", "label", "group", "dice", "iou", "asd", "hd", "empty_pred",
                                               "empty_gt", "pred_mask"])
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def check_config(cfg: SegmentConfig) -> None:
    if cfg.model not in MODELS:
        raise DownstreamError(f"--model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    for name in ("image_size", "batch_size", "epochs", "seeds"):
        if getattr(cfg, name) < 1:
            raise DownstreamError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.image_size % 32:
        raise DownstreamError(f"--image-size must be a multiple of 32 (the encoders downsample 32x), "
                              f"got {cfg.image_size}")


def check_masks(sets: dict[str, list[Sample]]) -> None:
    missing = {name: [s.id for s in samples if s.mask is None] for name, samples in sets.items()}
    missing = {name: ids for name, ids in missing.items() if ids}
    if missing:
        raise DownstreamError("segmentation needs a mask for every image; without one: " + "; ".join(
            f"{name}: {len(ids)} (e.g. {', '.join(ids[:3])})" for name, ids in missing.items()))


def segment(cfg: SegmentConfig, experiment: str | None = None, progress: bool = True) -> str:
    """Train `cfg.model` on `cfg.train_set`, evaluate on the real test split (+ HAM); return the run id.
    Every check on the options and the data runs before the run starts and before any training."""
    check_config(cfg)
    tracking.setup(experiment)
    device = runtime.pick_device()
    amp_dtype = runtime.autocast_dtype(cfg.mixed_precision, device)
    data = load_inputs(cfg.data_dir, cfg.train_set, cfg.synth, cfg.eval_data, cfg.test_fraction, cfg.seed,
                       cfg.allow_repeats, progress, cfg.synth_ratio, cfg.balance, cfg.real_fraction)
    # the lesion class plays no part in segmentation: evaluate every test / HAM image
    evals = {"test": data.test.all_samples, **({"ham": data.ham.all_samples} if data.ham is not None else {})}
    evals = {name: samples for name, samples in evals.items() if samples}
    check_masks({"train": data.train.samples, **evals})
    if cfg.pretrained:        # fail before the run starts when the weights cannot be had
        build_model(cfg.model, pretrained=True)
    tags = {TAG_MODEL: cfg.model, TAG_TRAIN_SET: cfg.train_set, TAG_DEVICE: str(device), **data.tags}

    with tracking.stage_run(STAGE_SEGMENT, cfg, data.prepared.digest, experiment,
                            run_name=f"segment {cfg.model} {cfg.train_set}", extra_tags=tags) as run:
        log_inputs(data, eval_by_class=False)
        mlflow.log_params(ci_params())
        t_start = time.perf_counter()
        models, step_seconds = {}, []
        for i, seed in enumerate(seed_list(cfg)):       # the first seed's curve is train/loss, as before --seeds
            key = "train/loss" if i == 0 else f"seed{seed}/train/loss"
            models[seed], history = train_segmenter(
                cfg.model, data.train.samples, cfg, device, amp_dtype, progress, seed,
                on_epoch=lambda e, loss, key=key: mlflow.log_metrics({key: loss}, step=e + 1))
            step_seconds.append(history["step_seconds"])
        summary = {"time/train_seconds": time.perf_counter() - t_start, "time/step_seconds": float(np.mean(step_seconds))}
        summary.update(_evaluate_and_log(models, evals, cfg, device, amp_dtype, progress))
        mlflow.log_metrics(summary)
        return run.info.run_id


def seed_summary(per_seed: dict[int, dict[str, float]], prefix: str) -> dict[str, float]:
    """The run's metrics of one set from each seed model's summary: the mean over seeds of SCORE_KEYS,
    and with several seeds each seed's own (`seed<seed>/<metric>`) and `<metric>_seed_std` (ddof 0)."""
    out = {prefix + k: float(np.mean([m[k] for m in per_seed.values()])) for k in SCORE_KEYS}
    if len(per_seed) > 1:
        out.update({f"seed{seed}/{prefix}{k}": m[k] for seed, m in per_seed.items() for k in SEGMENT_METRICS})
        out.update({prefix + k + "_seed_std": float(np.std([m[k] for m in per_seed.values()])) for k in SEGMENT_METRICS})
    return out


def _evaluate_and_log(models: dict[int, nn.Module], evals: dict[str, list[Sample]], cfg: SegmentConfig, device,
                      amp_dtype, progress: bool) -> dict[str, float]:
    """The writer: score every eval set with every seed's model (per-image CSV, predicted masks) and save
    the first seed's model (_log_model); return the sets' summary metrics (`ham_` prefixed for HAM)."""
    scores_by_set = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, samples in evals.items():
            rows, per_seed = {}, {}
            for seed, model in models.items():
                rows[seed], per_seed[seed] = evaluate(model, samples, name, cfg, device, amp_dtype, tmp, progress, seed)
            _write_csv(tmp / "segmentation" / f"{name}.csv", [r for seed_rows in rows.values() for r in seed_rows])
            prefix = "" if name == "test" else HAM_PREFIX
            scores_by_set.update(seed_summary(per_seed, prefix))
            ivs = score_intervals(list(rows.values()))
            scores_by_set.update(interval_metrics(prefix, ivs))
            mlflow.set_tags(interval_tags(prefix, ivs))
        mlflow.log_artifacts(str(tmp))
    _log_model(models, cfg, next(iter(evals.values()))[0].image)
    return scores_by_set


def _log_model(models: dict[int, nn.Module], cfg: SegmentConfig, example: Path) -> None:
    """The first seed's model as the run's MLflow pyfunc `model` (`example`: an image for its input example)."""
    first_seed, model = next(iter(models.items()))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(tmp) / "model.pt")
        spec = SEGMENTERS[cfg.model]
        (Path(tmp) / "model.json").write_text(json.dumps(
            {"model": cfg.model, "seed": first_seed, "architecture": spec.arch, "encoder": spec.encoder,
             "image_size": cfg.image_size,
             "threshold": THRESHOLD, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(),
             "resize": "LANCZOS to image_size x image_size; logits bilinear back to the mask's size"},
            indent=1))
        log_downstream_model(Path(tmp), "segmenter", example_image(example), cfg.register_as)
