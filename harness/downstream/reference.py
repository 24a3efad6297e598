"""The two judges of a generated set (beyond the paper): a classifier and a segmenter trained on the real
train split only, by this harness's own `classify` / `segment` code and settings. The `judges` stage
(harness/judges.py) trains them once per dataset as an MLflow run; evaluate and generate load them from it.

    clf = train_classifier(prepared, "resnet34", "demo")      # Reference: the model + what it learned from
    seg = train_segmenter(prepared, "unet", "demo")
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
`seed`; CPU results are the same for the same inputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.config import ClassifyConfig, SegmentConfig, with_profile
from harness.data.prepare import Prepared
from harness.data.records import Sample
from harness.downstream import classify as classify_mod
from harness.downstream import runtime
from harness.downstream import segment as segment_mod
from harness.downstream.metrics import dice_iou
from harness.schema import METRIC_CAS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, STAGE_CLASSIFY, STAGE_SEGMENT


@dataclass
class Reference:
    model: nn.Module                 # eval mode, on `device`
    info: dict                       # stage, model, classes (classifier), epochs, profile, config, digest, n_train
    device: torch.device
    run_id: str = ""                 # the judges run it was logged to / loaded from ("" = not logged yet)

    @property
    def config(self) -> dict:
        return self.info["config"]


def judge_config(stage: str, model: str, profile: str, seed: int):
    """The classify / segment config a judge trains with: the stage's `profile`, the whole real train split."""
    cls = ClassifyConfig if stage == STAGE_CLASSIFY else SegmentConfig
    return with_profile(cls, stage, profile, {"model": model, "seed": seed, "train_set": "real"})


def train_classifier(prepared: Prepared, model: str = "resnet34", profile: str = "paper", seed: int = 42,
                     progress: bool = True) -> Reference:
    """The classifier `model` trained on prepared's train split with the classify settings of `profile`."""
    cfg = judge_config(STAGE_CLASSIFY, model, profile, seed)
    device = runtime.pick_device()
    train = prepared.dataset.split("train")
    classes = train.classes
    amp = runtime.autocast_dtype(cfg.mixed_precision, device)
    images = classify_mod.decode_images(train.samples, cfg.image_size, progress, "decode judge")
    y = np.array([classes.index(s.label) for s in train.samples])
    epochs = cfg.epochs or classify_mod.CLASSIFIERS[cfg.model].paper_epochs
    net, _ = classify_mod.train_classifier(cfg.model, classes, images, y, cfg, epochs, device, amp, progress, seed,
                                           desc=f"judge {cfg.model}")
    info = {"stage": STAGE_CLASSIFY, "model": cfg.model, "classes": classes, "epochs": epochs, "profile": profile,
            "config": dataclasses.asdict(cfg), "digest": prepared.digest, "n_train": len(train)}
    return Reference(net.eval(), info, device)


def train_segmenter(prepared: Prepared, model: str = "unet", profile: str = "paper", seed: int = 42,
                    progress: bool = True) -> Reference:
    """The segmenter `model` trained on prepared's train split with the segment settings of `profile`."""
    cfg = judge_config(STAGE_SEGMENT, model, profile, seed)
    device = runtime.pick_device()
    train = prepared.dataset.split("train")
    segment_mod.check_masks({"real train": train.samples})
    amp = runtime.autocast_dtype(cfg.mixed_precision, device)
    net, _ = segment_mod.train_segmenter(cfg.model, train.samples, cfg, device, amp, progress, seed)
    info = {"stage": STAGE_SEGMENT, "model": cfg.model, "epochs": cfg.epochs, "profile": profile,
            "config": dataclasses.asdict(cfg), "digest": prepared.digest, "n_train": len(train)}
    return Reference(net.eval(), info, device)


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
