"""The `main` entry point: the paper's steps in order, as child runs of one parent run.

Each step is a run of this project's own entry point, created by MLflow's project code and started by
harness/launcher.py (a fork of a server that has the stages imported, or a stock `mlflow run` process
for env managers other than local), so a child run is what a user gets from `mlflow run . -e <step>`. Before running a
step, the parent resolves the step's full config (profile + parameters) and looks for a FINISHED run
of that step with the same params and code version: if there is one, it is reused, not redone, so an
interrupted pipeline continues where it stopped. Outputs pass forward as run ids / model URIs.

Steps, as a graph (`pipeline_nodes`): a step starts once the steps it needs have finished, up to
`max_parallel` children at a time:
    prepare -> finetune -> generate -> evaluate real/synth ----> register
            -> judges (beside the fine-tune) -> evaluate real/real --/   (both evaluates use the judges)
            -> classify, segment x models x real (beside the fine-tune) --\
                          generate -> classify x models x {synth, hybrid} -> explain -> report
                                   -> segment x models x {synth, hybrid} -------------/
`describe` is not chained: the paper's descriptions come with its dataset (run it on new data).

Parallel children each get a share of the machine: with GPUs, CUDA_VISIBLE_DEVICES round-robin over
them; on CPU, OMP_NUM_THREADS = cores // max_parallel. A failed child fails `main` with its name,
after the children already running have finished (their runs stay reusable). A run left RUNNING by a
`main` that was killed (its process is gone) is marked KILLED when `main` (or any stage) starts again
in the experiment (tracking.reap_killed_runs).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import mlflow

from harness import launcher, tracking
from harness.config import (
    ClassifyConfig, DemoDataConfig, EvaluateConfig, ExplainConfig, FinetuneConfig, GenerateConfig, JudgesConfig,
    PrepareConfig, RegisterConfig, ReportConfig, SegmentConfig, choose_profile, parse_bool, with_profile,
)
from harness.errors import ConfigError, HarnessError
from harness.schema import (
    CLASSIFY_MODELS, METRIC_PIPELINE_SECONDS, SEGMENT_MODELS, STAGE_CLASSIFY, STAGE_EVALUATE, STAGE_EXPLAIN,
    STAGE_FINETUNE, STAGE_GENERATE, STAGE_JUDGES, STAGE_MAIN, STAGE_PREPARE, STAGE_REGISTER, STAGE_REPORT,
    STAGE_SEGMENT, TAG_DIGEST, TAG_MLFLOW_PARENT_RUN, TAG_PROFILE, TAG_PROFILE_RULE, TAG_STEP_PREFIX, TRAIN_SETS,
)
from harness.stages import STAGES

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class PipelineConfig:
    profile: str = "auto"         # auto: demo on the embedded demo data, paper with --data-dir (config.choose_profile)
    data_dir: str = ""
    base_model: str = ""          # "" = the profile's (demo: tiny; paper: stabilityai/stable-diffusion-2-base)
    env_manager: str = "local"
    launcher: str = "auto"        # how a child starts (harness/launcher.py): fork (a fork of a server with the
                                  # stage modules imported; env manager local) or mlflow (`mlflow run`);
                                  # auto = fork for env manager local
    eval_data: str = ""           # a HAM10000 folder for Table 3 ("" = demo: the shifted demo set; paper: none)
    max_parallel: int = 2         # independent children at a time (evaluates; classify/segment runs); on CPU
                                  # they split the cores, with GPUs each gets one (round-robin)
    ui_url: str = ""              # MLflow UI base URL for the report's run links ("" = none / the server's)
    seed: int = 42
    seeds: int = 0                # classify/segment repeats (--seeds; 0 = the profile's: demo 1, paper 3)
    models: str = ""              # comma list of classify/segment models to train ("" = the paper's six)
    overrides: tuple[str, ...] = ()   # "STAGE.OPTION=VALUE": an option of every step of STAGE (beyond the
                                  # profile; e.g. classify.epochs=5), for smaller or changed runs


PAPER_MODELS = {STAGE_CLASSIFY: CLASSIFY_MODELS, STAGE_SEGMENT: SEGMENT_MODELS}


class StepFailed(HarnessError, RuntimeError):
    """A child step ended FAILED (the message names it and its run; its own log says why)."""


@dataclass
class Step:
    stage: str
    cfg: object                   # the config the child will resolve (compared for reuse)
    params: dict[str, str]        # the -P parameters that make it resolve so
    label: str = ""
    reuse: bool = True

    @property
    def name(self) -> str:
        return self.label or self.stage


@dataclass
class Pipeline:
    """What the parent run needs to launch children."""
    cfg: PipelineConfig
    experiment: str
    parent_id: str
    log: object = print
    runs: dict[str, mlflow.entities.Run] = field(default_factory=dict)   # label -> run


def step(stage: str, cfg_cls, profile: str, given: dict, label: str = "",
         overrides: dict[str, dict] | None = None) -> Step:
    """A step whose config is the profile's plus `given` (options equal to "" are left out) plus the
    user's `overrides` of this stage (parse_overrides); an override may not change what `main` sets."""
    extra = (overrides or {}).get(stage, {})
    clash = sorted(set(extra) & set(given))
    if clash:
        raise ConfigError(f"--set {stage}.{clash[0]}: `main` sets this option of {stage} itself"
                          + (" (use main's own option)" if clash[0] in ("data_dir", "seed", "base_model", "eval_data")
                             else ""))
    given = {k: v for k, v in {**given, **extra}.items() if v not in ("", None)}
    cfg = with_profile(cfg_cls, stage, profile, given)
    return Step(stage, cfg, {"profile": profile, **{k: str(v) for k, v in given.items()}}, label)


