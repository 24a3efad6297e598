"""The `generate` stage: prompts -> (image, mask) pairs written as a dataset the data layer reads.

Model URIs: `runs:/<finetune run>/model`, `models:/<name>/<version>`, `models:/<name>@<alias>`, or a
local DualGen model folder. A registry URI is resolved to its version first (tag
`skindualgen.model_version`), so the run records exactly which version generated the set.

Output (ISIC-GPT layout + manifest):
    <output_dir>/images/<class>/<id>.png, masks/<class>/<id>.png, descriptions.json (the prompt),
    manifest.csv (id,image,mask,label,description,split,group,prompt,seed,model_uri,model_version)
Sample k of class c gets seed = seed + global index, recorded in the manifest, so any single sample
can be regenerated alone.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from harness import checks, tracking
from harness.config import GenerateConfig
from harness.data.generated import OWNER_FILE, check_output_folder, read_set
from harness.data.records import DataError
from harness.dualgen.mlflow_model import ModelURIError, model_folder
from harness.errors import ConfigError
from harness.dualgen.pipeline import DualGenPipeline, pair_grid
from harness.schema import (JUDGE_SEGMENTER, PARAM_BEST_GUIDANCE, PARAM_BEST_STEPS, STAGE_GENERATE, TAG_CONSISTENCY_MODEL,
                            TAG_FINETUNE_RUN, TAG_JUDGES_FROM, TAG_JUDGES_RUN, TAG_MODEL_URI, TAG_MODEL_VERSION,
                            TAG_OUTPUT_DIR, TAG_SET_DIGEST, TRAINING_JSON)

_MODELS_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


MANIFEST_FIELDS = ["id", "image", "mask", "label", "description", "split", "group", "prompt", "seed",
                   "model_uri", "model_version"]


def resolve_model_uri(uri: str) -> tuple[str, dict[str, str]]:
    """-> (a URI that names one fixed model, lineage tags). Registry URIs become their version;
    a missing name, version or alias is an error listing what exists."""
    if not uri:
        raise ModelURIError("--model-uri is required (runs:/<id>/model, models:/<name>/<version>, "
                            "models:/<name>@<alias>, or a model folder)")
    m = _MODELS_RE.match(uri)
    if not m:
        tags = {TAG_MODEL_URI: uri}
        if uri.startswith("runs:/"):
            tags[TAG_FINETUNE_RUN] = run_id = uri.split("/")[1]
            try:
                MlflowClient().get_run(run_id)
            except mlflow.exceptions.MlflowException:
                raise ModelURIError(f"{uri}: no run {run_id!r} in the tracking store "
                                    f"{tracking.without_password(mlflow.get_tracking_uri())}") from None
        return uri, tags
    client = MlflowClient()
    name = m["name"]
    try:
        registered = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        names = [r.name for r in client.search_registered_models()]
        raise ModelURIError(f"{uri}: no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if m["version"]:
        if int(m["version"]) not in versions:
            raise ModelURIError(f"{uri}: {name} has no version {m['version']}; versions: {versions}")
        version = client.get_model_version(name, m["version"])
    else:
        aliases = dict(registered.aliases or {})
        if m["alias"] not in aliases:
            raise ModelURIError(f"{uri}: {name} has no alias {m['alias']!r}; aliases: "
                                f"{', '.join(f'{a}->v{v}' for a, v in aliases.items()) or 'none'}")
        version = client.get_model_version_by_alias(name, m["alias"])
    tags = {TAG_MODEL_URI: uri, TAG_MODEL_VERSION: f"{name}/{version.version}",
            TAG_FINETUNE_RUN: version.run_id or ""}
    return f"models:/{name}/{version.version}", tags


def model_profile(uri: str) -> str:
    """The profile the model's fine-tune ran with (its training.json), "" when it records none."""
    fixed_uri, _ = resolve_model_uri(uri)
    return json.loads((model_folder(fixed_uri) / TRAINING_JSON).read_text()).get("profile", "")


