"""The `classify` stage (paper Sec. 4.3.1, Tables 2 and 3): one model x one training set.

Read top to bottom: `build_model` (the four backbones), `ImageSet` (decoded images + torchvision
augmentation), `train_one_epoch` (the training step), `predict` (evaluation), `train_fold` (one fold's
training), `score_fold` / `run_fold` (one fold's FoldResult in its nested run), `summarize` (the mean/std
over folds), `classify` (the run), `_log_artifacts` (the writer).

Protocol (paper): 224 px, batch 32, Adam lr 1e-4, cross-entropy, 50 epochs (DenseNet121, ResNet34)
or 40 (SqueezeNet1.1, Swin-T); torchvision augmentation of the training images (random flips,
rotation up to 20 degrees, mild colour jitter; the paper names the library, not the transforms),
ImageNet normalisation; 5-fold StratifiedKFold (shuffled, seeded) over the training set: fold k
trains on the other 4/5 and uses its held-out fold as validation. Every fold's final model is tested
on the real test split (and on `--eval-data`, HAM10000, with classes matched by name: images of
classes the model lacks are counted in `ham_n_excluded` and left out). Reported numbers are the mean
over folds (`accuracy`, ...) with the spread (`accuracy_std`); see metrics.py for the definitions.

The model's classes are the real training split's classes for every fold. A fold whose training
part lacked a class would still have that output (it is simply never learned; its sensitivity counts
as whatever the model gives, usually 0) and the run tags it `skindualgen.fold<k>_missing_classes`.
It cannot happen once the check "folds <= images of the smallest class" passes, which runs before any
training: StratifiedKFold puts floor or ceil of n_c / folds images of class c in each held-out fold,
so each training part keeps n_c - ceil(n_c / folds) >= 1 of them.

`--seeds N` repeats the whole k-fold CV N times (seeds seed, seed + 1000, ...; each repeat its own
fold split); every fold x seed model counts alike in the reported mean, its std (`accuracy_std`) and
the 95 % interval (`accuracy_ci_low`/`_ci_high`, harness/intervals.py); `<metric>_seed_std` is the
spread of the repeats' means. N = 1 is the run from before --seeds.

Logged: params (the config), one nested run per fold named "<model> <train_set> fold <k>" (" seed <s>"
with several seeds; per-epoch
`train/loss`, `val/loss`, `val/f1`, the last epoch's `val/<metric>`, the fold's test and `ham_*`
metrics), on the parent the mean/std metrics (`val/<metric>` for the validation folds), per-class
sensitivity, composition of the training set, confusion matrices (figure + JSON), per-image
predictions (`predictions/{val,test,ham}.csv`: seed, fold, id, group, true_label, predicted_label,
prob_<class>)
and the model of the best fold by validation macro F1, as the MLflow pyfunc `model` (raw RGB
images in, class probabilities out: mlflow_models.py; `load_classifier(run_id)` rebuilds the
torch module). `time/step_seconds` is forward + backward + update of one batch (data loading
excluded); `time/train_seconds` covers all folds with their evaluation.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn
from tqdm.auto import tqdm

from harness import tracking
from harness.config import ClassifyConfig
from harness.data.augment import IMAGENET_MEAN, IMAGENET_STD
from harness.data.records import Sample
from harness.downstream import decoded, runtime
from harness.downstream.mlflow_models import example_image, log_downstream_model
from harness.downstream.metrics import (
    classification_metrics, confusion_figure, confusion_matrix, mean_and_std,
)
from harness.downstream.sets import DownstreamError, EvalSet, PretrainedUnavailable, load_inputs, log_inputs, seed_list
from harness.hub import hf_cache_place, hf_hub_cache, offline
from harness.intervals import ci_params, classification_intervals, interval_metrics, interval_tags
from harness.schema import (
    CLASSIFY_METRICS, CLASSIFY_MODELS, HAM_PREFIX, METRIC_F1, STAGE_CLASSIFY, STAGE_CLASSIFY_FOLD, TAG_DEVICE,
    TAG_FOLD, TAG_FOLD_MISSING_CLASSES, TAG_MODEL, TAG_TRAIN_SET, VAL_PREFIX,
)


@dataclass(frozen=True)
class ClassifierSpec:
    """Per-backbone facts: the paper's epoch count and the layer GradCAM attributes to (explain.py)."""
    paper_epochs: int
    cam_layer: str


