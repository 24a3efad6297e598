"""One table of stages: each stage's config class, the harness function that runs it, its description
and what its command prints. The click commands of the config-driven stages (entrypoints/stages.py),
the MLflow run descriptions (tracking.STAGE_DESCRIPTIONS), main's step configs (pipeline.STEP_CONFIGS)
and the check of MLproject's entry points (tests/test_packaging.py) all read it. Adding such a stage =
one entry here + its module (+ its MLproject entry point and PROFILES section, which a test demands).

Stages with options of their own (main, prepare, describe, register, report) keep a hand-written
click command in entrypoints/ (entrypoints/cli.py: HAND_WRITTEN); they are listed with `run` empty.
Nothing here imports entrypoints/.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from harness.config import (ClassifyConfig, DescribeConfig, EvaluateConfig, ExplainConfig, FinetuneConfig,
                            GenerateConfig, JudgesConfig, PrepareConfig, RegisterConfig, ReportConfig, SegmentConfig,
                            TuneConfig)
from harness.schema import (STAGE_CLASSIFY, STAGE_DESCRIBE, STAGE_EVALUATE, STAGE_EXPLAIN, STAGE_FINETUNE,
                            STAGE_GENERATE, STAGE_JUDGES, STAGE_MAIN, STAGE_PREPARE, STAGE_REGISTER, STAGE_REPORT,
                            STAGE_SEGMENT, STAGE_TUNE)


def load(ref: str) -> Callable:
    """"package.module:function" -> the function (imported only when a stage runs)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    config: type | None       # its config dataclass (the command's options, the run's params)
    description: str          # the run's MLflow description and the command's --help
    run: str = ""             # "module:function(cfg, experiment=) -> result"; "" = a hand-written command
    summary: Callable[[Any, Any], str] | None = None   # (result, cfg) -> the line printed after the run
    model_profile: str = ""   # "module:function(model_uri) -> profile": --profile auto follows the model


def _finetune_summary(run_id: str, cfg) -> str:
    if not run_id:            # a data-parallel process other than rank 0: rank 0 reports
        return ""
    model_dir = load("harness.dualgen.train:output_dir_for")(cfg).resolve() / "model"
    return f"finetune run {run_id}: model at runs:/{run_id}/model and {model_dir}"


def _judges_summary(run_id: str, cfg) -> str:
    return (f"judges run {run_id}: {cfg.cas_model} (CAS) and {cfg.consistency_model} (mask consistency), "
            f"{cfg.judges_profile} settings; evaluate finds them by the dataset digest, or give --judges runs:/{run_id}")


STAGES: dict[str, Stage] = {
    STAGE_MAIN: Stage(None, "The whole paper pipeline; every step is a child run (reused when an identical "
                            "FINISHED run exists)."),
    STAGE_PREPARE: Stage(PrepareConfig, "Validated dataset, fixed stratified train/test split and manifest; its "
                                        "digest names the data."),
    STAGE_DESCRIBE: Stage(DescribeConfig, "Clinical descriptions of the images (LLM endpoint or template), paper "
                                          "Sec. 3.4."),
    STAGE_FINETUNE: Stage(FinetuneConfig, "LoRA fine-tune of the 4-channel (image + mask) SD2 model: diffusion MSE "
                                          "+ mask BCE + Dice.", "harness.dualgen.train:finetune", _finetune_summary),
    STAGE_GENERATE: Stage(GenerateConfig, "Synthetic image-mask pairs from one prompt per class; manifest with seeds.",
                          "harness.dualgen.generate:generate",
                          lambda result, cfg: f"generate run {result[0]}: pairs in {result[1]}",
                          model_profile="harness.dualgen.generate:model_profile"),
    STAGE_JUDGES: Stage(JudgesConfig, "The CAS classifier and mask-consistency segmenter, trained on the real train "
                                      "split (MLflow models).", "harness.judges:train_judges", _judges_summary),
    STAGE_EVALUATE: Stage(EvaluateConfig, "Table 1: FID, LPIPS, MS-SSIM of the real train split vs a second set "
                                          "(+ CAS, mask consistency).", "harness.quality:evaluate",
                          lambda run_id, cfg: load("harness.quality:summary")(run_id)),
    STAGE_REGISTER: Stage(RegisterConfig, "The lowest-FID fine-tuned model registered as a version with lineage; "
                                          "alias points at it."),
    STAGE_TUNE: Stage(TuneConfig, "Optuna search of the generation settings (steps, guidance) by FID; one nested "
                                  "run per trial.", "harness.tune:tune",
                      lambda run_id, cfg: f"tune run {run_id}: generate --settings-from-run {run_id} uses its best "
                                          "settings"),
    STAGE_CLASSIFY: Stage(ClassifyConfig, "Table 2/3: one classifier on one training set (real / synth / hybrid), "
                                          "k-fold CV, macro metrics.", "harness.downstream.classify:classify",
                          lambda run_id, cfg: f"classify run {run_id}: {cfg.model} on {cfg.train_set}; best fold's "
                                              f"model at runs:/{run_id}/model"),
    STAGE_SEGMENT: Stage(SegmentConfig, "Table 2/3: one segmenter on one training set (real / synth / hybrid); "
                                        "Dice, IoU, ASD, HD.", "harness.downstream.segment:segment",
                         lambda run_id, cfg: f"segment run {run_id}: {cfg.model} on {cfg.train_set}; model at "
                                             f"runs:/{run_id}/model"),
    STAGE_EXPLAIN: Stage(ExplainConfig, "Figure 3: GradCAM, Saliency, Occlusion of the real-only vs hybrid "
                                        "classifiers.", "harness.downstream.explain:explain",
                         lambda run_id, cfg: f"explain run {run_id}: Figure 3 heatmaps at "
                                             f"runs:/{run_id}/heatmaps/figure3.png"),
    STAGE_REPORT: Stage(ReportConfig, "Tables 1-3, Figures 2-3 and the Claims rebuilt from the runs, the paper's "
                                      "values beside ours."),
}

__all__ = ["STAGES", "Stage", "load"]