STEP_CONFIGS = {name: STAGES[name].config for name in (STAGE_FINETUNE, STAGE_GENERATE, STAGE_JUDGES, STAGE_EVALUATE,
                                                    STAGE_CLASSIFY, STAGE_SEGMENT, STAGE_EXPLAIN)}


def _typed(value: str, default, what: str):
    """`value` as the type of the config field whose default is `default`."""
    if isinstance(default, bool):
        try:
            return parse_bool(value)
        except ValueError as e:
            raise ConfigError(f"--set {what}: {e}") from None
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise ConfigError(f"--set {what}: {value!r} is not a valid {type(default).__name__}") from None
    return value


def parse_overrides(items) -> dict[str, dict]:
    """["classify.epochs=5", ...] -> {"classify": {"epochs": 5}}, typed as the config fields are (so the
    step's resolved config, compared for reuse, is the one the child resolves from the -P value)."""
    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, option = key.strip().partition(".")
        option = option.replace("-", "_")
        if not eq or not dot or not option:
            raise ConfigError(f"--set {item!r}: expected STAGE.OPTION=VALUE (e.g. classify.epochs=5)")
        if stage not in STEP_CONFIGS:
            raise ConfigError(f"--set {item!r}: stage must be one of {', '.join(STEP_CONFIGS)}")
        fields = {f.name: f for f in dataclasses.fields(STEP_CONFIGS[stage])}
        if option not in fields:
            raise ConfigError(f"--set {item!r}: {stage} has no option {option!r}")
        out.setdefault(stage, {})[option] = _typed(value, fields[option].default, item)
    return out