CLASSIFIERS = {
    "densenet121": ClassifierSpec(paper_epochs=50, cam_layer="features"),
    "resnet34": ClassifierSpec(paper_epochs=50, cam_layer="layer4"),
    "squeezenet1_1": ClassifierSpec(paper_epochs=40, cam_layer="features"),
    "swin_tiny": ClassifierSpec(paper_epochs=40, cam_layer="layers[-1] (NHWC -> NCHW)"),
}
assert tuple(CLASSIFIERS) == CLASSIFY_MODELS, "one spec per model of schema.CLASSIFY_MODELS, in its order"
MODELS = CLASSIFY_MODELS
PAPER_EPOCHS = {name: spec.paper_epochs for name, spec in CLASSIFIERS.items()}
SWIN = "swin_tiny_patch4_window7_224"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def _no_weights(name: str, err: Exception | None, where: str) -> PretrainedUnavailable:
    cause = f" ({type(err).__name__}: {err})" if err is not None else ""
    return PretrainedUnavailable(
        f"--pretrained: could not load the ImageNet weights of {name}{cause}. This machine may be offline; "
        f"put the weights at {where}, or run with --pretrained false (random initialisation)")


def build_model(name: str, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """torchvision DenseNet121 / ResNet34 / SqueezeNet1.1 or timm Swin-T (built for `image_size`), with a
    `num_classes` head. pretrained=True loads ImageNet weights and replaces the head: torchvision's from
    torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints/<file of the weights' URL>), Swin-T's from
    the Hugging Face cache (timm's hub repo); each is downloaded first when missing, unless
    HF_HUB_OFFLINE is set. When they cannot be had it raises PretrainedUnavailable naming the file and
    where it goes, never silently continues."""
    if name not in MODELS:
        raise DownstreamError(f"--model must be one of {', '.join(MODELS)}, got {name!r}")
    if name == "swin_tiny":
        import timm
        if not pretrained:
            return timm.create_model(SWIN, num_classes=num_classes, img_size=image_size)
        repo_id = timm.models.get_pretrained_cfg(SWIN).hf_hub_id
        try:
            return timm.create_model(SWIN, pretrained=True, num_classes=num_classes, img_size=image_size,
                                     cache_dir=hf_hub_cache())
        except Exception as e:
            raise _no_weights(SWIN, e, f"{hf_cache_place(repo_id, file='model.safetensors')}: hub repo {repo_id}, "
                                       f"`hf download {repo_id} model.safetensors` puts it there") from e
    import torchvision
    factory = getattr(torchvision.models, name)
    if not pretrained:
        return factory(weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    where = f"{path} (downloaded from {weights.url})"
    if offline() and not path.is_file():
        raise _no_weights(name, None, where)
    try:
        model = factory(weights=weights)
    except Exception as e:
        raise _no_weights(name, e, where) from e
    if name == "densenet121":
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    elif name == "resnet34":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:  # squeezenet1_1: the classifier is Dropout, Conv2d(512, classes, 1), ReLU, AvgPool
        model.classifier[1] = nn.Conv2d(512, num_classes, kernel_size=1)
        model.num_classes = num_classes
    return model


def load_classifier(run_id: str) -> tuple[nn.Module, dict]:
    """The best fold's model of a classify run, in eval mode, and its model.json (classes, image size,
    normalisation, fold, validation F1), from the run's MLflow model."""
    from harness.downstream.mlflow_models import downstream_folder
    return load_folder(downstream_folder(f"runs:/{run_id}/model"))


def load_folder(folder: Path) -> tuple[nn.Module, dict]:
    """A classifier from its model.pt + model.json folder, in eval mode."""
    info = json.loads((folder / "model.json").read_text())
    model = build_model(info["model"], len(info["classes"]), info["image_size"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), info


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def decode_images(samples: list[Sample], size: int, progress: bool = True, desc: str = "decode", threads: int = 1,
                  cache_dir: str = "") -> np.ndarray:
    """(N, size, size, 3) uint8, LANCZOS-resized like harness.data.augment.load_pair, by `threads` threads;
    with `cache_dir`, read from / written to the decoded-pairs cache that classify and segment runs share
    (harness/downstream/decoded.py)."""
    return decoded.pairs(samples, size, cache_dir, threads, progress, desc)[0]


def train_augmentation():
    from torchvision.transforms import v2
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(20),
                       v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)])


