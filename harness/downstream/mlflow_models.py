"""Classifiers and segmenters as MLflow pyfunc models, the preprocessing inside: raw RGB in.

    clf = mlflow.pyfunc.load_model("runs:/<classify run>/model")     # or models:/<--register-as name>/1
    clf.predict(images)           # images: (N, H, W, 3) uint8 RGB -> DataFrame, one prob_<class> column
                                  # per class and `predicted` (the class name)
    seg = mlflow.pyfunc.load_model("runs:/<segment run>/model")
    seg.predict(images)           # -> (N, H, W) uint8 masks in {0, 1}, at the input's size

`mlflow models predict -m runs:/<id>/model --env-manager local -i images.json -t json` serves the
same ({"inputs": [[[[r, g, b], ...]]]}). Each image is resized to the model's size as training
resized it (LANCZOS, harness.data.augment.load_pair) and normalised with ImageNet's mean and std; a
segmenter's logits are resized back (bilinear) and thresholded at 0.5, as the segment stage scores
them. The weights and model.json travel as the pyfunc's artifact `downstream`; `downstream_folder`
returns that folder for the harness's own loaders (classify.load_classifier, segment.load_segmenter).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from harness.downstream.sets import DownstreamError

ARTIFACT_KEY = "downstream"          # the folder: model.pt (state dict) + model.json (what it is)


def preprocess(images: np.ndarray, size: int, mean, std):
    """(N, H, W, 3) uint8 RGB -> (N, 3, size, size) float tensor, resized and normalised as in training."""
    import torch
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images as an (N, H, W, 3) uint8 array, got shape {images.shape}")
    resized = np.stack([np.asarray(Image.fromarray(np.asarray(im, np.uint8)).resize((size, size),
                                                                                   Image.Resampling.LANCZOS))
                        for im in images])                                     # (N, size, size, 3)
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0          # (N, 3, size, size)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class _Downstream(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.info = self.load(Path(context.artifacts[ARTIFACT_KEY]))


class ClassifierPyfunc(_Downstream):
    @staticmethod
    def load(folder: Path):
        from harness.downstream.classify import load_folder
        return load_folder(folder)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        import torch
        x = preprocess(np.asarray(model_input), self.info["image_size"], self.info["mean"], self.info["std"])
        with torch.no_grad():
            probs = torch.softmax(self.model(x).float(), dim=1).numpy()            # (N, classes)
        classes = self.info["classes"]
        out = pd.DataFrame(probs.astype(np.float64), columns=[f"prob_{c}" for c in classes])
        out["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
        return out


class SegmenterPyfunc(_Downstream):
    @staticmethod
    def load(folder: Path):
        from harness.downstream.segment import load_folder
        return load_folder(folder)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch
        images = np.asarray(model_input)
        x = preprocess(images, self.info["image_size"], self.info["mean"], self.info["std"])
        with torch.no_grad():
            logits = self.model(x).float()                                           # (N, 1, S, S)
            full = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear",
                                                   align_corners=False)              # (N, 1, H, W)
        return (torch.sigmoid(full[:, 0]) > self.info["threshold"]).numpy().astype(np.uint8)   # (N, H, W)


def example_image(path: Path, side: int = 32) -> np.ndarray:
    """(1, side, side, 3) uint8: one real image, small (the signature takes any size), as the input example."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS))[None]


def log_downstream_model(folder: Path, kind: str, example: np.ndarray, register_as: str = "") -> None:
    """Log `folder` (model.pt + model.json) as the pyfunc `model` of the active run, with its signature
    and one input image as example; with `register_as`, register it under that name."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    info = json.loads((folder / "model.json").read_text())
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    if kind == "classifier":
        outputs = Schema([ColSpec("double", f"prob_{c}") for c in info["classes"]] + [ColSpec("string", "predicted")])
        python_model = ClassifierPyfunc()
    else:
        outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))])
        python_model = SegmenterPyfunc()
    # the class is pickled by reference to this installed package (it holds no state until load_context);
    # MLflow's warning about pickling python_model objects is said once here, not on every run
    quiet = logging.getLogger("mlflow.pyfunc")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        logged = mlflow.pyfunc.log_model(name="model", python_model=python_model,
                                         artifacts={ARTIFACT_KEY: str(folder)}, signature=ModelSignature(inputs, outputs),
                                         input_example=example, pip_requirements=["skindualgen-harness"])
    finally:
        quiet.setLevel(level)
    if register_as:
        mlflow.register_model(logged.model_uri, register_as)


def downstream_folder(uri: str) -> Path:
    """The model.pt + model.json folder behind a downstream pyfunc URI (runs:/<id>/model, models:/...)."""
    try:
        path = Path(mlflow.artifacts.download_artifacts(uri))
    except mlflow.exceptions.MlflowException as e:
        raise DownstreamError(f"{uri}: no model there ({str(e).splitlines()[0][:200]})") from None
    if (path / "model.json").is_file():              # a run logged before the pyfunc: the plain folder
        return path
    import yaml
    flavor = yaml.safe_load((path / "MLmodel").read_text()).get("flavors", {}).get("python_function", {}) \
        if (path / "MLmodel").is_file() else {}
    rel = (flavor.get("artifacts") or {}).get(ARTIFACT_KEY, {}).get("path")
    if not rel or not (path / rel / "model.json").is_file():
        raise DownstreamError(f"{uri} is not a classify or segment model (no {ARTIFACT_KEY}/model.json in it)")
    return path / rel
