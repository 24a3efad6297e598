"""The `explain` stage (paper Sec. 4.3.4, Figure 3): GradCAM, Saliency and Occlusion heatmaps of the
classifiers trained on `real` and on `hybrid`, side by side, for chosen real test images.

Read top to bottom: `cam_target` (the GradCAM layer of each backbone), `attributions` (the three
captum methods for one image), `heat` (one panel's [0, 1] map), `choose_images`, `resolve_pairs`
(which classify runs), `figure3` (the layout), `explain_pair` (one pair's PairResult), `_log_results`
(the writer), `explain` (the run).

Runs. A *pair* is one model's classify run trained on `real` and its run trained on `hybrid`. Rule:
  - `--real-run` / `--hybrid-run` name runs (comma lists, any experiment); each must be a FINISHED
    `classify` run with that training set. Both given: paired in order, same model per pair.
  - one side given: the other side of each pair is the newest (start time) FINISHED `classify` run
    of the same model with the other training set in the experiment.
  - neither given: for each model in `--model` (default: every model having both), the newest
    FINISHED real run and the newest FINISHED hybrid run of that model in the experiment.
  No match is an error listing the FINISHED classify runs the experiment has. One pair per model.

Images. `--images` (ids of the real data; a training image is accepted and flagged in summary.json)
or, by default, `n_images` seeded picks from the real test split, one per class as far as the
classes go: the classes are shuffled with numpy.random.default_rng(seed), one image (of the id-sorted
class) is drawn from each of the first n_images classes, then the rest from the remaining images.
The split is the one the classify runs were tested on: their data_dir (unless `--data-dir`),
test_fraction and seed params, checked against their dataset digest tag.

Each image is decoded and normalised exactly as `classify` does (LANCZOS to the run's image_size,
ImageNet mean/std). Every method explains the model's predicted class (argmax of the logits):
  GradCAM    captum LayerGradCam on the last convolutional stage (see classify.CLASSIFIERS), ReLU'd, then
             upsampled bilinearly to the image size.
  Saliency   captum Saliency: |d logit_pred / d input| (3, H, W); the panel shows the max over the
             colour channels (Simonyan et al. 2014).
  Occlusion  captum Occlusion: a square window (default image_size // 8, stride half of it; 225
             positions per image) over all three channels replaced by 0 in normalised space (the
             ImageNet mean colour); attribution = drop of the predicted logit, averaged over the
             windows covering a pixel; the panel shows the channel mean.
Panel map: the positive part divided by its maximum, so [0, 1] per panel (all zero when nothing is
positive; summary.json flags such a map). Overlay: the map with the `jet` colour map, alpha 0.45,
over the image. Everything is deterministic for fixed runs, images and seed (eval mode, no sampling).

Logged: the config as params, plus `image_ids`; tags `skindualgen.real_run`, `skindualgen.hybrid_run`,
`skindualgen.explain_model` (comma lists, in pair order); artifacts under `heatmaps/`:
`figure3_<model>.png` (one row per image: image + 3 heatmaps of the real model, then of the hybrid
model), `figure3.png` (all pairs' rows), `<model>/<train_set>/<image id>/<method>.npy` (the (H, W)
panel map in [0, 1]) and `<method>_raw.npy` (captum's attribution before any reduction), and
summary.json. Metrics `heat_in_lesion/<model>/<train_set>/<method>`: the share of each map's heat
inside the lesion mask, mean over the images with a non-empty mask, beside `lesion_area` (the mean
mask area share: what a uniform map would score) - a number for the paper's "attention toward
pathologically relevant regions".
"""
from __future__ import annotations

import contextlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import RunStatus
from torch import nn
from tqdm.auto import tqdm