class ImageSet(torch.utils.data.Dataset):
    """Decoded uint8 images -> (normalised float tensor, class index). With `augment`, image i in epoch
    e is augmented with torch seeded by (seed, e, i): the same with any number of workers."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False, seed: int = 0):
        self.images, self.labels, self.seed, self.epoch = images, labels, seed, 0
        self.augment = train_augmentation() if augment else None
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + i)
                x = self.augment(x)
        x = (x.float() / 255.0 - self.mean) / self.std
        return x, int(self.labels[i])


# ---------------------------------------------------------------------------------------------
# Training step and evaluation
# ---------------------------------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer, scaler, device, amp_dtype, bar=None) -> tuple[float, float]:
    """One pass over the loader: cross-entropy, Adam. Returns (mean loss, mean seconds per step)."""
    def compute_loss(batch):
        x, y = runtime.to_device(batch[0], device), batch[1].to(device)
        with runtime.autocast(device, amp_dtype):
            return nn.functional.cross_entropy(model(x), y)
    return runtime.run_epoch(model, loader, compute_loss, optimizer, scaler, bar)


@torch.no_grad()
def predict(model, loader, device, amp_dtype) -> np.ndarray:
    """Softmax probabilities, (N, classes), in loader order."""
    model.eval()
    out = []
    for x, _ in loader:
        with runtime.autocast(device, amp_dtype):
            logits = model(runtime.to_device(x, device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def check_config(cfg: ClassifyConfig) -> None:
    if cfg.model not in MODELS:
        raise DownstreamError(f"--model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    if cfg.folds < 2:
        raise DownstreamError(f"--folds must be >= 2 (stratified k-fold), got {cfg.folds}")
    if cfg.seeds < 1:
        raise DownstreamError(f"--seeds must be >= 1 (repeats of the k-fold CV), got {cfg.seeds}")
    for name in ("image_size", "batch_size", "val_every"):
        if getattr(cfg, name) < 1:
            raise DownstreamError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.epochs < 0:
        raise DownstreamError("--epochs must be >= 0 (0 = the paper's)")


def check_folds(labels: list[str], folds: int) -> None:
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    small = {c: n for c, n in counts.items() if n < folds}
    if small:
        raise DownstreamError(
            f"--folds {folds} needs at least {folds} training images of every class; too few: "
            + ", ".join(f"{c!r} has {n}" for c, n in small.items()) + ". Use fewer folds or more data")


def _prediction_rows(fold: int, seed: int, samples: list[Sample], probs: np.ndarray, classes: list[str]) -> list[dict]:
    return [{"seed": seed, "fold": fold, "id": s.id, "group": s.group, "true_label": s.label,
             "predicted_label": classes[int(p.argmax())],
             **{f"prob_{c}": f"{float(v):.6f}" for c, v in zip(classes, p)}}
            for s, p in zip(samples, probs)]


def _write_csv(path: Path, rows: list[dict], classes: list[str]) -> None:
    fields = ["seed", "fold", "id", "group", "true_label", "predicted_label"] + [f"prob_{c}" for c in classes]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def train_classifier(name: str, classes: list[str], images: np.ndarray, y: np.ndarray, cfg: ClassifyConfig,
                     epochs: int, device, amp_dtype, progress: bool, seed: int, on_epoch=None,
                     desc: str = "train") -> tuple[nn.Module, float]:
    """Train `name` from scratch (seeded) on decoded uint8 images with the paper's recipe (Adam,
    cross-entropy, torchvision augmentation); return the model and the mean step time.
    `on_epoch(model, epoch, loss)` runs after every epoch (a fold validates and logs there)."""
    torch.manual_seed(seed)
    model = runtime.prepare_model(build_model(name, len(classes), cfg.image_size, cfg.pretrained), device)
    optimizer = runtime.adam(model, cfg.learning_rate)
    scaler = runtime.grad_scaler(device, amp_dtype)
    train_ds = ImageSet(images, y, augment=True, seed=seed)
    train_dl = runtime.loader(train_ds, cfg.batch_size, True, seed, cfg.num_workers, device, train=True)
    step_seconds = []
    bar = tqdm(total=epochs * len(train_dl), desc=desc, unit="step", disable=not progress)
    for epoch in range(epochs):
        train_ds.set_epoch(epoch)
        loss, sec = train_one_epoch(model, train_dl, optimizer, scaler, device, amp_dtype, bar)
        step_seconds.append(sec)
        if on_epoch is not None:
            on_epoch(model, epoch, loss)
    bar.close()
    return model, float(np.mean(step_seconds)) if step_seconds else 0.0


def predict_images(model, images: np.ndarray, cfg: ClassifyConfig, device, amp_dtype) -> np.ndarray:
    """Softmax probabilities (N, classes) of decoded uint8 images (N, S, S, 3)."""
    dl = runtime.loader(ImageSet(images, np.zeros(len(images), np.int64)), cfg.batch_size, False, 0,
                        cfg.num_workers, device)
    return predict(model, dl, device, amp_dtype)


def train_fold(k: int, model_name: str, classes: list[str], train_images, train_y, val_images, val_y,
               eval_images: dict[str, np.ndarray], cfg: ClassifyConfig, epochs: int, device, amp_dtype,
               progress: bool) -> dict:
    """Train fold k's model from scratch; return its validation and eval-set probabilities."""
    val_dl = runtime.loader(ImageSet(val_images, val_y), cfg.batch_size, False, 0, cfg.num_workers, device)
    last = {}

    def validate(model, epoch, loss):
        if (epoch + 1) % cfg.val_every and epoch + 1 < epochs:     # the last epoch is always validated
            mlflow.log_metric("train/loss", loss, step=epoch + 1)
            return
        last["val"] = predict(model, val_dl, device, amp_dtype)
        val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(last["val"]).clamp_min(1e-12)),
                                                torch.from_numpy(val_y)))
        val_f1 = classification_metrics(val_y, last["val"].argmax(1), classes)[METRIC_F1]
        mlflow.log_metrics({"train/loss": loss, "val/loss": val_loss, "val/f1": val_f1}, step=epoch + 1)

    model, step_seconds = train_classifier(model_name, classes, train_images, train_y, cfg, epochs, device,
                                           amp_dtype, progress, cfg.seed + k, validate, desc=f"fold {k}")
    probs = {name: predict_images(model, imgs, cfg, device, amp_dtype) for name, imgs in eval_images.items()}
    state = {key: v.detach().cpu().clone() for key, v in model.state_dict().items()}
    return {"val": last["val"], **probs, "state_dict": state, "step_seconds": step_seconds}