def chosen_models(models: str) -> dict[str, tuple[str, ...]]:
    """The classify and segment models of `--models` (comma list; "" = all of PAPER_MODELS), in paper order."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        return dict(PAPER_MODELS)
    known = [m for ms in PAPER_MODELS.values() for m in ms]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return {stage: tuple(m for m in ms if m in names) for stage, ms in PAPER_MODELS.items()}


# ------------------------------------------------------------------------------------------------
# Launching children
# ------------------------------------------------------------------------------------------------

def child_env(slot: int, max_parallel: int) -> dict[str, str]:
    """Environment of the child in `slot` (0..max_parallel-1): its GPU, or its share of the CPU threads."""
    if max_parallel <= 1:
        return {}
    import torch
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def launch(pipe: Pipeline, s: Step, env: dict[str, str]) -> launcher.Child:
    """Start the child run of step `s` (asynchronously) with `env` added to its environment, by the
    pipeline's launcher (harness/launcher.py: a fork of the warm server, or `mlflow run`)."""
    if not (PROJECT_DIR / "MLproject").is_file():
        raise FileNotFoundError(f"{PROJECT_DIR}/MLproject not found: `main` runs from a checkout of the project")
    drop = {"MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"}           # the child makes its own run
    if tracking.SYSTEM_METRICS_ENV not in os.environ:          # the demo's runs last seconds: sample every 2 s
        env = {**env, tracking.SYSTEM_METRICS_ENV: "2" if pipe.cfg.profile == "demo" else str(tracking.SYSTEM_METRICS_SECONDS)}
    with tracking.environment({**dict.fromkeys(drop), **env}):
        if launcher.choose(pipe.cfg.launcher, pipe.cfg.env_manager) == "fork":
            return launcher.launch_fork(PROJECT_DIR, s.stage, s.params, pipe.experiment)
        return launcher.launch_mlflow(PROJECT_DIR, s.stage, s.params, pipe.experiment, pipe.cfg.env_manager)


@dataclass
class Node:
    """A step of the pipeline's graph: `make` builds its Step from the runs of the nodes it comes `after`."""
    name: str
    make: Callable[[dict[str, mlflow.entities.Run]], Step]
    after: tuple[str, ...] = ()


def reusable(pipe: Pipeline, s: Step) -> mlflow.entities.Run | None:
    """A FINISHED run of the same stage, config and code version, if the step may be reused."""
    return tracking.find_reusable_run(s.stage, tracking.config_params(s.cfg), pipe.experiment) if s.reuse else None


def finish(pipe: Pipeline, s: Step, submitted, started: float, code: int) -> mlflow.entities.Run | None:
    """The run of a child that exited with `code`: logged and returned, or None when it failed."""
    run = mlflow.get_run(submitted.run_id)
    if code == 0 and run.info.status == "RUNNING":   # as `mlflow run` ends its run once its command exits 0
        mlflow.tracking.MlflowClient().set_terminated(submitted.run_id, "FINISHED")
        run = mlflow.get_run(submitted.run_id)
    if code != 0 or run.info.status != "FINISHED":
        if run.info.status == "RUNNING":           # died before its stage could end the run
            mlflow.tracking.MlflowClient().set_terminated(submitted.run_id, "FAILED")
        pipe.log(f"[{s.name}] run {submitted.run_id} FAILED after {time.perf_counter() - started:.1f} s")
        return None
    pipe.log(f"[{s.name}] run {submitted.run_id} finished in {time.perf_counter() - started:.1f} s")
    return run


def run_graph(pipe: Pipeline, nodes: list[Node]) -> dict[str, mlflow.entities.Run]:
    """Run the nodes as their dependencies allow, up to cfg.max_parallel children at a time, in list
    order among those ready; reuse FINISHED ones. Returns every node's run by name. A failed child
    raises StepFailed naming it, once the children already started are done (no new one starts)."""
    client = mlflow.tracking.MlflowClient()
    done: dict[str, mlflow.entities.Run] = {}
    waiting = list(nodes)
    width = max(1, pipe.cfg.max_parallel)
    running: dict[int, tuple] = {}            # slot -> (node, step, submitted run, start time)
    failed: list[str] = []
    while (waiting and not failed) or running:
        ready = [n for n in waiting if all(a in done for a in n.after)]
        if not ready and not running:
            break                              # a name in `after` that no node has: raised below
        for node in ready:
            free = [slot for slot in range(width) if slot not in running]
            if failed or not free:
                break
            waiting.remove(node)
            s = node.make(done)
            found = reusable(pipe, s)
            if found is not None:
                pipe.log(f"[{s.name}] reused run {found.info.run_id}")
                mlflow.set_tag(TAG_STEP_PREFIX + s.name, found.info.run_id)
                done[node.name] = found
                continue
            submitted = launch(pipe, s, child_env(free[0], width))
            client.set_tag(submitted.run_id, TAG_MLFLOW_PARENT_RUN, pipe.parent_id)
            mlflow.set_tag(TAG_STEP_PREFIX + s.name, submitted.run_id)
            running[free[0]] = (node, s, submitted, time.perf_counter())
        if running:
            time.sleep(0.2)
        for slot, (node, s, submitted, started) in list(running.items()):
            code = submitted.poll()
            if code is None:
                continue
            del running[slot]
            run = finish(pipe, s, submitted, started, code)
            if run is None:
                failed.append(f"{s.name} (run {submitted.run_id}, exit code {code})")
            else:
                done[node.name] = run
    if failed:
        raise StepFailed("step(s) failed: " + "; ".join(failed))
    if waiting:                                # a name in `after` that no node has
        raise ValueError(f"pipeline nodes never ready: {[n.name for n in waiting]}")
    pipe.runs.update(done)
    return done


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------

