"""Reference models that judge a generated set (beyond the paper): a classifier and a segmenter trained
on the real train split only, by this harness's own `classify` / `segment` code and settings.

    clf = reference_classifier(prepared, "resnet34", "demo", cache_dir)     # trained once per dataset digest
    seg = reference_segmenter(prepared, "unet", "demo", cache_dir)
    cas(clf, samples)               -> {"cas": 0.91, "cas/melanoma": 1.0, ...}
    mask_consistency(seg, samples)  -> {"mask_consistency": 0.87, "mask_nonempty": 1.0, ...}, per-sample Dice,
                                       per-sample non-empty

CAS, the Classification Accuracy Score (Ravuri & Vinyals 2019), here in its "judge" form: the share of
generated images that a classifier trained on real data assigns to the class their prompt named.
A generator that ignores its prompt scores about the share of its most common look, whatever FID says.
Mask consistency: the Dice between each generated mask and the mask the real-trained segmenter predicts
for the generated image, at the generated mask's resolution (both empty: 1). It is high only when the
mask lies on the lesion the image shows. Both are fractions in [0, 1]; per class as `cas/<class>` and
`mask_consistency/<class>`, and `mask_nonempty` is the share of generated masks with a lesion pixel.

Training: the whole real train split (no folds), the classify / segment profile `profile`, seed
`seed`; CPU results are the same for the same inputs. Cache: `<cache_dir>/<digest>-<stage>-<model>-<key>.pt`
(+ `.json`), key = sha256 of (dataset digest, the stage's config, REFERENCE_VERSION): another dataset,
split, setting or version is a miss. Files are written atomically (temp file + rename), and a lock
file beside them makes a second process (the pipeline's two evaluates run in parallel) wait for the
first one's model instead of training its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from harness.files import user_file_mode
from harness.config import ClassifyConfig, SegmentConfig, with_profile
from harness.data.prepare import Prepared
from harness.data.records import Sample
from harness.downstream import classify as classify_mod
from harness.downstream import runtime
from harness.downstream import segment as segment_mod
from harness.downstream.metrics import dice_iou
from harness.schema import METRIC_CAS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, STAGE_CLASSIFY, STAGE_SEGMENT

REFERENCE_VERSION = 2          # bump when the judges train differently (2: small last batch dropped)


@dataclass
class Reference:
    model: nn.Module                 # eval mode, on `device`
    info: dict                       # stage, model, classes, config, digest, key, n_train
    cached: bool                     # loaded from the cache (True) or trained now (False)
    device: torch.device

    @property
    def config(self) -> dict:
        return self.info["config"]


def _config(stage: str, model: str, profile: str, seed: int):
    cls = ClassifyConfig if stage == STAGE_CLASSIFY else SegmentConfig
    return with_profile(cls, stage, profile, {"model": model, "seed": seed, "train_set": "real"})


def cache_paths(cache_dir, digest: str, stage: str, cfg) -> tuple[Path, Path]:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data_dir", "num_workers")}
    key = hashlib.sha256(json.dumps({"digest": digest, "stage": stage, "config": fields,
                                     "version": REFERENCE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    stem = Path(cache_dir) / f"{digest}-{stage}-{cfg.model}-{key}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def _save(weights: Path, meta: Path, model: nn.Module, info: dict) -> None:
    weights.parent.mkdir(parents=True, exist_ok=True)
    for path, write in ((weights, lambda f: torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, f)),
                        (meta, lambda f: f.write(json.dumps(info, indent=1).encode()))):
        fd, tmp = tempfile.mkstemp(prefix=".ref-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, user_file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _lock(weights: Path) -> FileLock:
    """Held while one process loads or trains the model cached at `weights` (others wait, then load)."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(weights) + ".lock")


def _load(weights: Path, meta: Path, build) -> tuple[nn.Module, dict] | None:
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        model = build(info)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (OSError, ValueError, RuntimeError, KeyError) as e:     # a half-copied or stale cache entry
        print(f"warning: {weights}: unreadable cached reference model ({e}); retraining")
        return None
    return model, info


def reference_classifier(prepared: Prepared, model: str = "resnet34", profile: str = "paper",
                         cache_dir=".cache/skindualgen/reference", seed: int = 42,
                         progress: bool = True) -> Reference:
    """The classifier `model` trained on prepared's train split with the classify settings of `profile`."""
    cfg = _config(STAGE_CLASSIFY, model, profile, seed)
    device = runtime.pick_device()
    weights, meta = cache_paths(cache_dir, prepared.digest, STAGE_CLASSIFY, cfg)
    with _lock(weights):
        found = _load(weights, meta, lambda info: classify_mod.build_model(info["model"], len(info["classes"]),
                                                                           info["config"]["image_size"]))
        if found is not None:
            net, info = found
            return Reference(net.to(device).eval(), info, True, device)
        return _train_classifier(prepared, cfg, profile, weights, meta, device, seed, progress)


