"""`judges` stage (beyond the paper): the two models that judge a set — a classifier for CAS and a segmenter
for mask consistency (harness/downstream/reference.py) — trained on a dataset's real train split, as one
MLflow run. evaluate and generate --min-consistency train nothing: they load the judges from such a run.

    skindualgen judges --profile demo                     # once per dataset (digest) and profile
    skindualgen evaluate --profile demo --fake runs:/<generate run id>     # finds that run by the digest

The run logs each judge as an MLflow model (mlflow.pytorch; `cas_classifier`, `consistency_segmenter`)
with `<name>.json` beside it (model, classes, the classify / segment config it trained with, the dataset
digest, n_train), the JudgesConfig as params, and the tags dataset digest and judges profile. Finding a
run (`find_judges_run`): the newest FINISHED judges run of the experiment with the real set's dataset
digest and the wanted judges profile; a run given by id must be a FINISHED judges run of the same digest.
"""
from __future__ import annotations

import logging

import mlflow

from harness import tracking
from harness.config import JudgesConfig
from harness.data.prepare import load_prepared, log_dataset_input
from harness.data.records import DataError
from harness.errors import ConfigError
from harness.schema import (JUDGE_CLASSIFIER, JUDGE_SEGMENTER, JUDGES_FOUND, JUDGES_GIVEN, JUDGES_NONE, STAGE_JUDGES,
                            TAG_DIGEST, TAG_JUDGES_PROFILE, TAG_STAGE)

NO_JUDGE = ("none",)           # a cas_model / consistency_model that turns that judge off
OFF = "none"                   # --judges none: judge nothing
OLD_CACHE = ".cache/skindualgen/reference"   # where judges were cached before this stage existed


def check_config(cfg: JudgesConfig) -> None:
    """(Both models `none` is allowed: a run with no judge, whose evaluates say so; `main` without judges.)"""
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {cfg.test_fraction}")


def log_judge(name: str, judge) -> None:
    """One judge as an MLflow model of the active run, with its info as `<name>.json`."""
    import mlflow.pytorch
    # pickle: the whole module as trained (timm / torchvision / smp classes); pt2 would need a traced example.
    # MLflow warns about pickle on every save: chosen here, so its warning is not repeated to the user
    quiet = logging.getLogger("mlflow.pytorch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        mlflow.pytorch.log_model(judge.model.cpu(), name=name, serialization_format="pickle",
                                 pip_requirements=["skindualgen-harness"])
    finally:
        quiet.setLevel(level)
    mlflow.log_dict(judge.info, f"{name}.json")
    judge.model.to(judge.device)


def train_judges(cfg: JudgesConfig, experiment: str | None = None, progress: bool = True) -> str:
    """Train the chosen judges on the real train split; log one `judges` run and return its id."""
    from harness.downstream.reference import train_classifier, train_segmenter
    check_config(cfg)
    tracking.setup(experiment)
    prepared = load_prepared(cfg.data_dir, "auto", cfg.test_fraction, cfg.seed, progress=progress)
    with tracking.stage_run(STAGE_JUDGES, cfg, prepared.digest, experiment,
                            extra_tags={TAG_JUDGES_PROFILE: cfg.judges_profile}) as run:
        log_dataset_input(prepared, context="judges")
        n_train = len(prepared.dataset.split("train"))
        if cfg.cas_model not in NO_JUDGE:
            log_judge(JUDGE_CLASSIFIER, train_classifier(prepared, cfg.cas_model, cfg.judges_profile, cfg.seed,
                                                         progress))
        if cfg.consistency_model not in NO_JUDGE:
            log_judge(JUDGE_SEGMENTER, train_segmenter(prepared, cfg.consistency_model, cfg.judges_profile,
                                                       cfg.seed, progress))
        mlflow.log_metric("n_train", n_train)
        return run.info.run_id


# ------------------------------------------------------------------------------------------------
# Finding and loading the judges of a run (evaluate, generate)
# ------------------------------------------------------------------------------------------------

def find_judges_run(digest: str, profile: str, experiment: str | None = None) -> mlflow.entities.Run | None:
    """The newest FINISHED judges run of the experiment for dataset `digest` and judges `profile`."""
    exp = mlflow.get_experiment_by_name(tracking.setup(experiment))   # the stage's own (evaluate makes it anyway)
    runs = mlflow.search_runs(
        [exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"],
        filter_string=(f"tags.`{TAG_STAGE}` = '{STAGE_JUDGES}' and tags.`{TAG_DIGEST}` = '{digest}' "
                       f"and tags.`{TAG_JUDGES_PROFILE}` = '{profile}' and attributes.status = 'FINISHED'"))
    return runs[0] if runs else None


def given_judges_run(spec: str, digest: str) -> mlflow.entities.Run:
    """The judges run `spec` names (runs:/<id> or <id>), checked: a FINISHED judges run of `digest`."""
    run_id = spec.removeprefix("runs:/").strip("/").split("/")[0]
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"--judges {spec}: no such run in the tracking store {tracking.tracking_uri()}") from None
    tags = run.data.tags
    if tags.get(TAG_STAGE) != STAGE_JUDGES:
        raise ConfigError(f"--judges {spec}: run {run_id} is a {tags.get(TAG_STAGE) or 'non-harness'} run, "
                          f"not a judges run (`skindualgen judges` makes one)")
    if run.info.status != "FINISHED":
        raise ConfigError(f"--judges {spec}: run {run_id} is {run.info.status}, not FINISHED")
    if tags.get(TAG_DIGEST) != digest:
        raise DataError(f"--judges {spec}: its judges learned from dataset digest {tags.get(TAG_DIGEST)}, but "
                        f"the real set here has digest {digest} (other data, split or seed)")
    return run


def choose_judges(spec: str, digest: str, profile: str,
                  experiment: str | None = None) -> tuple[mlflow.entities.Run | None, str]:
    """(the judges run, JUDGES_GIVEN / JUDGES_FOUND / JUDGES_NONE) for --judges `spec` ("" = find one)."""
    if spec.strip().lower() == OFF:
        return None, JUDGES_NONE
    if spec:
        return given_judges_run(spec, digest), JUDGES_GIVEN
    run = find_judges_run(digest, profile, experiment)
    return run, JUDGES_FOUND if run is not None else JUDGES_NONE


def how_to_add(profile: str, data_dir: str, experiment: str | None) -> str:
    """The command that makes the judges a run looked for, as a user would type it."""
    parts = ["skindualgen judges", f"--profile {profile}" if profile in ("demo", "paper") else
             f"--judges-profile {profile}"]
    if data_dir:
        parts.append(f"--data-dir {data_dir}")
    if experiment:
        parts.append(f"--experiment {experiment}")
    return " ".join(parts)


def load_judge(run: mlflow.entities.Run, name: str):
    """The judge `name` of a judges run as a Reference (eval mode, on this machine's device), or None
    when the run has no such judge (trained with that model `none`)."""
    import mlflow.pytorch

    from harness.downstream import runtime
    from harness.downstream.reference import Reference
    run_id = run.info.run_id
    # the model itself is an MLflow 3 logged model (runs:/ resolves it), not a run artifact: its json is
    listed = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)}
    if f"{name}.json" not in listed:
        return None
    info = mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}.json")
    device = runtime.pick_device()
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/{name}", map_location="cpu")
    return Reference(model.to(device).eval(), info, device, run_id)


__all__ = ["NO_JUDGE", "OFF", "OLD_CACHE", "check_config", "choose_judges", "find_judges_run", "given_judges_run",
           "how_to_add", "load_judge", "log_judge", "train_judges"]
