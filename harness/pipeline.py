"""The `main` entry point: the paper's steps in order, as child runs of one parent run.

Each step is an `mlflow.projects.run` of this project's own entry point (same env manager as the
parent), so a child run is exactly what a user gets from `mlflow run . -e <step>`. Before running a
step, the parent resolves the step's full config (profile + parameters) and looks for a FINISHED run
of that step with the same params and code version: if there is one, it is reused, not redone, so an
interrupted pipeline continues where it stopped. Outputs pass forward as run ids / model URIs.

Steps: prepare -> finetune -> generate -> evaluate (real/real, real/synth) -> register ->
classify x models x {real, synth, hybrid} -> segment x models x sets -> explain -> report.
`describe` is not chained: the paper's descriptions come with its dataset (run it on new data).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from harness import tracking
from harness.config import (ClassifyConfig, EvaluateConfig, ExplainConfig, FinetuneConfig, GenerateConfig,
                            PrepareConfig, RegisterConfig, ReportConfig, SegmentConfig, with_profile)

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class PipelineConfig:
    profile: str = "demo"
    data_dir: str = ""
    base_model: str = ""          # "" = the profile's (demo: tiny; paper: stabilityai/stable-diffusion-2-base)
    env_manager: str = "local"
    eval_data: str = ""           # a HAM10000 folder for Table 3 ("" = none)
    seed: int = 42


# The demo profile trains a subset of the downstream models (the method is unchanged).
PAPER_MODELS = {"classify": ("densenet121", "resnet34", "squeezenet1_1", "swin_tiny"),
                "segment": ("unet", "deeplabv3plus")}
DEMO_MODELS = {"classify": ("squeezenet1_1", "resnet34"), "segment": ("unet",)}


def _step_params(stage: str, cfg) -> dict[str, str]:
    return {k: v for k, v in tracking.config_params(cfg).items()}


def run_step(stage: str, cfg, cli_params: dict[str, str], pipe: PipelineConfig, experiment: str,
             parent_id: str, log, reuse: bool = True, label: str = "") -> mlflow.entities.Run:
    """Reuse a FINISHED run with the same resolved params and code version, else run the entry point.
    (`register` is never reused: it must look at the evaluations that exist now; it is idempotent.)"""
    start = time.perf_counter()
    found = tracking.find_reusable_run(stage, _step_params(stage, cfg), experiment) if reuse else None
    if found is not None:
        log(f"[{label or stage}] reused run {found.info.run_id} ({time.perf_counter() - start:.1f} s)")
        mlflow.set_tag(f"skindualgen.step.{label or stage}", found.info.run_id)
        return found
    if not (PROJECT_DIR / "MLproject").is_file():
        raise FileNotFoundError(f"{PROJECT_DIR}/MLproject not found: `main` runs from a checkout of the project")
    env = {"MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"}
    saved = {k: os.environ.pop(k) for k in env if k in os.environ}   # the child makes its own run
    try:
        submitted = mlflow.projects.run(str(PROJECT_DIR), entry_point=stage, parameters=cli_params,
                                        env_manager=pipe.env_manager, experiment_name=experiment,
                                        synchronous=True)
    finally:
        os.environ.update(saved)
    run_id = submitted.run_id
    mlflow.tracking.MlflowClient().set_tag(run_id, "mlflow.parentRunId", parent_id)
    mlflow.set_tag(f"skindualgen.step.{label or stage}", run_id)
    log(f"[{label or stage}] run {run_id} finished in {time.perf_counter() - start:.1f} s")
    return mlflow.get_run(run_id)


def step_config(cfg_cls, stage: str, profile: str, given: dict):
    """The config the child will resolve, and the -P parameters that make it resolve so."""
    cfg = with_profile(cfg_cls, stage, profile, given)
    return cfg, {"profile": profile, **{k: str(v) for k, v in given.items()}}


def run_pipeline(pipe: PipelineConfig, experiment: str | None = None, log=print) -> str:
    experiment = tracking.setup(experiment)
    t0 = time.perf_counter()
    with tracking.stage_run("main", pipe, experiment=experiment) as parent:
        pid = parent.info.run_id

        def step(stage, cfg_cls, given, label=""):
            cfg, params = step_config(cfg_cls, stage, pipe.profile, given)
            return run_step(stage, cfg, params, pipe, experiment, pid, log, label=label)

        common = {"data_dir": pipe.data_dir, "seed": pipe.seed}
        prep = run_step("prepare", PrepareConfig(data_dir=pipe.data_dir, seed=pipe.seed),
                        {"data_dir": pipe.data_dir, "seed": str(pipe.seed)}, pipe, experiment, pid, log)
        mlflow.set_tag(tracking.TAG_DIGEST, prep.data.tags.get(tracking.TAG_DIGEST, ""))

        base = {"base_model": pipe.base_model} if pipe.base_model else {}
        ft = step("finetune", FinetuneConfig, {**common, **base})
        # the synthetic set has N_c images of class c, as many as the real training split: what
        # `synth` (N_c) and `hybrid` (N_c // 2) take, so neither repeats an image and none is wasted
        gen = step("generate", GenerateConfig, {
            "model_uri": f"runs:/{ft.info.run_id}/model", "match_real": True, "seed": pipe.seed,
            "output_dir": str(Path("outputs") / f"generate-{ft.info.run_id[:8]}-match-real")})
        synth = f"runs:/{gen.info.run_id}"

        step("evaluate", EvaluateConfig, {"real": pipe.data_dir, "seed": pipe.seed}, "evaluate.real_test")
        step("evaluate", EvaluateConfig, {"real": pipe.data_dir, "fake": synth, "seed": pipe.seed}, "evaluate.synth")
        run_step("register", RegisterConfig(), {}, pipe, experiment, pid, log, reuse=False)

        models = DEMO_MODELS if pipe.profile == "demo" else PAPER_MODELS
        trained: dict[tuple[str, str], str] = {}
        for stage, cfg_cls in (("classify", ClassifyConfig), ("segment", SegmentConfig)):
            for model in models[stage]:
                for train_set in ("real", "synth", "hybrid"):
                    run = step(stage, cfg_cls, {**common, "model": model, "train_set": train_set, "synth": synth,
                                                "eval_data": pipe.eval_data}, f"{stage}.{model}.{train_set}")
                    trained[(model, train_set)] = run.info.run_id
        classifiers = models["classify"]
        step("explain", ExplainConfig, {"real_run": ",".join(trained[(m, "real")] for m in classifiers),
                                        "hybrid_run": ",".join(trained[(m, "hybrid")] for m in classifiers),
                                        "seed": pipe.seed})
        # the report reads whatever runs exist now: never reused, it only reads MLflow
        run_step("report", ReportConfig(), {}, pipe, experiment, pid, log, reuse=False)
        mlflow.log_metric("pipeline/seconds", time.perf_counter() - t0)
        log(f"[main] done in {time.perf_counter() - t0:.1f} s (parent run {pid})")
        return pid
