"""The fine-tuned model as an MLflow pyfunc: everything needed to generate travels with it.

    model = mlflow.pyfunc.load_model("runs:/<finetune run>/model")     # or models:/skindualgen@champion
    out = model.predict(pd.DataFrame({"class_name": ["melanoma"], "seed": [7]}),
                        params={"num_inference_steps": 45, "guidance_scale": 1.22, "resolution": 512})
    out.image_png[0], out.mask_png[0]                                   # PNG bytes

Input columns: `prompt` or `class_name` (the class template is applied), and `seed` (default: the row
number). The DualGen model folder is the pyfunc's artifact `dualgen`; `model_folder(uri)` returns
that folder for code (like `generate`) that drives DualGenPipeline directly.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pandas as pd

from harness.errors import HarnessError
from harness.schema import TRAINING_JSON

ARTIFACT_KEY = "dualgen"


class ModelURIError(HarnessError, ValueError):
    """A model URI that names no DualGen model (no such run, registered model, version or alias, or
    not a DualGen model); the message lists what exists."""


class DualGenPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from harness.dualgen.pipeline import DualGenPipeline
        folder = Path(context.artifacts[ARTIFACT_KEY])
        self.pipe = DualGenPipeline.from_folder(folder, fuse=True)
        self.training = json.loads((folder / TRAINING_JSON).read_text())

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        template = self.training["prompt_template"]
        if "prompt" in model_input:
            prompts = model_input["prompt"].astype(str).tolist()
        elif "class_name" in model_input:
            prompts = [template.format(class_name=c) for c in model_input["class_name"]]
        else:
            raise ValueError("input needs a `prompt` or a `class_name` column")
        seeds = model_input["seed"].astype(int).tolist() if "seed" in model_input else list(range(len(prompts)))
        size = int(params.get("resolution", self.training["resolution"]))
        pairs = self.pipe(prompts, seeds, num_inference_steps=int(params.get("num_inference_steps", 45)),
                          guidance_scale=float(params.get("guidance_scale", 1.22)), height=size, width=size,
                          progress=False)
        return pd.DataFrame({"prompt": prompts, "seed": seeds,
                             "image_png": [_png(i) for i, _ in pairs], "mask_png": [_png(m) for _, m in pairs]})


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def log_dualgen_model(model_dir: Path, name: str = "model"):
    """Log the pyfunc (code by reference to this installed package) with the model folder as artifact."""
    from mlflow.models import infer_signature
    example = pd.DataFrame({"class_name": ["melanoma"], "seed": [0]})
    signature = infer_signature(example, pd.DataFrame({"prompt": ["p"], "seed": [0], "image_png": [b""],
                                                       "mask_png": [b""]}),
                                params={"num_inference_steps": 45, "guidance_scale": 1.22, "resolution": 512})
    return mlflow.pyfunc.log_model(name=name, python_model=DualGenPyfunc(),
                                   artifacts={ARTIFACT_KEY: str(model_dir)}, signature=signature,
                                   pip_requirements=["skindualgen-harness"])


def model_folder(uri: str) -> Path:
    """The DualGen model folder behind a pyfunc URI (runs:/, models:/, a local pyfunc folder) or a
    plain DualGen folder. Raise ModelURIError when the model is not a DualGen model."""
    local = Path(uri).expanduser()
    if local.is_dir() and (local / "dualgen.json").is_file():
        return local
    path = Path(mlflow.artifacts.download_artifacts(uri)) if not local.is_dir() else local
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():   # pyfunc: the folder is the artifact registered under ARTIFACT_KEY
        import yaml
        flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
        rel = (flavor.get("artifacts") or {}).get(ARTIFACT_KEY, {}).get("path")
        if rel and (path / rel / "dualgen.json").is_file():
            return path / rel
    raise ModelURIError(f"{uri} is not a SkinDualGen dual-generation model (no {ARTIFACT_KEY}/dualgen.json in it)")
