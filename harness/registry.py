"""The `register` stage: pick the best dual-generation model and register it in the MLflow registry.

Rule: among FINISHED `evaluate` runs with comparison `real_train_vs_synth_train` that name a
finetune run (tag `skindualgen.finetune_run_id`), take for each finetune run its newest evaluation,
then the finetune run with the lowest FID. Its logged model (`runs:/<id>/model`) is registered as
`skindualgen` (overridable). The version carries lineage tags (finetune, generate and evaluate runs,
dataset digest, FID and its 95 % interval, base model id and revision). Registering the same
finetune run again reuses its version: no duplicate.

Alias `champion` moves to the new version only on evidence (`decide`): by default when the
candidate's FID interval lies wholly below the holder's (rule "interval"); a version without an
interval is compared by `--min-fid-improvement` when one is given, and otherwise the holder stays.
A version that does not take the alias gets alias `candidate`. Every decision, moved or not, is
recorded as a registered-model tag `alias_history/<n>` (time, alias, candidate and previous holder
with their FIDs and intervals, the rule, the reason, the register run) and printed by
`skindualgen registry-history`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import mlflow
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.config import RegisterConfig
from harness.errors import HarnessError
from harness.schema import (ALIAS_HISTORY_PREFIX, CI_HIGH_SUFFIX, CI_LOW_SUFFIX, METRIC_FID, REAL_VS_SYNTH,
                            STAGE_EVALUATE, STAGE_REGISTER, TAG_ALIAS, TAG_ALIAS_DECISION, TAG_ALIAS_REASON,
                            TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_COMPARISON, TAG_DIGEST, TAG_EXTRACTOR,
                            TAG_FINETUNE_RUN, TAG_GENERATE_RUN, TAG_REGISTERED, TAG_REUSED_VERSION, TAG_STAGE)

RULES = ("interval", "improvement")


class RegistryError(HarnessError, ValueError):
    """No candidate to register (no FINISHED evaluate run linked to a finetune run), or no experiment."""


def candidates(experiment: str | None, comparison: str = REAL_VS_SYNTH) -> list[mlflow.entities.Run]:
    """The newest evaluate run per finetune run, lowest FID first. FIDs from different feature
    extractors (standard Inception weights vs the offline fallback) are on different scales and are
    never ranked together: standard ones win if any exist, else those of the newest run's extractor."""
    name = tracking.setup(experiment, create=False)
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


@dataclass
class FidEvidence:
    """What a version's FID says: the value, its 95 % interval (None: none logged), the extractor."""
    version: str
    fid: float
    low: float | None
    high: float | None
    extractor: str

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass
class Decision:
    moved: bool
    reason: str


def decide(cfg: RegisterConfig, candidate: FidEvidence, holder: FidEvidence | None) -> Decision:
    """Whether `candidate` takes the alias from `holder` (lower FID is better)."""
    if holder is None:
        return Decision(True, "no version held the alias")
    if holder.version == candidate.version:
        return Decision(True, "the candidate already holds the alias")
    if candidate.extractor != holder.extractor:
        if candidate.extractor.startswith("standard:") and not holder.extractor.startswith("standard:"):
            return Decision(True, f"standard FID weights ({candidate.extractor}) replace the offline fallback "
                                  f"({holder.extractor}): the two FIDs are on different scales")
        return Decision(False, f"the FIDs used different feature extractors ({candidate.extractor}, "
                               f"{holder.extractor}) and cannot be compared")
    if cfg.rule == "interval" and candidate.has_interval and holder.has_interval:
        if candidate.high < holder.low:
            return Decision(True, f"FID interval [{candidate.low:.4g}, {candidate.high:.4g}] lies below the "
                                  f"holder's [{holder.low:.4g}, {holder.high:.4g}]")
        return Decision(False, f"FID interval [{candidate.low:.4g}, {candidate.high:.4g}] does not lie below the "
                               f"holder's [{holder.low:.4g}, {holder.high:.4g}]: not a clear improvement")
    gain = holder.fid - candidate.fid
    if cfg.rule == "interval" and cfg.min_fid_improvement <= 0:
        who = "the candidate" if not candidate.has_interval else "the holder"
        return Decision(False, f"{who} has no FID interval and no --min-fid-improvement was given: a point "
                               "estimate does not move the alias")
    if gain > cfg.min_fid_improvement:
        return Decision(True, f"FID {candidate.fid:.4g} is {gain:.4g} below the holder's {holder.fid:.4g} "
                              f"(more than the minimum improvement {cfg.min_fid_improvement:g})")
    return Decision(False, f"FID {candidate.fid:.4g} is {gain:.4g} below the holder's {holder.fid:.4g}, not more "
                           f"than the minimum improvement {cfg.min_fid_improvement:g}")


def _evidence_of_run(version: str, run: mlflow.entities.Run) -> FidEvidence:
    m = run.data.metrics
    return FidEvidence(version, m[METRIC_FID], m.get(METRIC_FID + CI_LOW_SUFFIX), m.get(METRIC_FID + CI_HIGH_SUFFIX),
                       run.data.tags.get(TAG_EXTRACTOR, ""))