def _train_classifier(prepared, cfg, profile, weights, meta, device, seed, progress) -> Reference:
    train = prepared.dataset.split("train")
    classes = train.classes
    amp = runtime.autocast_dtype(cfg.mixed_precision, device)
    images = classify_mod.decode_images(train.samples, cfg.image_size, progress, "decode reference")
    y = np.array([classes.index(s.label) for s in train.samples])
    epochs = cfg.epochs or classify_mod.CLASSIFIERS[cfg.model].paper_epochs
    net, _ = classify_mod.train_classifier(cfg.model, classes, images, y, cfg, epochs, device, amp, progress, seed,
                                           desc=f"reference {cfg.model}")
    info = {"stage": STAGE_CLASSIFY, "model": cfg.model, "classes": classes, "epochs": epochs, "profile": profile,
            "config": dataclasses.asdict(cfg), "digest": prepared.digest, "key": weights.stem,
            "n_train": len(train)}
    _save(weights, meta, net, info)
    return Reference(net.eval(), info, False, device)


def reference_segmenter(prepared: Prepared, model: str = "unet", profile: str = "paper",
                        cache_dir=".cache/skindualgen/reference", seed: int = 42, progress: bool = True) -> Reference:
    """The segmenter `model` trained on prepared's train split with the segment settings of `profile`."""
    cfg = _config(STAGE_SEGMENT, model, profile, seed)
    device = runtime.pick_device()
    weights, meta = cache_paths(cache_dir, prepared.digest, STAGE_SEGMENT, cfg)
    with _lock(weights):
        found = _load(weights, meta, lambda info: segment_mod.build_model(info["model"]))
        if found is not None:
            net, info = found
            return Reference(net.to(device).eval(), info, True, device)
        return _train_segmenter(prepared, cfg, profile, weights, meta, device, seed, progress)


def _train_segmenter(prepared, cfg, profile, weights, meta, device, seed, progress) -> Reference:
    train = prepared.dataset.split("train")
    segment_mod.check_masks({"real train": train.samples})
    amp = runtime.autocast_dtype(cfg.mixed_precision, device)
    net, _ = segment_mod.train_segmenter(cfg.model, train.samples, cfg, device, amp, progress, seed)
    info = {"stage": STAGE_SEGMENT, "model": cfg.model, "profile": profile, "config": dataclasses.asdict(cfg),
            "digest": prepared.digest, "key": weights.stem, "n_train": len(train)}
    _save(weights, meta, net, info)
    return Reference(net.eval(), info, False, device)


# ------------------------------------------------------------------------------------------------
# Judging a set of (image, mask, label) samples
# ------------------------------------------------------------------------------------------------

def _per_class(values: np.ndarray, labels: list[str], name: str) -> dict[str, float]:
    out = {name: float(values.mean())}
    for c in sorted(set(labels)):
        out[f"{name}/{c}"] = float(values[[lab == c for lab in labels]].mean())
    return out


def predict_classes(ref: Reference, samples: list[Sample]) -> list[str]:
    """The reference classifier's class for each sample's image."""
    cfg = ClassifyConfig(**ref.config)
    images = classify_mod.decode_images(samples, cfg.image_size, progress=False)
    amp = runtime.autocast_dtype(cfg.mixed_precision, ref.device)
    probs = classify_mod.predict_images(ref.model, images, cfg, ref.device, amp)
    return [ref.info["classes"][i] for i in probs.argmax(1)]


def cas(ref: Reference, samples: list[Sample], per_image: bool = False):
    """CAS overall and per class: the share of samples whose image is classified as its label; with
    per_image, also (N,) 1.0 / 0.0 per sample (what CAS is the mean of)."""
    if not samples:
        raise ValueError("CAS needs at least one image")
    predicted = predict_classes(ref, samples)
    labels = [s.label for s in samples]
    correct = np.array([p == t for p, t in zip(predicted, labels)], np.float64)
    scores = _per_class(correct, labels, METRIC_CAS)
    return (scores, correct) if per_image else scores


def consistency_scores(ref: Reference, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (Dice in [0, 1] of its mask vs the reference segmenter's mask for its image, at the
    mask's resolution; whether its mask has a lesion pixel)."""
    cfg = SegmentConfig(**ref.config)
    masks = [segment_mod.load_mask(s) for s in samples]
    amp = runtime.autocast_dtype(cfg.mixed_precision, ref.device)
    preds = segment_mod.predict_masks(ref.model, samples, cfg.image_size, [m.shape for m in masks], ref.device, amp,
                                      cfg.batch_size)
    dice = np.array([dice_iou(p, m)[0] / 100.0 for p, m in zip(preds, masks)])
    return dice, np.array([m.any() for m in masks], np.float64)


def mask_consistency(ref: Reference, samples: list[Sample]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """({"mask_consistency", "mask_consistency/<class>", "mask_nonempty"}, the per-sample Dice, and
    per sample 1.0 / 0.0 whether its mask has a lesion pixel)."""
    if not samples:
        raise ValueError("mask consistency needs at least one image")
    dice, nonempty = consistency_scores(ref, samples)
    labels = [s.label for s in samples]
    scores = {**_per_class(dice, labels, METRIC_MASK_CONSISTENCY), METRIC_MASK_NONEMPTY: float(nonempty.mean())}
    return scores, dice, nonempty