from harness import tracking
from harness.config import ExplainConfig
from harness.data.augment import load_pair
from harness.data.prepare import Prepared, load_prepared, log_dataset_input
from harness.data.records import Sample
from harness.downstream import runtime
from harness.downstream.classify import CLASSIFIERS, MODELS, load_classifier
from harness.downstream.sets import DownstreamError
from harness.schema import (STAGE_CLASSIFY, STAGE_EXPLAIN, TAG_DEVICE, TAG_DIGEST, TAG_EXPLAIN_MODEL, TAG_HYBRID_RUN,
                            TAG_MODEL, TAG_REAL_RUN, TAG_STAGE, TAG_TRAIN_SET)

METHODS = ("gradcam", "saliency", "occlusion")
METHOD_TITLES = {"gradcam": "GradCAM", "saliency": "Saliency", "occlusion": "Occlusion"}
SETS = ("real", "hybrid")
SET_TITLES = {"real": "real-only", "hybrid": "hybrid"}
CAM_LAYERS = {name: spec.cam_layer for name, spec in CLASSIFIERS.items()}

# Figure layout, in pixels (the PNG is exactly 8 * PANEL_PX wide and TITLE_PX + rows * ROW_PX high).
PANEL_PX, LABEL_PX, TITLE_PX, DPI = 160, 48, 30, 100
ROW_PX = LABEL_PX + PANEL_PX
PANELS_PER_ROW = len(SETS) * (1 + len(METHODS))
OVERLAY_ALPHA, COLORMAP = 0.45, "jet"


# ---------------------------------------------------------------------------------------------
# GradCAM layer per architecture
# ---------------------------------------------------------------------------------------------