def _evidence_of_version(mv) -> FidEvidence:
    """A registered version's FID from its lineage tags (versions from before intervals have none)."""
    t = mv.tags
    num = lambda key: float(t[key]) if t.get(key) else None     # noqa: E731
    return FidEvidence(str(mv.version), float(t.get("fid", "nan")), num("fid_ci_low"), num("fid_ci_high"),
                       t.get("feature_extractor", ""))


def _holder(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def history(name: str) -> list[dict]:
    """Every alias decision recorded on registered model `name`, oldest first."""
    client = MlflowClient()
    if not _exists(client, name):
        raise RegistryError(f"no registered model {name!r} in {tracking.tracking_uri()}")
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(ALIAS_HISTORY_PREFIX))]


def _fid_text(e: dict | None) -> str:
    if not e:
        return "—"
    ci = f" [{e['low']:.4g}, {e['high']:.4g}]" if e.get("low") is not None and e.get("high") is not None else ""
    return f"v{e['version']} {e['fid']:.4g}{ci}"


def history_table(entries: list[dict]) -> str:
    """The decisions as a Markdown table, oldest first."""
    lines = ["| # | time | alias | candidate FID [95 %] | previous holder | decision | rule | reason | register run |",
             "| --: | :-- | :-- | :-- | :-- | :-- | :-- | :-- | :-- |"]
    for i, e in enumerate(entries, 1):
        lines.append(f"| {i} | {e['time']} | {e['alias']} | {_fid_text(e['candidate'])} | {_fid_text(e['previous'])} "
                     f"| {'moved' if e['moved'] else 'kept'} | {e['rule']} | {e['reason']} | {e['register_run_id']} |")
    return "\n".join(lines)


def _record(client: MlflowClient, name: str, entry: dict) -> None:
    n = sum(k.startswith(ALIAS_HISTORY_PREFIX) for k in client.get_registered_model(name).tags)
    client.set_registered_model_tag(name, f"{ALIAS_HISTORY_PREFIX}{n + 1:04d}", json.dumps(entry))


def register_best(cfg: RegisterConfig, experiment: str | None = None) -> tuple[str, str]:
    """Register the lowest-FID finetune run's model and give it the alias if the evidence says so
    (`decide`); return (version, finetune run id)."""
    if cfg.rule not in RULES:
        raise RegistryError(f"--rule must be one of {', '.join(RULES)}, got {cfg.rule!r}")
    if cfg.min_fid_improvement < 0:
        raise RegistryError(f"--min-fid-improvement must be >= 0, got {cfg.min_fid_improvement}")
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
        "fid_ci_low": _fmt(best.data.metrics.get(METRIC_FID + CI_LOW_SUFFIX)),
        "fid_ci_high": _fmt(best.data.metrics.get(METRIC_FID + CI_HIGH_SUFFIX)),
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
        holder_mv = _holder(client, cfg.name, cfg.alias)
        holder = _evidence_of_version(holder_mv) if holder_mv is not None else None
        candidate = _evidence_of_run(str(version), best)
        decision = decide(cfg, candidate, holder)
        given = cfg.alias if decision.moved else cfg.candidate_alias
        client.set_registered_model_alias(cfg.name, given, version)
        _record(client, cfg.name, {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "alias": cfg.alias,
            "candidate": asdict(candidate), "previous": asdict(holder) if holder else None,
            "moved": decision.moved, "rule": cfg.rule, "min_fid_improvement": cfg.min_fid_improvement,
            "reason": decision.reason, "register_run_id": run.info.run_id})
        print(f"{cfg.alias}: {'moved to' if decision.moved else 'stays with'} version "
              f"{version if decision.moved else holder.version}: {decision.reason}")
        client.update_registered_model(cfg.name, description=(
            "SkinDualGen dual-generation model: one prompt ('a dermoscopic lesion photo of {class} for skin cancer "
            "diagnosis') -> an RGB lesion image and its mask (pyfunc: class_name/prompt + seed -> PNG bytes). "
            f"Alias '{cfg.alias}' = the version whose generated set's FID against the real train split beat the "
            f"previous holder's by the rule '{cfg.rule}' (history: registered-model tags {ALIAS_HISTORY_PREFIX}<n>, "
            "`skindualgen registry-history`)."))
        client.update_model_version(cfg.name, version, description=(
            f"finetune run {ft_id} on dataset {lineage['dataset_digest']} (base {lineage['base_model']} @ "
            f"{lineage['base_revision'][:12]}); FID {lineage['fid']} in evaluate run {best.info.run_id}"))
        mlflow.set_tags({TAG_REGISTERED: f"{cfg.name}/{version}", TAG_ALIAS: given, TAG_FINETUNE_RUN: ft_id,
                         TAG_REUSED_VERSION: str(bool(existing)),
                         TAG_ALIAS_DECISION: "moved" if decision.moved else "kept", TAG_ALIAS_REASON: decision.reason})
        mlflow.log_metrics({METRIC_FID: best.data.metrics[METRIC_FID], "n_candidates": len(ranked)})
        mlflow.log_dict({"ranking": [{"finetune_run_id": r.data.tags[TAG_FINETUNE_RUN],
                                      "evaluate_run_id": r.info.run_id, "fid": r.data.metrics[METRIC_FID]}
                                     for r in ranked]}, "ranking.json")
    return str(version), ft_id


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except mlflow.exceptions.MlflowException:
        return False
