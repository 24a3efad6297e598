"""The `register` stage: pick the best dual-generation model and register it in the MLflow registry.

Rule: among FINISHED `evaluate` runs with comparison `real_train_vs_synth_train` that name a
finetune run (tag `skindualgen.finetune_run_id`), take for each finetune run its newest evaluation,
then the finetune run with the lowest FID. Its logged model (`runs:/<id>/model`) is registered as
`skindualgen` (overridable) and alias `champion` points at that version. The version carries lineage
tags (finetune, generate and evaluate runs, dataset digest, FID, base model id and revision).
Registering the same finetune run again reuses its version: no duplicate.
"""
from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.config import RegisterConfig
from harness.errors import HarnessError
from harness.schema import (METRIC_FID, REAL_VS_SYNTH, STAGE_EVALUATE, STAGE_REGISTER, TAG_ALIAS, TAG_BASE_MODEL,
                            TAG_BASE_REVISION, TAG_COMPARISON, TAG_DIGEST, TAG_EXTRACTOR, TAG_FINETUNE_RUN,
                            TAG_GENERATE_RUN, TAG_REGISTERED, TAG_REUSED_VERSION, TAG_STAGE)


class RegistryError(HarnessError, ValueError):
    """No candidate to register (no FINISHED evaluate run linked to a finetune run), or no experiment."""


def candidates(experiment: str | None, comparison: str = REAL_VS_SYNTH) -> list[mlflow.entities.Run]:
    """The newest evaluate run per finetune run, lowest FID first. FIDs from different feature
    extractors (standard Inception weights vs the offline fallback) are on different scales and are
    never ranked together: standard ones win if any exist, else those of the newest run's extractor."""
    name = tracking.setup(experiment)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        raise RegistryError(f"experiment {name!r} does not exist")
    runs = mlflow.search_runs(
        [exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"],
        filter_string=(f"tags.`{TAG_STAGE}` = '{STAGE_EVALUATE}' and tags.`{TAG_COMPARISON}` = '{comparison}' "
                       "and attributes.status = 'FINISHED'"))
    newest: dict[str, mlflow.entities.Run] = {}
    for run in runs:
        ft = run.data.tags.get(TAG_FINETUNE_RUN)
        if ft and METRIC_FID in run.data.metrics and ft not in newest:
            newest[ft] = run
    extractor = lambda r: r.data.tags.get(TAG_EXTRACTOR, "")   # noqa: E731
    found = list(newest.values())
    standard = [r for r in found if extractor(r).startswith("standard:")]
    keep = extractor(standard[0]) if standard else (extractor(found[0]) if found else "")
    return sorted((r for r in found if extractor(r) == keep), key=lambda r: r.data.metrics[METRIC_FID])


def register_best(cfg: RegisterConfig, experiment: str | None = None) -> tuple[str, str]:
    """Register the lowest-FID finetune run's model; return (version, finetune run id)."""
    ranked = candidates(experiment, cfg.comparison)
    if not ranked:
        raise RegistryError(f"no FINISHED evaluate run with comparison {cfg.comparison!r} linked to a finetune "
                            "run in this experiment: run finetune -> generate -> evaluate first")
    best = ranked[0]
    ft_id = best.data.tags[TAG_FINETUNE_RUN]
    ft = mlflow.get_run(ft_id)
    client = MlflowClient()
    lineage = {
        "finetune_run_id": ft_id,
        "generate_run_id": best.data.tags.get(TAG_GENERATE_RUN, ""),
        "evaluate_run_id": best.info.run_id,
        "dataset_digest": ft.data.tags.get(TAG_DIGEST, ""),
        "fid": f"{best.data.metrics[METRIC_FID]:.6g}",
        "base_model": ft.data.tags.get(TAG_BASE_MODEL, ""),
        "base_revision": ft.data.tags.get(TAG_BASE_REVISION, ""),
        "feature_extractor": best.data.tags.get(TAG_EXTRACTOR, ""),
    }
    with tracking.stage_run(STAGE_REGISTER, cfg, lineage["dataset_digest"], experiment) as run:
        existing = [v for v in client.search_model_versions(f"name='{cfg.name}'") if v.run_id == ft_id] \
            if _exists(client, cfg.name) else []
        if existing:
            version = existing[0].version
        else:
            version = mlflow.register_model(f"runs:/{ft_id}/model", cfg.name, tags=lineage).version
        for key, value in lineage.items():
            client.set_model_version_tag(cfg.name, version, key, value)
        client.set_registered_model_alias(cfg.name, cfg.alias, version)
        client.update_registered_model(cfg.name, description=(
            "SkinDualGen dual-generation model: one prompt ('a dermoscopic lesion photo of {class} for skin cancer "
            "diagnosis') -> an RGB lesion image and its mask (pyfunc: class_name/prompt + seed -> PNG bytes). "
            f"Alias '{cfg.alias}' = the version whose generated set had the lowest FID against the real train split."))
        client.update_model_version(cfg.name, version, description=(
            f"finetune run {ft_id} on dataset {lineage['dataset_digest']} (base {lineage['base_model']} @ "
            f"{lineage['base_revision'][:12]}); FID {lineage['fid']} in evaluate run {best.info.run_id}"))
        mlflow.set_tags({TAG_REGISTERED: f"{cfg.name}/{version}", TAG_ALIAS: cfg.alias, TAG_FINETUNE_RUN: ft_id,
                         TAG_REUSED_VERSION: str(bool(existing))})
        mlflow.log_metrics({METRIC_FID: best.data.metrics[METRIC_FID], "n_candidates": len(ranked)})
        mlflow.log_dict({"ranking": [{"finetune_run_id": r.data.tags[TAG_FINETUNE_RUN],
                                      "evaluate_run_id": r.info.run_id, "fid": r.data.metrics[METRIC_FID]}
                                     for r in ranked]}, "ranking.json")
        del run
    return str(version), ft_id


def _exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except mlflow.exceptions.MlflowException:
        return False