def demo_eval_data() -> str:
    """The HAM10000-layout demo set (a deliberate domain shift) that the demo uses for Table 3."""
    from harness.data.demo import make_demo_dataset
    demo = DemoDataConfig()
    return str(make_demo_dataset(demo.ham_output_dir, seed=demo.seed, layout="ham10000"))


def pipeline_nodes(cfg: PipelineConfig, eval_data: str) -> list[Node]:
    """The paper's steps as a graph. Each node's config comes from the runs it needs (outputs pass
    forward as run ids / model URIs); list order is the priority among nodes ready at once."""
    p = choose_profile(STAGE_MAIN, cfg.profile, {"data_dir": cfg.data_dir})[0]     # every step: one profile
    common = {"data_dir": cfg.data_dir, "seed": cfg.seed}
    overrides = parse_overrides(cfg.overrides)
    models = chosen_models(cfg.models)

    def make_step(stage, cfg_cls, given, label=""):
        return step(stage, cfg_cls, p, given, label, overrides)

    def generated(runs) -> str:
        return f"runs:/{runs['generate'].info.run_id}"

    def judges(runs) -> str:
        return f"runs:/{runs['judges'].info.run_id}"

    def generate(runs) -> Step:
        # the synthetic set has N_c images of class c, as many as the real training split: what
        # `synth` (N_c) and `hybrid` (N_c // 2) take, so neither repeats an image and none is wasted
        # (into outputs/generate/<its run id>: a folder of its own, which no other run's set can hold)
        ft_id = runs["finetune"].info.run_id
        return make_step(STAGE_GENERATE, GenerateConfig, {
            "model_uri": f"runs:/{ft_id}/model", "match_real": True, "seed": cfg.seed})

    def training(stage, cfg_cls, model, train_set):
        # the real set uses no generated image: it needs only the prepared split, so it trains beside the
        # fine-tune and the generation instead of after them (the report finds it by model and train_set)
        needs_synth = train_set != "real"
        return Node(f"{stage}.{model}.{train_set}", lambda runs: make_step(stage, cfg_cls, {
            **common, "model": model, "train_set": train_set, "eval_data": eval_data,
            **({"seeds": cfg.seeds} if cfg.seeds else {}), **({"synth": generated(runs)} if needs_synth else {})},
            f"{stage}.{model}.{train_set}"), ("generate",) if needs_synth else ("prepare",))

    trainings = [training(stage, cfg_cls, model, train_set)
                 for stage, cfg_cls in ((STAGE_CLASSIFY, ClassifyConfig), (STAGE_SEGMENT, SegmentConfig))
                 for model in models[stage] for train_set in TRAIN_SETS]
    classifiers = models[STAGE_CLASSIFY]

    def explain(runs) -> Step:
        return make_step(STAGE_EXPLAIN, ExplainConfig, {
            "real_run": ",".join(runs[f"classify.{m}.real"].info.run_id for m in classifiers),
            "hybrid_run": ",".join(runs[f"classify.{m}.hybrid"].info.run_id for m in classifiers),
            "seed": cfg.seed})

    report_params = {"ui_url": cfg.ui_url} if cfg.ui_url else {}
    return [
        Node("prepare", lambda runs: Step(STAGE_PREPARE, PrepareConfig(data_dir=cfg.data_dir, seed=cfg.seed),
                                          {k: str(v) for k, v in common.items() if v != ""})),
        Node("finetune", lambda runs: make_step(STAGE_FINETUNE, FinetuneConfig,
                                                {**common, "base_model": cfg.base_model}), ("prepare",)),
        # the CAS / consistency judges need only the real train split: they train beside the fine-tune
        Node("judges", lambda runs: make_step(STAGE_JUDGES, JudgesConfig, common), ("prepare",)),
        Node("evaluate.real_test", lambda runs: make_step(STAGE_EVALUATE, EvaluateConfig, {
            "real": cfg.data_dir, "judges": judges(runs), "seed": cfg.seed}, "evaluate.real_test"), ("judges",)),
        Node("generate", generate, ("finetune",)),
        Node("evaluate.synth", lambda runs: make_step(STAGE_EVALUATE, EvaluateConfig, {
            "real": cfg.data_dir, "fake": generated(runs), "judges": judges(runs), "seed": cfg.seed},
            "evaluate.synth"), ("generate", "judges")),
        # looks at the evaluations of now: never reused
        Node("register", lambda runs: Step(STAGE_REGISTER, RegisterConfig(), {}, reuse=False),
             ("evaluate.real_test", "evaluate.synth")),
        *trainings,
        # (no classifier chosen: no explain)
        *([Node("explain", explain, tuple(n.name for n in trainings if n.name.startswith("classify.")))]
          if classifiers else []),
        # the report reads whatever runs exist now: never reused, it only reads MLflow
        Node("report", lambda runs: Step(STAGE_REPORT, ReportConfig(**report_params), report_params, reuse=False),
             ("register", *(["explain"] if classifiers else []), *(n.name for n in trainings))),
    ]


