"""The `tune` stage: Optuna (TPE, seeded) over num_inference_steps and guidance_scale (paper: 45, 1.22).

Objective of a trial: FID between the real train split and a fixed-seed generated batch
(`per_class` images per class, seeds seed + i, the same in every trial), so trials differ only in
the two settings. Each trial is a nested MLflow run (stage `tune-trial`) under the `tune` run; the
best values go on the parent as params `best_num_inference_steps`, `best_guidance_scale` (what
`generate --settings-from-run <tune run id>` reads) and metric `best_fid`.

Storage: `--storage` takes any Optuna RDB URL (e.g. postgresql://...) so several machines can add
trials to one study; the default is `sqlite:///optuna.db` in the working directory. The study name
is derived from the model, the data digest and the search space, so re-running the same command
resumes the study: only the missing trials run. `trials` is the study's total, whoever runs them:
workers running the same command at once stop when the study has that many trials (finished or
running), then wait for the other workers' running trials, so every worker logs the same best.
Each running trial beats a heartbeat in the storage; a trial whose worker died (no beat for
GRACE_S seconds) is marked FAIL instead of being waited for.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import optuna

from harness import checks, tracking
from harness.config import TuneConfig
from harness.data.prepare import load_prepared
from harness.dualgen.generate import resolve_model_uri
from harness.dualgen.mlflow_model import model_folder
from harness.dualgen.pipeline import DualGenPipeline
from harness.errors import ConfigError, one_line
from harness.quality import (build_fid_extractor, extract_features, feature_statistics, frechet_distance,
                             real_split, set_statistics, warn_if_fallback)
from harness.schema import (METRIC_FID, PARAM_BEST_GUIDANCE, PARAM_BEST_STEPS, STAGE_TUNE, STAGE_TUNE_TRIAL,
                            TAG_BEST_TRIAL_RUN, TAG_CODE, TAG_DIGEST, TAG_EXTRACTOR, TAG_OPTUNA_STUDY, TAG_OPTUNA_TRIAL,
                            TAG_STAGE, TRAINING_JSON)

HEARTBEAT_S = 10    # how often a running trial records that its worker is alive
GRACE_S = 60        # a running trial with no heartbeat for this long belongs to a dead worker: FAIL


def study_name(cfg: TuneConfig, digest: str) -> str:
    if cfg.study_name:
        return cfg.study_name
    space = {k: getattr(cfg, k) for k in ("model_uri", "steps_min", "steps_max", "guidance_min", "guidance_max",
                                          "per_class", "resolution", "seed", "fid_weights")}
    return f"skindualgen-tune-{hashlib.sha256(json.dumps([space, digest]).encode()).hexdigest()[:12]}"


def check_config(cfg: TuneConfig) -> None:
    """Every option's range, before the model loads (one line naming the option)."""
    checks.at_least(cfg, 1, "trials", "steps_min", "per_class", "batch_size")
    checks.at_least(cfg, 0, "guidance_min")
    checks.ordered(cfg, "steps_min", "steps_max")
    checks.ordered(cfg, "guidance_min", "guidance_max")
    checks.multiple_of(cfg, 8, "resolution")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage (default: optuna.db in the working folder), opened before any model loads;
    ConfigError, one line naming the URL without its password, when it cannot be (no driver, no server)."""
    url = url or f"sqlite:///{Path.cwd() / 'optuna.db'}"
    try:
        with warnings.catch_warnings():     # heartbeats are marked experimental in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as e:        # sqlalchemy's, the driver's import or connection error
        cause = e.__cause__ or e          # Optuna wraps the driver's ImportError, which names the module
        raise ConfigError(f"--storage {tracking.without_password(url)} cannot be used: {one_line(cause)}") from None


def tune(cfg: TuneConfig, experiment: str | None = None, progress: bool = True) -> str:
    check_config(cfg)
    tracking.setup(experiment)
    storage = open_storage(cfg.storage)
    fixed_uri, lineage = resolve_model_uri(cfg.model_uri)
    folder = model_folder(fixed_uri)
    training = json.loads((folder / TRAINING_JSON).read_text())
    prepared = load_prepared(cfg.data_dir, "auto", cfg.test_fraction, cfg.seed, progress=progress)
    extractor = build_fid_extractor(cfg.fid_weights)
    warn_if_fallback(extractor)
    real_stats, _ = set_statistics(real_split(prepared, "train"), extractor, cfg.cache_dir, progress=progress)
    pipe = DualGenPipeline.from_folder(folder, fuse=True)
    jobs = [c for c in training["classes"] for _ in range(cfg.per_class)]
    prompts = [training["prompt_template"].format(class_name=c) for c in jobs]
    seeds = [cfg.seed + i for i in range(len(jobs))]
    name = study_name(cfg, prepared.digest)

    with tracking.stage_run(STAGE_TUNE, cfg, prepared.digest, experiment,
                            extra_tags={**lineage, TAG_EXTRACTOR: extractor.id, TAG_OPTUNA_STUDY: name}) as parent:
        ran: list[int] = []       # the trials this process ran

        def objective(trial: optuna.Trial) -> float:
            steps = trial.suggest_int("num_inference_steps", cfg.steps_min, cfg.steps_max)
            guidance = trial.suggest_float("guidance_scale", cfg.guidance_min, cfg.guidance_max)
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True) as child:
                mlflow.set_tags({TAG_STAGE: STAGE_TUNE_TRIAL, TAG_CODE: tracking.code_version(),
                                 TAG_DIGEST: prepared.digest, TAG_OPTUNA_TRIAL: str(trial.number)})
                mlflow.log_params({"num_inference_steps": steps, "guidance_scale": guidance})
                pairs = pipe(prompts, seeds, num_inference_steps=steps, guidance_scale=guidance,
                             height=cfg.resolution, width=cfg.resolution, batch_size=cfg.batch_size, progress=False)
                with tempfile.TemporaryDirectory() as tmp:
                    paths = []
                    for i, (image, _) in enumerate(pairs):
                        paths.append(Path(tmp) / f"{i:05d}.png")
                        image.save(paths[-1])
                    stats = feature_statistics(extract_features(extractor, paths, progress=False))
                value = frechet_distance(real_stats, stats)
                mlflow.log_metric(METRIC_FID, value)
                trial.set_user_attr("mlflow_run_id", child.info.run_id)
            ran.append(trial.number)
            return value

        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                    sampler=TrialSeededTPE(cfg.seed))
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        todo = max(0, cfg.trials - len(done))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        in_study = optuna.study.MaxTrialsCallback(cfg.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                       optuna.trial.TrialState.RUNNING))
        study.optimize(objective, n_trials=todo, callbacks=[in_study], show_progress_bar=progress)
        wait_for_running_trials(study)
        best = study.best_trial
        mlflow.log_params({PARAM_BEST_STEPS: best.params["num_inference_steps"],
                           PARAM_BEST_GUIDANCE: best.params["guidance_scale"]})
        mlflow.log_metrics({"best_fid": best.value, "n_trials": len(study.trials), "n_trials_this_run": len(ran)})
        mlflow.set_tag(TAG_BEST_TRIAL_RUN, best.user_attrs.get("mlflow_run_id", ""))
        return parent.info.run_id


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial n come from seed + n. One TPESampler(seed) per process would
    repeat its first suggestions in every worker sharing a study and in every resumed run; this way
    each trial number gets its own draws, and one worker still suggests the same on every re-run."""

    def __init__(self, seed: int):
        self.seed = seed
        self.tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.tpe = optuna.samplers.TPESampler(seed=self.seed + trial.number)
        self.tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.tpe.after_trial(study, trial, state, values)


def wait_for_running_trials(study: optuna.Study) -> None:
    """Until no trial of the study is running: other workers' trials finish, or fail as stale."""
    running = (optuna.trial.TrialState.RUNNING,)
    while study.get_trials(deepcopy=False, states=running):
        with warnings.catch_warnings():     # experimental in Optuna 5.0, like the heartbeats
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        time.sleep(1)