@dataclass
class Inputs:
    """What every fold shares: the decoded images, their class indices and the eval sets."""
    classes: list[str]
    samples: list[Sample]                 # the training set
    images: np.ndarray
    y: np.ndarray
    evals: dict[str, EvalSet]
    eval_images: dict[str, np.ndarray]
    eval_y: dict[str, np.ndarray]


@dataclass
class FoldResult:
    """One fold's scores: classification metrics per set ("val" and each eval set), confusion matrices
    and prediction rows per set, the final model's weights and the mean step time."""
    k: int
    metrics: dict[str, dict]
    confusion: dict[str, np.ndarray]
    rows: dict[str, list[dict]]
    state_dict: dict
    step_seconds: float
    predicted: dict[str, np.ndarray]      # per eval set: (N,) predicted class index of each image
    seed: int                             # the training seed of this repeat (seed_list), its folds share it


def score_fold(k: int, seed: int, out: dict, va: np.ndarray, inputs: Inputs) -> FoldResult:
    """Metrics, confusion matrices and prediction rows of fold k's probabilities (`train_fold`'s output)."""
    classes = inputs.classes
    metrics = {"val": classification_metrics(inputs.y[va], out["val"].argmax(1), classes)}
    rows = {"val": _prediction_rows(k, seed, [inputs.samples[i] for i in va], out["val"], classes)}
    confusion = {}
    for name, e in inputs.evals.items():
        pred = out[name].argmax(1)
        metrics[name] = classification_metrics(inputs.eval_y[name], pred, classes)
        confusion[name] = confusion_matrix(inputs.eval_y[name], pred, len(classes))
        rows[name] = _prediction_rows(k, seed, e.samples, out[name], classes)
    predicted = {name: out[name].argmax(1) for name in inputs.evals}
    return FoldResult(k, metrics, confusion, rows, out["state_dict"], out["step_seconds"], predicted, seed)