class SwinForCam(nn.Module):
    """timm Swin-T with its last stage's (B, H, W, C) output passed through `cam` as (B, C, H, W): the
    'reshape transform' that lets LayerGradCam (channels in dim 1) see the stage as a feature map.
    Same logits as the wrapped model (checked before use)."""

    def __init__(self, swin: nn.Module):
        super().__init__()
        self.swin = swin
        self.cam = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.swin
        x = m.layers(m.patch_embed(x))
        x = self.cam(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return m.forward_head(m.norm(x))


def cam_target(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """(the module to call, the layer GradCAM attributes to): the last convolutional stage.
    densenet121 `features` (ends with norm5; the ReLU and pooling follow in forward), resnet34 `layer4`,
    squeezenet1_1 `features` (last Fire module's output, before the classifier's 1x1 conv),
    swin_tiny the last stage through SwinForCam."""
    if name in ("densenet121", "squeezenet1_1"):
        return model, model.features
    if name == "resnet34":
        return model, model.layer4
    if name == "swin_tiny":
        wrapped = SwinForCam(model).eval()
        return wrapped, wrapped.cam
    raise DownstreamError(f"no GradCAM layer known for model {name!r}; known: {', '.join(MODELS)}")


def _check_swin_wrapper(model: nn.Module, wrapped: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = model(x), wrapped(x)
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RuntimeError("SwinForCam no longer reproduces timm's Swin forward (timm changed?); "
                           f"max difference {float((a - b).abs().max()):.3g}")


# ---------------------------------------------------------------------------------------------
# The three methods for one image
# ---------------------------------------------------------------------------------------------

def occlusion_geometry(image_size: int, window: int = 0, stride: int = 0) -> tuple[int, int]:
    window = window or max(1, image_size // 8)
    stride = stride or max(1, window // 2)
    if not 1 <= window <= image_size:
        raise DownstreamError(f"--occlusion-window must be in 1..{image_size} (the image size), got {window}")
    if not 1 <= stride <= window:
        raise DownstreamError(f"--occlusion-stride must be in 1..{window} (the window), got {stride}")
    return window, stride


def attributions(model: nn.Module, name: str, x: torch.Tensor, window: int, stride: int,
                 batch: int = 32) -> dict:
    """captum attributions of the predicted class for one normalised image x (1, 3, H, W):
    {"pred": class index, "probs": softmax, "raw": {method: captum's output as numpy}}."""
    from captum.attr import LayerGradCam, Occlusion, Saliency
    forward, layer = cam_target(model, name)
    if forward is not model:
        _check_swin_wrapper(model, forward, x)
    with torch.no_grad():
        logits = forward(x)
    pred = int(logits.argmax(1)[0])
    probs = torch.softmax(logits.float(), 1)[0].cpu().numpy()
    cam = LayerGradCam(forward, layer).attribute(x, target=pred, relu_attributions=True)
    sal = Saliency(forward).attribute(x.detach().clone().requires_grad_(True), target=pred, abs=True)
    occ = Occlusion(forward).attribute(x, target=pred, sliding_window_shapes=(3, window, window),
                                       strides=(3, stride, stride), baselines=0.0, perturbations_per_eval=batch)
    raw = {"gradcam": cam[0, 0], "saliency": sal[0], "occlusion": occ[0]}
    return {"pred": pred, "probs": probs, "raw": {k: v.detach().float().cpu().numpy() for k, v in raw.items()}}


def heat(method: str, raw: np.ndarray, size: int) -> np.ndarray:
    """One panel's (size, size) float32 map in [0, 1] from a method's raw attribution (module docstring)."""
    if method == "gradcam":
        t = torch.from_numpy(np.ascontiguousarray(raw, np.float32))[None, None]
        a = nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    elif method == "saliency":
        a = raw.max(axis=0)
    elif method == "occlusion":
        a = raw.mean(axis=0)
    else:
        raise ValueError(method)
    a = np.clip(a.astype(np.float64), 0.0, None)
    top = a.max()
    return (a / top if top > 0 else np.zeros_like(a)).astype(np.float32)


def normalise(image: np.ndarray, info: dict) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W), exactly as classify's ImageSet (x / 255 - mean) / std."""
    mean = torch.tensor(info["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(info["std"], dtype=torch.float32).view(3, 1, 1)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return ((x.float() / 255.0 - mean) / std)[None]


# ---------------------------------------------------------------------------------------------
# Which images, which runs
# ---------------------------------------------------------------------------------------------

def choose_images(test: list[Sample], n: int, seed: int) -> list[Sample]:
    """n seeded picks from the test split, one per class first (module docstring)."""
    if n < 1:
        raise DownstreamError(f"--n-images must be >= 1, got {n}")
    if not test:
        raise DownstreamError("the real test split is empty: nothing to explain")
    rng = np.random.default_rng(seed)
    classes = sorted({s.label for s in test})
    chosen: list[Sample] = []
    for c in [classes[i] for i in rng.permutation(len(classes))][:n]:
        pool = sorted((s for s in test if s.label == c), key=lambda s: s.id)
        chosen.append(pool[int(rng.integers(len(pool)))])
    rest = sorted((s for s in test if s not in chosen), key=lambda s: s.id)
    chosen += [rest[i] for i in rng.permutation(len(rest))][: n - len(chosen)]
    return chosen


def select_images(prepared: Prepared, images: str, n: int, seed: int) -> list[Sample]:
    if not images.strip():
        return choose_images(prepared.dataset.split("test").samples, n, seed)
    by_id = {s.id: s for s in prepared.dataset.samples}
    ids = [i.strip() for i in images.split(",") if i.strip()]
    missing = [i for i in ids if i not in by_id]
    if missing:
        test_ids = sorted(s.id for s in prepared.dataset.split("test").samples)
        raise DownstreamError(f"--images: {missing} not in {prepared.dataset.root}; its test split has "
                              f"{len(test_ids)} images, e.g. {', '.join(test_ids[:8])}")
    if len(set(ids)) != len(ids):
        raise DownstreamError(f"--images lists an id twice: {ids}")
    return [by_id[i] for i in ids]


@dataclass
class Pair:
    model: str
    real: mlflow.entities.Run
    hybrid: mlflow.entities.Run


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _finished_classify_runs(experiment_id: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(f"tags.`{TAG_STAGE}` = '{STAGE_CLASSIFY}' and "
                       f"attributes.status = '{RunStatus.to_string(RunStatus.FINISHED)}'"),
        order_by=["attributes.start_time DESC"], output_format="list")


def _describe(runs: list[mlflow.entities.Run]) -> str:
    if not runs:
        return "it has no FINISHED classify runs (run `classify --train-set real` and `--train-set hybrid` first)"
    return "its FINISHED classify runs: " + "; ".join(
        f"{r.info.run_id} ({r.data.tags.get(TAG_MODEL)}, {r.data.tags.get(TAG_TRAIN_SET)})"
        for r in runs)


def _given_run(run_id: str, train_set: str) -> mlflow.entities.Run:
    option = f"--{train_set}-run"
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise DownstreamError(f"{option} {run_id}: no such run in {mlflow.get_tracking_uri()}") from e
    tags = run.data.tags
    if tags.get(TAG_STAGE) != STAGE_CLASSIFY:
        raise DownstreamError(f"{option} {run_id}: not a classify run (stage {tags.get(TAG_STAGE)!r})")
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise DownstreamError(f"{option} {run_id}: the run is {run.info.status}, not FINISHED")
    if tags.get(TAG_TRAIN_SET) != train_set:
        raise DownstreamError(f"{option} {run_id}: trained on {tags.get(TAG_TRAIN_SET)!r}, "
                              f"not {train_set!r}")
    return run


def model_of(run: mlflow.entities.Run) -> str | None:
    return run.data.tags.get(TAG_MODEL)


def resolve_pairs(cfg: ExplainConfig, experiment_name: str) -> list[Pair]:
    """The (real, hybrid) classify run pairs, one per model (rule in the module docstring)."""
    exp = mlflow.get_experiment_by_name(experiment_name)
    available = _finished_classify_runs(exp.experiment_id) if exp is not None else []
    where = f"experiment {experiment_name!r}"

    def newest(model: str, train_set: str) -> mlflow.entities.Run:
        for r in available:
            if r.data.tags.get(TAG_MODEL) == model and r.data.tags.get(TAG_TRAIN_SET) == train_set:
                return r
        raise DownstreamError(f"no FINISHED classify run of {model} trained on {train_set!r} in {where}; "
                              f"{_describe(available)}. Pass --{train_set}-run <run id> or train one")

    models = _split(cfg.model)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise DownstreamError(f"--model: unknown {unknown}; choose from {', '.join(MODELS)}")
    reals = [_given_run(r, "real") for r in _split(cfg.real_run)]
    hybrids = [_given_run(r, "hybrid") for r in _split(cfg.hybrid_run)]
    if reals and hybrids:
        if len(reals) != len(hybrids):
            raise DownstreamError(f"--real-run lists {len(reals)} runs, --hybrid-run {len(hybrids)}: "
                                  "give one of each per model (or leave one side empty to pick it)")
        pairs = [Pair(model_of(r), r, h) for r, h in zip(reals, hybrids)]
        for p in pairs:
            if model_of(p.hybrid) != p.model:
                raise DownstreamError(f"--real-run {p.real.info.run_id} is {p.model} but --hybrid-run "
                                      f"{p.hybrid.info.run_id} is {model_of(p.hybrid)}: a pair is one model")
    elif reals:
        pairs = [Pair(model_of(r), r, newest(model_of(r), "hybrid")) for r in reals]
    elif hybrids:
        pairs = [Pair(model_of(h), newest(model_of(h), "real"), h) for h in hybrids]
    else:
        if not models:
            have = {(model_of(r), r.data.tags.get(TAG_TRAIN_SET)) for r in available}
            models = [m for m in MODELS if (m, "real") in have and (m, "hybrid") in have]
            if not models:
                raise DownstreamError(f"no model has both a FINISHED real and a FINISHED hybrid classify run in "
                                      f"{where}; {_describe(available)}")
        pairs = [Pair(m, newest(m, "real"), newest(m, "hybrid")) for m in models]
    if models and sorted(p.model for p in pairs) != sorted(models):
        raise DownstreamError(f"--model {','.join(models)} does not match the given runs' models "
                              f"{','.join(p.model for p in pairs)}; leave --model empty when naming runs")
    seen = [p.model for p in pairs]
    if len(set(seen)) != len(seen):
        raise DownstreamError(f"one pair per model: {seen} repeats a model")
    return pairs


def load_data(pairs: list[Pair], data_dir: str, progress: bool) -> Prepared:
    """The real data the runs were trained and tested on, split as they split it (their params)."""
    digests = {r.data.tags.get(TAG_DIGEST) for p in pairs for r in (p.real, p.hybrid)}
    if len(digests) != 1:
        listing = "; ".join(f"{r.info.run_id}: {r.data.tags.get(TAG_DIGEST)}"
                            for p in pairs for r in (p.real, p.hybrid))
        raise DownstreamError(f"the classify runs were trained on different real data (dataset digests {listing}); "
                              "explain runs whose real data is the same")
    params = tracking.effective_params(pairs[0].real)
    source = data_dir or params.get("data_dir", "")
    prepared = load_prepared(source, "auto", float(params.get("test_fraction", 0.176)),
                             int(params.get("seed", 42)), progress=progress)
    [digest] = digests
    if prepared.digest != digest:
        raise DownstreamError(
            f"the data at {source or '(demo)'} split with test_fraction={params.get('test_fraction')}, "
            f"seed={params.get('seed')} has digest {prepared.digest}, but run {pairs[0].real.info.run_id} was "
            f"trained on digest {digest}; pass --data-dir <the data it was trained on>")
    return prepared


# ---------------------------------------------------------------------------------------------
# Figure 3
# ---------------------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def figure3(rows: list[dict], title: str):
    """One row per entry of `rows` ({"sample", "model", "real": result, "hybrid": result}, a result =
    {"image", "pred_class", "prob", "heat": {method: map}}): image + 3 overlays for the real-only model,
    then the same for the hybrid model. Exactly 8 * PANEL_PX x (TITLE_PX + rows * ROW_PX) pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    width, height = PANELS_PER_ROW * PANEL_PX, TITLE_PX + len(rows) * ROW_PX
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - TITLE_PX / 2 / height, title, ha="center", va="center", fontsize=10)
    for r, row in enumerate(rows):
        top = TITLE_PX + r * ROW_PX                          # pixels from the top
        for g, train_set in enumerate(SETS):
            res = row[train_set]
            for j, method in enumerate(("image",) + METHODS):
                col = g * (1 + len(METHODS)) + j
                ax = fig.add_axes((col * PANEL_PX / width, 1 - (top + ROW_PX) / height, PANEL_PX / width,
                                   PANEL_PX / height))
                ax.imshow(res["image"], interpolation="nearest")
                if method == "image":
                    label = (f"{row['model']} {SET_TITLES[train_set]}\n{row['sample'].id}\n"
                             f"true: {row['sample'].label}\npred: {res['pred_class']} ({res['prob']:.2f})")
                else:
                    ax.imshow(res["heat"][method], cmap=COLORMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=1,
                              interpolation="bilinear")
                    label = f"{SET_TITLES[train_set]}\n{METHOD_TITLES[method]}"
                ax.set_axis_off()
                fig.text((col + 0.5) * PANEL_PX / width, 1 - (top + LABEL_PX / 2) / height, label,
                         ha="center", va="center", fontsize=6, clip_on=True)
    x = (1 + len(METHODS)) * PANEL_PX / width          # the line between the real and the hybrid halves
    fig.add_artist(Line2D([x, x], [0, 1 - TITLE_PX / height], color="white", linewidth=2))
    return fig


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def exact_cuda():
    """On CUDA: deterministic cuDNN algorithms, no TF32 (the maps are then the same run to run and match a
    plain fp32 autograd to float precision); flags restored afterwards. No effect on CPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def explain_image(model: nn.Module, info: dict, image: np.ndarray, window: int, stride: int,
                  device: torch.device) -> dict:
    """The three maps of one model for one uint8 image already at info["image_size"]."""
    x = normalise(image, info).to(device)
    with exact_cuda():
        out = attributions(model, info["model"], x, window, stride)
    size = info["image_size"]
    out["heat"] = {m: heat(m, out["raw"][m], size) for m in METHODS}
    out["pred_class"] = info["classes"][out["pred"]]
    out["prob"] = float(out["probs"][out["pred"]])
    return out


def _heat_in_lesion(h: np.ndarray, mask: np.ndarray) -> float | None:
    total = float(h.sum())
    if not mask.any() or total <= 0:
        return None
    return float((h * mask).sum() / total)


@dataclass
class PairResult:
    """One pair's maps: the figure rows, its summary.json entry, its metrics and the arrays to save
    ({folder under heatmaps/: {file name: array}})."""
    pair: Pair
    rows: list[dict]
    entry: dict
    metrics: dict[str, float]
    arrays: dict[str, dict[str, np.ndarray]]


def explain_sample(s: Sample, p: Pair, models: dict, cfg: ExplainConfig, device, test_ids: set[str]):
    """Both models of pair p on image s: (figure row, summary item, arrays, lesion shares, lesion area)."""
    row = {"sample": s, "model": p.model}
    item = {"id": s.id, "label": s.label, "split": "test" if s.id in test_ids else "train"}
    arrays, shares, area = {}, {}, None
    for train_set in SETS:
        model, info = models[p.model, train_set]
        size = info["image_size"]
        image, mask = load_pair(s, size)
        window, stride = occlusion_geometry(size, cfg.occlusion_window, cfg.occlusion_stride)
        res = explain_image(model, info, image, window, stride, device)
        res["image"], row[train_set] = image, res
        folder = f"{_safe(p.model)}/{train_set}/{_safe(s.id)}"
        arrays[folder], flat = {}, {}
        for m in METHODS:
            arrays[folder][f"{m}.npy"] = res["heat"][m]
            arrays[folder][f"{m}_raw.npy"] = res["raw"][m]
            share = _heat_in_lesion(res["heat"][m], mask)
            if share is not None:
                shares[train_set, m] = share
            flat[m] = {"heat": f"heatmaps/{folder}/{m}.npy", "raw_shape": list(res["raw"][m].shape),
                       "all_zero": bool(res["heat"][m].max() == 0), "heat_in_lesion": share}
        item[train_set] = {"predicted": res["pred_class"], "prob": res["prob"], "image_size": size,
                           "occlusion_window": window, "occlusion_stride": stride, "maps": flat}
        if train_set == "real" and mask.any():
            area = float(mask.mean())
    return row, item, arrays, shares, area


def explain_pair(p: Pair, samples: list[Sample], models: dict, cfg: ExplainConfig, device, test_ids: set[str],
                 bar=None) -> PairResult:
    """Every image through both models of pair p, with the pair's lesion metrics."""
    rows, arrays, lesion, areas = [], {}, {}, []
    entry = {"model": p.model, "gradcam_layer": CAM_LAYERS[p.model], "real_run": p.real.info.run_id,
             "hybrid_run": p.hybrid.info.run_id, "images": []}
    for s in samples:
        row, item, sample_arrays, shares, area = explain_sample(s, p, models, cfg, device, test_ids)
        rows.append(row)
        entry["images"].append(item)
        arrays.update(sample_arrays)
        for key, share in shares.items():
            lesion.setdefault(key, []).append(share)
        if area is not None:
            areas.append(area)
        if bar is not None:
            bar.update(1)
    metrics = {f"heat_in_lesion/{p.model}/{train_set}/{m}": float(np.mean(v)) for (train_set, m), v in lesion.items()}
    if areas:
        metrics[f"lesion_area/{p.model}"] = float(np.mean(areas))
    return PairResult(p, rows, entry, metrics, arrays)


def load_models(pairs: list[Pair], cfg: ExplainConfig, device) -> dict:
    """{(model, train_set): (model on device, model.json)} of every pair's runs, checked."""
    models = {}
    for p in pairs:
        for train_set, run in (("real", p.real), ("hybrid", p.hybrid)):
            try:
                model, info = load_classifier(run.info.run_id)
            except Exception as e:       # a FINISHED classify run always has it; say which run lacks it
                raise DownstreamError(f"run {run.info.run_id}: cannot load its model artifact "
                                      f"({type(e).__name__}: {e})") from e
            models[p.model, train_set] = (model.to(device), info)
            occlusion_geometry(info["image_size"], cfg.occlusion_window, cfg.occlusion_stride)
        if models[p.model, "real"][1]["classes"] != models[p.model, "hybrid"][1]["classes"]:
            raise DownstreamError(f"{p.model}: the real and hybrid runs have different classes")
    return models


def _log_results(results: list[PairResult]) -> None:
    """heatmaps/ (arrays, figures, summary.json) and the lesion metrics of every pair."""
    summary = {"methods": list(METHODS), "normalisation": "positive part / its max, per panel",
               "pairs": [r.entry for r in results]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "heatmaps"
        root.mkdir()
        for r in results:
            for folder, files in r.arrays.items():
                (root / folder).mkdir(parents=True)
                for file, array in files.items():
                    np.save(root / folder / file, array)
            _save_png(figure3(r.rows, f"{r.pair.model}: real-only (left) vs hybrid (right), predicted class"),
                      root / f"figure3_{_safe(r.pair.model)}.png")
        _save_png(figure3([row for r in results for row in r.rows],
                          "GradCAM, Saliency, Occlusion: real-only (left) vs hybrid (right)"), root / "figure3.png")
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_artifacts(str(root), "heatmaps")
    metrics = {k: v for r in results for k, v in r.metrics.items()}
    if metrics:
        mlflow.log_metrics(metrics)


def explain(cfg: ExplainConfig, experiment: str | None = None, progress: bool = True) -> str:
    """GradCAM / Saliency / Occlusion maps of the real-only and hybrid classifiers; return the run id.
    Runs, data and images are resolved and checked before the run starts."""
    if cfg.occlusion_window < 0 or cfg.occlusion_stride < 0:
        raise DownstreamError("--occlusion-window and --occlusion-stride must be >= 0 (0 = automatic)")
    name = tracking.setup(experiment)
    pairs = resolve_pairs(cfg, name)
    prepared = load_data(pairs, cfg.data_dir, progress)
    samples = select_images(prepared, cfg.images, cfg.n_images, cfg.seed)
    device = runtime.pick_device()
    models = load_models(pairs, cfg, device)
    torch.manual_seed(cfg.seed)

    tags = {TAG_REAL_RUN: ",".join(p.real.info.run_id for p in pairs),
            TAG_HYBRID_RUN: ",".join(p.hybrid.info.run_id for p in pairs),
            TAG_EXPLAIN_MODEL: ",".join(p.model for p in pairs), TAG_DEVICE: str(device)}
    with tracking.stage_run(STAGE_EXPLAIN, cfg, prepared.digest, experiment,
                            run_name=f"explain {','.join(p.model for p in pairs)}", extra_tags=tags) as run:
        log_dataset_input(prepared, context="real")
        mlflow.log_params({"image_ids": ",".join(s.id for s in samples),
                           **{f"gradcam_layer.{p.model}": CAM_LAYERS[p.model] for p in pairs}})
        test_ids = {s.id for s in prepared.dataset.split("test").samples}
        bar = tqdm(total=len(pairs) * len(samples), desc="explain", unit="img", disable=not progress)
        results = [explain_pair(p, samples, models, cfg, device, test_ids, bar) for p in pairs]
        bar.close()
        _log_results(results)
        return run.info.run_id
