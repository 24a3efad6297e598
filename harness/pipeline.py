"""The `main` entry point: the paper's steps in order, as child runs of one parent run.

Each step is an `mlflow.projects.run` of this project's own entry point (same env manager as the
parent), so a child run is exactly what a user gets from `mlflow run . -e <step>`. Before running a
step, the parent resolves the step's full config (profile + parameters) and looks for a FINISHED run
of that step with the same params and code version: if there is one, it is reused, not redone, so an
interrupted pipeline continues where it stopped. Outputs pass forward as run ids / model URIs.

Steps built so far: prepare -> finetune -> generate. The later paper steps (evaluate, register,
classify, segment, explain, report) join this list as they are built.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from harness import tracking
from harness.config import FinetuneConfig, GenerateConfig, PrepareConfig, with_profile

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class PipelineConfig:
    profile: str = "demo"
    data_dir: str = ""
    base_model: str = ""          # "" = the profile's (demo: tiny; paper: stabilityai/stable-diffusion-2-base)
    env_manager: str = "local"
    seed: int = 42


def _step_params(stage: str, cfg) -> dict[str, str]:
    return {k: v for k, v in tracking.config_params(cfg).items()}


def run_step(stage: str, cfg, cli_params: dict[str, str], pipe: PipelineConfig, experiment: str,
             parent_id: str, log) -> mlflow.entities.Run:
    """Reuse a FINISHED run with the same resolved params and code version, else run the entry point."""
    start = time.perf_counter()
    found = tracking.find_reusable_run(stage, _step_params(stage, cfg), experiment)
    if found is not None:
        log(f"[{stage}] reused run {found.info.run_id} ({time.perf_counter() - start:.1f} s)")
        mlflow.set_tag(f"skindualgen.step.{stage}", found.info.run_id)
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
    mlflow.set_tag(f"skindualgen.step.{stage}", run_id)
    log(f"[{stage}] run {run_id} finished in {time.perf_counter() - start:.1f} s")
    return mlflow.get_run(run_id)


def run_pipeline(pipe: PipelineConfig, experiment: str | None = None, log=print) -> str:
    experiment = tracking.setup(experiment)
    t0 = time.perf_counter()
    with tracking.stage_run("main", pipe, experiment=experiment) as parent:
        pid = parent.info.run_id
        given = {"data_dir": pipe.data_dir, "seed": pipe.seed}
        prep_cfg = PrepareConfig(data_dir=pipe.data_dir, seed=pipe.seed)
        prep = run_step("prepare", prep_cfg, {"data_dir": pipe.data_dir, "seed": str(pipe.seed)}, pipe,
                        experiment, pid, log)
        mlflow.set_tag(tracking.TAG_DIGEST, prep.data.tags.get(tracking.TAG_DIGEST, ""))

        ft_given = {**given, **({"base_model": pipe.base_model} if pipe.base_model else {})}
        ft_cfg = with_profile(FinetuneConfig, "finetune", pipe.profile, ft_given)
        ft = run_step("finetune", ft_cfg, {"profile": pipe.profile, **{k: str(v) for k, v in ft_given.items()}},
                      pipe, experiment, pid, log)

        model_uri = f"runs:/{ft.info.run_id}/model"
        gen_given = {"model_uri": model_uri, "seed": pipe.seed,
                     "output_dir": str(Path("outputs") / f"generate-{ft.info.run_id[:8]}")}
        gen_cfg = with_profile(GenerateConfig, "generate", pipe.profile, gen_given)
        run_step("generate", gen_cfg, {"profile": pipe.profile, **{k: str(v) for k, v in gen_given.items()}},
                 pipe, experiment, pid, log)
        mlflow.log_metric("pipeline/seconds", time.perf_counter() - t0)
        log(f"[main] done in {time.perf_counter() - t0:.1f} s (parent run {pid})")
        return pid