def plan(training: dict, cfg: GenerateConfig) -> list[tuple[str, int]]:
    """[(class, count)]: --per-class N for every class; --balance: top each class up to the largest
    class's training count (the paper's use against class imbalance); or --match-real: as many as the
    real training split has of each class (N_c), the synthetic set "of identical scale" that the
    downstream `synth` and `hybrid` sets take (paper Sec. 4.2), and nothing they would not use."""
    classes = [c.strip() for c in cfg.classes.split(",") if c.strip()] or training["classes"]
    unknown = [c for c in classes if c not in training["classes"]]
    if unknown:
        raise ConfigError(f"class(es) {unknown} unknown to this model; it knows {training['classes']}")
    if sum((bool(cfg.per_class), cfg.balance, cfg.match_real)) != 1:
        raise ConfigError("give exactly one of --per-class N, --balance or --match-real")
    if cfg.per_class:
        return [(c, cfg.per_class) for c in classes]
    counts = training["class_counts"]
    if cfg.match_real:
        return [(c, counts.get(c, 0)) for c in classes]
    top = max(counts.values())
    return [(c, top - counts.get(c, 0)) for c in classes]


def load_settings_from_run(cfg: GenerateConfig) -> GenerateConfig:
    if not cfg.settings_from_run:
        return cfg
    run = mlflow.get_run(cfg.settings_from_run)
    params = run.data.params
    try:
        cfg.num_inference_steps = int(params[PARAM_BEST_STEPS])
        cfg.guidance_scale = float(params[PARAM_BEST_GUIDANCE])
    except KeyError as e:
        raise ConfigError(f"run {cfg.settings_from_run} has no best settings (param {e}); is it a tune run?") from e
    return cfg


def generate_pairs(pipe: DualGenPipeline, template: str, jobs: list[tuple[str, int]], seeds: list[int],
                   cfg: GenerateConfig, progress: bool = True) -> list:
    """One (image, mask) pair per job (class, k) with its seed."""
    prompts = [template.format(class_name=c) for c, _ in jobs]
    return pipe(prompts, seeds, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                height=cfg.resolution, width=cfg.resolution, batch_size=cfg.batch_size,
                mask_threshold=cfg.mask_threshold, progress=progress)


def consistency_judge(training: dict, cfg: GenerateConfig, experiment: str | None = None):
    """The real-trained segmenter that scores pairs for --min-consistency: the judges run given
    (cfg.judges) or the newest one for the data the model was fine-tuned on (its dataset digest) and
    cfg.judges_profile (harness/judges.py). None exists: a ConfigError naming the command that makes one."""
    from harness.judges import JUDGES_NONE, choose_judges, how_to_add, load_judge
    digest = training["dataset_digest"]
    if cfg.judges.strip().lower() == "none":
        raise ConfigError("--min-consistency needs a judging segmenter: --judges none leaves it none")
    run, how = choose_judges(cfg.judges, digest, cfg.judges_profile, experiment)
    data_dir = training.get("config", {}).get("data_dir", "")
    if how == JUDGES_NONE:
        raise ConfigError(f"--min-consistency: no FINISHED judges run for the model's training data (dataset digest "
                          f"{digest}) and judges profile {cfg.judges_profile}; make one with "
                          f"`{how_to_add(cfg.judges_profile, data_dir, experiment)}` or give --judges runs:/<id>")
    judge = load_judge(run, JUDGE_SEGMENTER)
    if judge is None:
        raise ConfigError(f"--min-consistency: judges run {run.info.run_id} has no consistency segmenter "
                          "(trained with --consistency-model none)")
    return judge, how