def check_nodes(nodes: list[Node]) -> None:
    """Build every node's step from placeholder runs, so a wrong option (--set, --models, profile)
    fails `main` before its run starts rather than after the fine-tune."""
    runs = {n.name: SimpleNamespace(info=SimpleNamespace(run_id=f"check-{n.name}")) for n in nodes}   # as make reads a run
    for n in nodes:
        n.make(runs)


def run_pipeline(cfg: PipelineConfig, experiment: str | None = None, log=print) -> str:
    if cfg.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {cfg.max_parallel}")
    if launcher.choose(cfg.launcher, cfg.env_manager) == "fork":
        launcher.start_server()             # its imports overlap with the setup below
    profile, rule = choose_profile(STAGE_MAIN, cfg.profile, {"data_dir": cfg.data_dir})
    cfg = dataclasses.replace(cfg, profile=profile)      # every step gets the profile chosen, given explicitly
    experiment = tracking.setup(experiment)
    eval_data = cfg.eval_data or (demo_eval_data() if cfg.profile == "demo" else "")
    nodes = pipeline_nodes(cfg, eval_data)
    check_nodes(nodes)
    t0 = time.perf_counter()
    # logged with the Table 3 set it resolved (the demo's: the HAM-layout demo set), not a blank
    with tracking.stage_run(STAGE_MAIN, dataclasses.replace(cfg, eval_data=eval_data), experiment=experiment,
                            extra_tags={TAG_PROFILE: profile, TAG_PROFILE_RULE: rule}) as parent:
        pipe = Pipeline(cfg, experiment, parent.info.run_id, log)
        runs = run_graph(pipe, nodes)
        mlflow.set_tag(TAG_DIGEST, runs["prepare"].data.tags.get(TAG_DIGEST, ""))
        mlflow.log_metric(METRIC_PIPELINE_SECONDS, time.perf_counter() - t0)
        log(f"[main] done in {time.perf_counter() - t0:.1f} s (parent run {pipe.parent_id})")
        return pipe.parent_id