def run_fold(k: int, tr: np.ndarray, va: np.ndarray, inputs: Inputs, cfg: ClassifyConfig, epochs: int, run,
             tags: dict, digest: str, device, amp_dtype, progress: bool, repeats: int = 1) -> FoldResult:
    """Fold k of the repeat seeded cfg.seed in its nested run: train, score, log the fold's metrics."""
    classes, y = inputs.classes, inputs.y
    name = f"{cfg.model} {cfg.train_set} fold {k}" + (f" seed {cfg.seed}" if repeats > 1 else "")
    with mlflow.start_run(run_name=name, nested=True, experiment_id=run.info.experiment_id,
                          tags={**tracking.run_tags(STAGE_CLASSIFY_FOLD, digest), **tags, TAG_FOLD: str(k)}):
        mlflow.log_params({"fold": k, "n_train": len(tr), "n_val": len(va), "fold_seed": cfg.seed})
        missing = sorted(set(classes) - {classes[i] for i in y[tr]})
        if missing:       # cannot happen after check_folds; see the module docstring
            mlflow.MlflowClient().set_tag(run.info.run_id, TAG_FOLD_MISSING_CLASSES.format(k=k), ",".join(missing))
        out = train_fold(k, cfg.model, classes, inputs.images[tr], y[tr], inputs.images[va], y[va],
                         inputs.eval_images, cfg, epochs, device, amp_dtype, progress)
        result = score_fold(k, cfg.seed, out, va, inputs)
        # the validation curve's last point: `val/<metric>` at step = epochs (one name per metric)
        mlflow.log_metrics({VAL_PREFIX + key: result.metrics["val"][key] for key in CLASSIFY_METRICS}, step=epochs)
        fold_metrics = {}
        for name in inputs.evals:
            fold_metrics.update({(key if name == "test" else HAM_PREFIX + key): v
                                 for key, v in result.metrics[name].items()})
        fold_metrics["time/step_seconds"] = result.step_seconds
        mlflow.log_metrics(fold_metrics)
    return result


def best_fold(results: list[FoldResult]) -> FoldResult:
    """The fold with the highest validation macro F1 (the first of equals)."""
    best = results[0]
    for r in results[1:]:
        if r.metrics["val"][METRIC_F1] > best.metrics["val"][METRIC_F1]:
            best = r
    return best


def seed_std(results: list, set_names: list[str], keys=CLASSIFY_METRICS) -> dict[str, float]:
    """`<metric>_seed_std`: the population std over repeats of each repeat's mean over its folds (or its
    one model), per eval set; {} with one repeat. `results` have .seed and .metrics[set][metric]."""
    seeds = sorted({r.seed for r in results})
    if len(seeds) < 2:
        return {}
    out = {}
    for name in set_names:
        prefix = "" if name == "test" else HAM_PREFIX
        for key in keys:
            means = [np.mean([r.metrics[name][key] for r in results if r.seed == s]) for s in seeds]
            out[prefix + key + "_seed_std"] = float(np.std(means))
    return out


def summarize(results: list[FoldResult], set_names: list[str], train_seconds: float) -> dict[str, float]:
    """The parent run's metrics: mean/std over all fold x seed models per set, the spread over seeds,
    the best fold, timings."""
    summary = {"best_fold": best_fold(results).k, "time/train_seconds": train_seconds,
               "time/step_seconds": float(np.mean([r.step_seconds for r in results])),
               **seed_std(results, set_names)}
    for name in ["val", *set_names]:
        prefix = {"test": "", "val": VAL_PREFIX, "ham": HAM_PREFIX}[name]
        folds = [r.metrics[name] for r in results]
        if name == "val":     # the folds' validation sets differ: only the headline numbers
            folds = [{key: m[key] for key in CLASSIFY_METRICS} for m in folds]
        summary.update({prefix + key: v for key, v in mean_and_std(folds).items()})
    return summary


def summary_intervals(results: list[FoldResult], inputs: Inputs) -> tuple[dict[str, float], dict[str, str]]:
    """The 95 % interval of each test (and ham_) metric of the parent run: the eval set's images
    (lesion groups together) and the fold models resampled, the metric per fold then averaged, as
    the point value is (harness/intervals.py). Returns (metrics, tags saying why a metric has none)."""
    out, why = {}, {}
    for name, e in inputs.evals.items():
        prefix = "" if name == "test" else HAM_PREFIX
        predicted = np.stack([r.predicted[name] for r in results])                   # (folds x seeds, N)
        ivs = classification_intervals(inputs.eval_y[name], predicted, len(inputs.classes),
                                       [s.group for s in e.samples])
        out.update(interval_metrics(prefix, ivs))
        why.update(interval_tags(prefix, ivs))
    return out, why


def decode_inputs(data, classes: list[str], evals: dict[str, EvalSet], cfg: ClassifyConfig, progress: bool) -> Inputs:
    images = decode_images(data.train.samples, cfg.image_size, progress, "decode train", cfg.num_workers, cfg.cache_dir)
    eval_images = {name: decode_images(e.samples, cfg.image_size, progress, f"decode {name}", cfg.num_workers,
                                       cfg.cache_dir) for name, e in evals.items()}
    eval_y = {name: np.array([classes.index(s.label) for s in e.samples]) for name, e in evals.items()}
    y = np.array([classes.index(c) for c in data.train.labels])
    return Inputs(classes, data.train.samples, images, y, evals, eval_images, eval_y)