def pair_consistency(judge, labels: list[str], pairs: list) -> list[float]:
    """Dice in [0, 1] of each pair's mask vs the judge's mask for its image (files in a temp folder)."""
    from harness.data.records import Sample
    from harness.downstream.reference import consistency_scores
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for i, (label, (image, mask)) in enumerate(zip(labels, pairs)):
            image.save(Path(tmp) / f"{i}.png")
            mask.save(Path(tmp) / f"{i}_mask.png")
            samples.append(Sample(str(i), Path(tmp) / f"{i}.png", Path(tmp) / f"{i}_mask.png", label))
        return consistency_scores(judge, samples)[0].tolist()


def generate_consistent(pipe, template: str, todo: list[tuple[str, int]], cfg: GenerateConfig, judge,
                        progress: bool = True) -> tuple[list[tuple[str, int]], list[int], list, dict]:
    """Generate `todo` = [(class, count)]; with a judge, drop pairs whose consistency is below
    cfg.min_consistency and generate replacements with the next seeds, round after round, until every
    class has its count. Seeds are seed + 0, 1, 2, ... in the order pairs are made, so a kept pair's seed
    regenerates it alone. Returns (jobs, seeds, pairs, stats) of the kept pairs."""
    need = dict(todo)
    kept: dict[str, list] = {c: [] for c in need}
    next_seed, rounds, dropped, scores = cfg.seed, 0, {c: 0 for c in need}, []
    while any(len(kept[c]) < n for c, n in need.items()):
        if rounds == max(1, cfg.max_rounds):
            short = {c: f"{len(kept[c])}/{n}" for c, n in need.items() if len(kept[c]) < n}
            raise ConfigError(f"--min-consistency {cfg.min_consistency}: after {rounds} rounds these classes still lack "
                             f"pairs that pass (kept/needed): {short}; lower --min-consistency or raise --max-rounds")
        jobs = [(c, len(kept[c]) + k) for c, n in need.items() for k in range(n - len(kept[c]))]
        seeds = list(range(next_seed, next_seed + len(jobs)))
        next_seed += len(jobs)
        pairs = generate_pairs(pipe, template, jobs, seeds, cfg, progress)
        ok = [1.0] * len(pairs)
        if judge is not None:
            ok = pair_consistency(judge, [c for c, _ in jobs], pairs)
            scores += ok
        for (c, _), seed, pair, score in zip(jobs, seeds, pairs, ok):
            if judge is None or score >= cfg.min_consistency:
                kept[c].append((seed, pair, score))
            else:
                dropped[c] += 1
        rounds += 1
    jobs = [(c, k) for c, n in todo for k in range(n)]
    chosen = [kept[c][k] for c, k in jobs]
    stats = {"rounds": rounds, "dropped": dropped, "scores": scores,
             "kept_scores": [score for _, _, score in chosen]}
    return jobs, [seed for seed, _, _ in chosen], [pair for _, pair, _ in chosen], stats