def classify(cfg: ClassifyConfig, experiment: str | None = None, progress: bool = True) -> str:
    """Train and evaluate `cfg.model` on `cfg.train_set` with k-fold CV; return the MLflow run id.
    Every check on the options and the data runs before the run starts and before any training."""
    check_config(cfg)
    tracking.setup(experiment)
    device = runtime.pick_device()
    amp_dtype = runtime.autocast_dtype(cfg.mixed_precision, device)
    data = load_inputs(cfg.data_dir, cfg.train_set, cfg.synth, cfg.eval_data, cfg.test_fraction, cfg.seed,
                       cfg.allow_repeats, progress, cfg.synth_ratio, cfg.balance, cfg.real_fraction)
    train, classes = data.train, data.train.classes
    check_folds(train.labels, cfg.folds)
    if cfg.pretrained:        # fail before the run starts when the weights cannot be had
        build_model(cfg.model, len(classes), cfg.image_size, pretrained=True)
    epochs = cfg.epochs or CLASSIFIERS[cfg.model].paper_epochs
    evals: dict[str, EvalSet] = {"test": data.test, **({"ham": data.ham} if data.ham is not None else {})}
    evals = {name: e for name, e in evals.items() if e.samples}
    tags = {TAG_MODEL: cfg.model, TAG_TRAIN_SET: cfg.train_set, TAG_DEVICE: str(device), **data.tags}

    with tracking.stage_run(STAGE_CLASSIFY, cfg, data.prepared.digest, experiment,
                            run_name=f"classify {cfg.model} {cfg.train_set}", extra_tags=tags) as run:
        log_inputs(data)
        mlflow.log_metric("epochs", epochs)
        inputs = decode_inputs(data, classes, evals, cfg, progress)
        t_start = time.perf_counter()
        results = []
        for seed in seed_list(cfg):           # each repeat: its own fold split and training seeds
            repeat_cfg = replace(cfg, seed=seed)
            splitter = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=seed)
            results += [run_fold(k, tr, va, inputs, repeat_cfg, epochs, run, tags, data.prepared.digest, device,
                                 amp_dtype, progress, cfg.seeds)
                        for k, (tr, va) in enumerate(splitter.split(np.zeros(len(inputs.y)), inputs.y))]
        mlflow.log_metrics(summarize(results, list(evals), time.perf_counter() - t_start))
        mlflow.log_params(ci_params())
        ci_metrics, ci_tags = summary_intervals(results, inputs)
        mlflow.log_metrics(ci_metrics)
        mlflow.set_tags(ci_tags)
        _log_artifacts(cfg, classes, list(evals), results, train.samples[0].image)
        return run.info.run_id


def _log_artifacts(cfg: ClassifyConfig, classes: list[str], set_names: list[str], results: list[FoldResult],
                   example: Path) -> None:
    """Prediction CSVs (all folds), the best fold's model (an MLflow pyfunc `model`; `example`: an image
    for its input example), the confusion matrices summed over folds."""
    best = best_fold(results)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "predictions").mkdir()
        for name in ["val", *set_names]:
            _write_csv(tmp / "predictions" / f"{name}.csv", [row for r in results for row in r.rows[name]], classes)
        mlflow.log_artifacts(str(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(best.state_dict, Path(tmp) / "model.pt")
        info = {"model": cfg.model, "classes": classes, "image_size": cfg.image_size, "fold": best.k, "seed": best.seed,
                "val_f1": best.metrics["val"][METRIC_F1], "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(),
                "resize": "LANCZOS to image_size x image_size"}
        (Path(tmp) / "model.json").write_text(json.dumps(info, indent=1))
        log_downstream_model(Path(tmp), "classifier", example_image(example), cfg.register_as)
    for name in set_names:
        cm = sum(r.confusion[name] for r in results)
        mlflow.log_dict({"classes": classes, "matrix": cm.tolist(), "rows": "true class", "columns": "predicted"},
                        f"confusion_{name}.json")
        fig = confusion_figure(cm, classes, f"{cfg.model} / {cfg.train_set} on {name} (sum over folds)")
        mlflow.log_figure(fig, f"confusion_{name}.png")
        import matplotlib.pyplot as plt
        plt.close(fig)