def write_generated_set(out: Path, run_id: str, jobs, seeds, pairs, template: str, cfg: GenerateConfig,
                        lineage: dict, fixed_uri: str) -> list[dict]:
    """Write the pairs in the ISIC-GPT layout + manifest.csv + descriptions.json, atomically (a temp folder
    beside `out`, then renamed); refuse to replace a folder that is not a generated set."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rows, descriptions = [], {}
    for i, ((label, _), seed, (image, mask)) in enumerate(zip(jobs, seeds, pairs)):
        sid = f"SYN_{run_id[:8]}_{i:06d}"
        prompt = template.format(class_name=label)
        for kind, im in (("images", image), ("masks", mask)):
            (tmp / kind / label).mkdir(parents=True, exist_ok=True)
            im.save(tmp / kind / label / f"{sid}.png")
        descriptions[sid] = prompt
        rows.append({"id": sid, "image": f"images/{label}/{sid}.png", "mask": f"masks/{label}/{sid}.png",
                     "label": label, "description": prompt, "split": "train", "group": "",
                     "prompt": prompt, "seed": seed, "model_uri": cfg.model_uri,
                     "model_version": lineage.get(TAG_MODEL_VERSION, fixed_uri)})
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "descriptions.json").write_text(json.dumps(descriptions, indent=1))
    (tmp / OWNER_FILE).write_text(json.dumps({"run_id": run_id}))
    with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    if out.exists():
        try:
            check_output_folder(out)       # again: another run may have written it meanwhile
        except DataError:
            shutil.rmtree(tmp)
            raise
        shutil.rmtree(out)
    tmp.rename(out)
    return rows


def check_config(cfg: GenerateConfig) -> None:
    """Every option's range, before the model loads (one line naming the option)."""
    checks.at_least(cfg, 0, "per_class", "guidance_scale")
    checks.at_least(cfg, 1, "num_inference_steps", "batch_size", "max_rounds")
    checks.multiple_of(cfg, 8, "resolution")
    checks.within(cfg, 0, 1, "mask_threshold")
    if not 0.0 <= cfg.min_consistency <= 1.0:
        raise ConfigError(f"--min-consistency is a Dice in [0, 1], got {cfg.min_consistency}")


def generate(cfg: GenerateConfig, experiment: str | None = None, progress: bool = True) -> tuple[str, Path]:
    """Generate, write the dataset atomically, log the run. Returns (run id, output folder)."""
    check_config(cfg)
    tracking.setup(experiment)
    cfg = load_settings_from_run(cfg)
    check_config(cfg)                      # again: a tune run's settings
    if cfg.output_dir:
        check_output_folder(Path(cfg.output_dir).resolve())
    fixed_uri, lineage = resolve_model_uri(cfg.model_uri)
    folder = model_folder(fixed_uri)
    training = json.loads((folder / TRAINING_JSON).read_text())
    todo = plan(training, cfg)
    judge, judges_from = consistency_judge(training, cfg, experiment) if cfg.min_consistency > 0 else (None, "")
    with tracking.stage_run(STAGE_GENERATE, cfg, training["dataset_digest"], experiment, extra_tags=lineage) as run:
        pipe = DualGenPipeline.from_folder(folder, fuse=True, compile_unet=cfg.compile_unet)
        if cfg.compile_unet and progress:
            print("generate: the first batch compiles the UNet (torch.compile, a one-off minute or so)", flush=True)
        template = training["prompt_template"]
        jobs, seeds, pairs, stats = generate_consistent(pipe, template, todo, cfg, judge, progress)
        out = Path(cfg.output_dir or Path("outputs") / "generate" / run.info.run_id).resolve()
        rows = write_generated_set(out, run.info.run_id, jobs, seeds, pairs, template, cfg, lineage, fixed_uri)
        metrics = {"n_generated": len(rows)} | {f"generated_count/{c}": n for c, n in todo}
        if judge is not None:
            metrics |= {"n_dropped": sum(stats["dropped"].values()), "generation_rounds": stats["rounds"],
                        "consistency_all_mean": float(np.mean(stats["scores"])),
                        "consistency_kept_mean": float(np.mean(stats["kept_scores"])) if rows else 0.0}
            metrics |= {f"n_dropped/{c}": n for c, n in stats["dropped"].items()}
            mlflow.set_tags({TAG_CONSISTENCY_MODEL: judge.info["model"], TAG_JUDGES_RUN: judge.run_id,
                             TAG_JUDGES_FROM: judges_from})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out / "manifest.csv"))
        mlflow.set_tag(TAG_SET_DIGEST, read_set(out, progress=False)[1])   # evaluate checks the folder against it
        if pairs:
            per_class = {}
            for (label, _), pair in zip(jobs, pairs):
                per_class.setdefault(label, pair)
            mlflow.log_image(pair_grid(list(per_class.values())), "samples.png")
        mlflow.set_tag(TAG_OUTPUT_DIR, str(out))
        return run.info.run_id, out
