"""`report`: Tables 1-3 and Figures 2-3 of the paper rebuilt from the MLflow runs of one experiment.

Reads MLflow only (searches by tag `skindualgen.stage`, the row keys and the metric names; never
trains, never starts a run of another stage) plus, for Figure 2, the image files of a generated set
and of the real data. Writes `<output_dir>/<experiment>/` and logs the same files as artifacts of
one run of stage `report`:

    report.md                      header + Tables 1-3 (Markdown) + the figures + the paper's claims checked
    report.json                    the header facts, every cell (ours, interval, paper, diff, run, reason), claims
    table{1,2,3}.md|.tex|.csv      each table as Markdown, LaTeX (booktabs) and CSV (one row per cell)
    table1_per_class.md|.tex|.csv  per-class CAS and mask consistency of Table 1's runs (not in the paper)
    figure2.png, figure2.json      real vs generated image-mask pairs, one row per class (+ the ids)
    figure3.png                    the explain runs' heatmap figures, one per model (when any exist)
    claims_forest.png              each claim check's difference with its paired 95 % interval (forest.py)

Files of an earlier report in that folder with these names are replaced or removed, nothing else.
Paths of this machine appear in report.md, report.json and figure2.json only as paths.py shows them
(relative to the working directory when under it, else `…/` + their last two components).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Run
from PIL import Image

from harness import tracking
from harness.config import PrepareConfig, ReportConfig
from harness.errors import HarnessError
from harness.intervals import CI_RESAMPLES
from harness.report import claims, figures
from harness.report.forest import forest_figure, plt
from harness.report.paths import scrub, show_path, show_uri
from harness.report.runs import (
    CHOICE_RULE,
    FINISHED,
    RunIndex,
    newest_first,
    param,
    run_link,
    strip_credentials,
    ui_base,
)
from harness.report.tables import (
    CLASSIFIERS,
    Table,
    build_tables,
    cell_record,
    per_class_latex,
    per_class_markdown,
    per_class_table,
    to_csv,
    to_latex,
    to_markdown,
)
from harness.schema import (
    STAGE_EXPLAIN, STAGE_FINETUNE, STAGE_GENERATE, STAGE_REPORT, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_CODE,
    TAG_COMPARABLE, TAG_DIGEST, TAG_EXPLAIN_MODEL, TAG_EXTRACTOR, TAG_FINETUNE_RUN, TAG_GENERATE_RUN, TAG_LPIPS_NET,
    TAG_OUTPUT_DIR, TAG_REPORT_DIR, TAG_STAGE, TAG_SYNTH_RUN,
)

FIGURE3_RE = re.compile(r"^figure3_(?P<model>.+)\.png$")
NOT_COMPARABLE = "NOT comparable with published numbers"

FOREST_FILE = "claims_forest.png"
REPORT_FILES = ("report.md", "report.json", "figure2.png", "figure2.json", "figure3.png", FOREST_FILE,
                *(f"table{i}.{ext}" for i in (1, 2, 3) for ext in ("md", "tex", "csv")),
                *(f"table1_per_class.{ext}" for ext in ("md", "tex", "csv")))


INTERVALS_TEXT = (
    "each filled cell shows the 95 % interval its run logged (`<metric>_ci_low`/`_ci_high`): a percentile "
    f"bootstrap ({CI_RESAMPLES} seeded resamples, scipy.stats.bootstrap) that draws the test images (a lesion's "
    "images together) and the run's models (folds x seeds) with replacement and recomputes the metric as the "
    "point value is (per model, then averaged); Table 1's FID, LPIPS and MS-SSIM resample the real and the "
    "compared images (FID bias-corrected), its judges' columns the compared images. A cell without one says "
    "why (e.g. a run made before intervals, one test image). The claims' differences get paired intervals "
    "from the two runs' per-image artifacts (Table 1's FID: the wider unpaired one from the two runs' own). "
    "The paper reports no intervals.")


class ReportError(HarnessError, ValueError):
    """A report option that cannot work, or an experiment that does not exist."""


@dataclass
class FigureResult:
    image: Image.Image | None = None
    reason: str = ""                  # why the figure is missing (image None)
    notes: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)     # runs it came from


def experiment_folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


# ------------------------------------------------------------------------------------------------
# Figure 2: a generated set beside the real data
# ------------------------------------------------------------------------------------------------

def _load_generated(path: Path):
    from harness.data.layouts import load_dataset
    return load_dataset(path, "manifest" if (path / "manifest.csv").is_file() else "auto")


def _has_output(run: Run) -> bool:
    out = run.data.tags.get(TAG_OUTPUT_DIR, "")
    return bool(out) and Path(out).is_dir()


def _generate_run(cfg: ReportConfig, index: RunIndex, synth_eval: Run | None) -> tuple[Run | None, str, list[str]]:
    """(generate run, why none, notes) for Figure 2; see ReportConfig.generate_run for the rule."""
    notes: list[str] = []
    if cfg.generate_run:
        run = index.get(cfg.generate_run)
        if run is None:
            return None, f"generate run {cfg.generate_run} (--generate-run) does not exist", notes
        if run.info.status != FINISHED:
            notes.append(f"generate run {run.info.run_id} is {run.info.status}")
        return run, "", notes
    if synth_eval is not None:
        linked = index.get(synth_eval.data.tags.get(TAG_GENERATE_RUN, ""))
        if linked is not None and linked.info.status == FINISHED and _has_output(linked):
            notes.append(f"the generate run of Table 1's synthetic row (evaluate run {synth_eval.info.run_id})")
            return linked, "", notes
    runs = index.stage(STAGE_GENERATE)
    finished = [r for r in runs if r.info.status == FINISHED]
    for run in finished:
        if _has_output(run):
            notes.append("the newest FINISHED generate run whose output folder exists")
            return run, "", notes
    if not runs:
        return None, "no generate run", notes
    if not finished:
        return None, f"no FINISHED generate run ({len(runs)} not FINISHED)", notes
    return None, (f"the output folder of no FINISHED generate run exists here (newest: "
                  f"{show_path(finished[0].data.tags.get(TAG_OUTPUT_DIR, '(no tag)'))}); pass --generate-run and "
                  "copy the folder, or run generate here"), notes


def build_figure2(cfg: ReportConfig, index: RunIndex, synth_eval: Run | None) -> FigureResult:
    gen_run, reason, notes = _generate_run(cfg, index, synth_eval)
    if gen_run is None:
        return FigureResult(reason=reason)
    result = FigureResult(notes=notes, runs=[gen_run])
    out = gen_run.data.tags.get(TAG_OUTPUT_DIR, "")
    if not out or not Path(out).is_dir():
        result.reason = f"generate run {gen_run.info.run_id}: output folder {show_path(out) or '(no tag)'} not found"
        return result
    from harness.data.prepare import load_prepared
    from harness.data.records import DataError
    try:
        generated = _load_generated(Path(out))
    except (DataError, FileNotFoundError) as e:
        result.reason = f"generate run {gen_run.info.run_id}: cannot read {show_path(out)}: {scrub(str(e))}"
        return result

    finetune = index.get(gen_run.data.tags.get(TAG_FINETUNE_RUN, ""))
    if finetune is not None:
        result.runs.append(finetune)
    ft_params = tracking.effective_params(finetune) if finetune is not None else {}
    data_dir = cfg.real_data or ft_params.get("data_dir", "")
    test_fraction = float(ft_params.get("test_fraction") or PrepareConfig.test_fraction)
    seed = int(ft_params.get("seed") or PrepareConfig.seed)
    where = ("--real-data" if cfg.real_data else
             f"data_dir of finetune run {finetune.info.run_id}" if finetune is not None else
             "no finetune run linked: the embedded demo dataset")
    real = None
    try:
        prepared = load_prepared(data_dir, "auto", test_fraction, seed, progress=False)
        real = prepared.dataset
        result.notes.append(f"real data: {show_path(data_dir) or 'the embedded demo dataset'} ({where}; train split, "
                            f"test_fraction {test_fraction}, seed {seed}; digest {prepared.digest})")
        trained_on = gen_run.data.tags.get(TAG_DIGEST, "")
        if trained_on and trained_on != prepared.digest:
            result.notes.append(f"⚠ the generated set's model was trained on dataset digest {trained_on}, "
                                f"the real data shown has digest {prepared.digest}")
    except (DataError, FileNotFoundError, ValueError) as e:
        result.notes.append(f"⚠ real data {show_path(data_dir) or '(demo)'} ({where}) unreadable here, real columns "
                            f"n/a: {scrub(str(e))}")
    result.image, result.rows = figures.figure2(generated, real, cfg.figure_cell)
    result.notes.insert(0, f"generated set: {show_path(out)} (generate run {gen_run.info.run_id})")
    return result


# ------------------------------------------------------------------------------------------------
# Figure 3: the explain runs' heatmap figures
# ------------------------------------------------------------------------------------------------

def _model_order(model: str) -> tuple[int, str]:
    order = list(CLASSIFIERS)
    return (order.index(model) if model in order else len(order), model)


@contextlib.contextmanager
def _no_progress_bar():
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def build_figure3(index: RunIndex, workdir: Path) -> FigureResult:
    runs = index.stage(STAGE_EXPLAIN)
    finished = [r for r in runs if r.info.status == FINISHED]
    if not runs:
        return FigureResult(reason="no explain run")
    if not finished:
        return FigureResult(reason=f"no FINISHED explain run ({len(runs)} not FINISHED)")
    client = mlflow.MlflowClient()
    chosen: dict[str, tuple[Run, str]] = {}
    for run in newest_first(finished):            # newest FINISHED run per model
        try:
            files = client.list_artifacts(run.info.run_id, "heatmaps")
        except mlflow.exceptions.MlflowException:
            continue
        for f in files:
            m = FIGURE3_RE.match(Path(f.path).name)
            if m and not f.is_dir:
                chosen.setdefault(m["model"], (run, f.path))
    if not chosen:
        return FigureResult(reason=f"{len(finished)} FINISHED explain run(s), none with a "
                                   "heatmaps/figure3_<model>.png artifact")
    panels, result = [], FigureResult()
    for model in sorted(chosen, key=_model_order):
        run, path = chosen[model]
        with _no_progress_bar():
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path,
                                                        dst_path=str(workdir / run.info.run_id))
        with Image.open(local) as im:
            panels.append((model, run.info.run_id, im.convert("RGB")))
        result.runs.append(run)
        result.rows.append({"model": model, "run_id": run.info.run_id, "artifact": path,
                            "explain_model": run.data.tags.get(TAG_EXPLAIN_MODEL, param(run, "explain_model"))})
    result.image = figures.figure3(panels)
    result.notes.append("; ".join(f"{r['model']} from explain run {r['run_id']}" for r in result.rows))
    return result


# ------------------------------------------------------------------------------------------------
# Header
# ------------------------------------------------------------------------------------------------

def _counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _finetune_runs(index: RunIndex, runs: list[Run]) -> list[Run]:
    """The finetune runs behind the synthetic data of `runs` (directly or through a generate run)."""
    found: dict[str, Run] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_STAGE) == STAGE_FINETUNE:
            found[run.info.run_id] = run
            continue
        gen_ids = [tags.get(TAG_GENERATE_RUN, ""), tags.get(TAG_SYNTH_RUN, "")]
        ft_ids = [tags.get(TAG_FINETUNE_RUN, "")]
        for gid in gen_ids:
            gen = index.get(gid)
            if gen is not None:
                ft_ids.append(gen.data.tags.get(TAG_FINETUNE_RUN, ""))
        for fid in ft_ids:
            ft = index.get(fid)
            if ft is not None:
                found[ft.info.run_id] = ft
    return list(found.values())


def build_header(name: str, experiment_id: str, cfg: ReportConfig, index: RunIndex, tables: list[Table],
                 fig2: FigureResult, fig3: FigureResult, link_base: str) -> dict:
    row_runs = {r.choice.run.info.run_id: r.choice.run for t in tables for s in t.sections for r in s.rows
                if r.choice.run is not None}
    used = {**row_runs, **{r.info.run_id: r for r in fig2.runs + fig3.runs}}
    finetunes = _finetune_runs(index, list(used.values()))
    used.update({r.info.run_id: r for r in finetunes})

    code = _counts([r.data.tags.get(TAG_CODE, "(no tag)") for r in used.values()])
    digests = _counts([r.data.tags.get(TAG_DIGEST, "(no tag)") for r in row_runs.values()])
    bases = sorted({(show_path(r.data.tags.get(TAG_BASE_MODEL, "(no tag)")),
                     r.data.tags.get(TAG_BASE_REVISION, "(no tag)"), r.info.run_id) for r in finetunes})

    extractor_rows, loud = [], []
    table1 = tables[0].sections[0]
    for row in table1.rows:
        run = row.choice.run
        if run is None:
            continue
        tags = run.data.tags
        ext, net = tags.get(TAG_EXTRACTOR, "(no tag)"), tags.get(TAG_LPIPS_NET, "(no tag)")
        fallback = tags.get(TAG_COMPARABLE) == "false" or "fallback" in ext or "fallback" in net
        extractor_rows.append({"row": row.key, "run_id": run.info.run_id, "fid_extractor": ext, "lpips_net": net,
                               "standard": not fallback})
        if fallback:
            loud.append(f"Table 1 '{row.labels[0]}' (evaluate run {run.info.run_id}) used the offline fallback "
                        f"extractor(s) {ext}, {net}: its FID and LPIPS are {NOT_COMPARABLE} (seeded random "
                        "weights; they only rank sets against each other)")
    if len({(e["fid_extractor"], e["lpips_net"]) for e in extractor_rows}) > 1:
        loud.append("the two Table 1 rows used different feature extractors: their FID/LPIPS are not comparable "
                    "with each other either")

    missing = []
    for t in tables:
        for s in t.sections:
            for row in s.rows:
                groups: dict[str, list[str]] = {}
                for c in row.cells:
                    if c.ours is None:
                        groups.setdefault(c.reason, []).append(c.label)
                for reason, labels in groups.items():
                    missing.append({"table": t.key, "section": s.name, "row": row.key,
                                    "row_label": " / ".join(row.labels), "metrics": labels, "reason": reason})
    ignored = {}
    for t in tables:
        for s in t.sections:
            for row in s.rows:
                for r in row.choice.ignored:
                    ignored.setdefault(r.info.run_id, {"run_id": r.info.run_id, "status": r.info.status,
                                                       "stage": r.data.tags.get(TAG_STAGE, ""),
                                                       "rows": []})["rows"].append(f"{t.key} {row.key}")
    cells = [c for t in tables for c in t.cells]
    digest_note = f" and dataset digest `{cfg.dataset_digest}`" if cfg.dataset_digest else ""
    return {
        "experiment": name, "experiment_id": experiment_id,
        "tracking_uri": show_uri(tracking.tracking_uri()), "ui_base": link_base,
        "choice_rule": CHOICE_RULE.format(digest=digest_note),
        "code_versions": code, "report_code_version": tracking.code_version(),
        "base_models": [{"base_model": b, "base_revision": v, "finetune_run_id": i} for b, v, i in bases],
        "dataset_digests": digests, "feature_extractors": extractor_rows, "not_comparable": loud,
        "cells": len(cells), "cells_missing": sum(c.ours is None for c in cells),
        "missing": missing, "ignored_runs": list(ignored.values()),
        "figure2": {"reason": fig2.reason, "notes": fig2.notes, "rows": fig2.rows},
        "figure3": {"reason": fig3.reason, "notes": fig3.notes, "rows": fig3.rows},
    }


def _link(header: dict, run_id: str) -> str:
    url = run_link(header["ui_base"], header["experiment_id"], run_id)
    return f"[{run_id}]({url})" if url else f"`{run_id}`"


def header_markdown(h: dict, run_id: str) -> str:
    lines = [f"# SkinDualGen reproduction report — experiment `{h['experiment']}`", "",
             (f"Report run {_link(h, run_id)} · tracking store `{h['tracking_uri']}` · report code "
              f"`{h['report_code_version']}`"), ""]
    for msg in h["not_comparable"]:     # one blockquote each (consecutive ">" lines would merge)
        lines += [f"> **⚠ {NOT_COMPARABLE if NOT_COMPARABLE in msg else 'Warning'}:** {msg}", ""]
    lines.append(f"- **Choice rule:** {h['choice_rule']}.")
    code = ", ".join(f"`{v}` ({n} run{'s' * (n != 1)})" for v, n in h["code_versions"].items())
    lines.append(f"- **Code version(s)** of the runs used: {code or 'none (no run used)'}"
                 + (" — ⚠ several versions" if len(h["code_versions"]) > 1 else ""))
    if h["base_models"]:
        bases = "; ".join(f"`{b['base_model']}` @ `{b['base_revision']}` "
                          f"(finetune run {_link(h, b['finetune_run_id'])})" for b in h["base_models"])
    else:
        bases = "unknown: no finetune run is linked to the runs used"
    lines.append(f"- **Base model and revision:** {bases}")
    digests = ", ".join(f"`{d}` ({n} run{'s' * (n != 1)})" for d, n in h["dataset_digests"].items())
    lines.append(f"- **Dataset digest(s)** of the runs in the tables: {digests or 'none'}"
                 + (" — ⚠ the rows did not all use the same data" if len(h["dataset_digests"]) > 1 else ""))
    if h["feature_extractors"]:
        ext = "; ".join(f"{e['row']}: `{e['fid_extractor']}`, `{e['lpips_net']}` ("
                        + ("standard weights" if e["standard"] else f"offline fallback, {NOT_COMPARABLE}") + ")"
                        for e in h["feature_extractors"])
    else:
        ext = "no evaluate run used"
    lines.append(f"- **Feature extractor:** {ext}")
    lines.append("- **Units:** accuracy, sensitivity, precision, F1, Dice and IoU in %; ASD and HD in pixels; "
                 "FID, LPIPS and MS-SSIM unitless (as in the paper); CAS, mask consistency and mask non-empty "
                 "(Table 1, † not in the paper) fractions in [0, 1]. Δ = ours − paper.")
    lines.append(f"- **Intervals:** {INTERVALS_TEXT}")
    lines.append(f"- **Missing cells:** {h['cells_missing']} of {h['cells']}" + (":" if h["missing"] else ""))
    for m in h["missing"]:
        lines.append(f"  - {m['table'].replace('table', 'Table ')}, {m['row_label']} ({', '.join(m['metrics'])}): "
                     f"{m['reason']}")
    if h["ignored_runs"]:
        shown = h["ignored_runs"][:20]
        lines.append("- **Ignored runs** (not FINISHED): " + "; ".join(
            f"`{r['run_id']}` {r['status']} ({r['stage']}: {', '.join(r['rows'])})" for r in shown)
            + (f"; and {len(h['ignored_runs']) - 20} more" if len(h["ignored_runs"]) > 20 else ""))
    for key, title in (("figure2", "Figure 2"), ("figure3", "Figure 3")):
        f = h[key]
        lines.append(f"- **{title}:** " + (f"missing — {f['reason']}" if f["reason"] else "; ".join(f["notes"])))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------

def report(cfg: ReportConfig, experiment: str | None = None) -> str:
    """Build the report of one experiment, write it and log it as a `report` run; return the run id."""
    if cfg.figure_cell < 16:
        raise ReportError(f"figure_cell must be >= 16 px, got {cfg.figure_cell}")
    name = tracking.setup(experiment, create=False)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        raise ReportError(f"experiment {name!r} does not exist in {strip_credentials(tracking.tracking_uri())}")
    index = RunIndex(exp.experiment_id, cfg.dataset_digest)
    link_base = ui_base(tracking.tracking_uri(), cfg.ui_url)
    tables = build_tables(index, link_base)
    synth_row = tables[0].sections[0].rows[1]
    per_class = per_class_table(tables[0])
    claim_results = claims.evaluate(tables)
    out = Path(cfg.output_dir).expanduser() / experiment_folder(name)

    with tempfile.TemporaryDirectory(prefix="skindualgen-report-") as tmp:
        fig2 = build_figure2(cfg, index, synth_row.choice.run)
        fig3 = build_figure3(index, Path(tmp))
        header = build_header(name, exp.experiment_id, cfg, index, tables, fig2, fig3, link_base)
    for msg in header["not_comparable"]:
        print(f"WARNING: {msg}", file=sys.stderr)
    digests = [d for d in header["dataset_digests"] if d != "(no tag)"]
    tags = {TAG_REPORT_DIR: str(out.resolve()),
            TAG_COMPARABLE: str(not header["not_comparable"]).lower()}
    with tracking.stage_run(STAGE_REPORT, cfg, digests[0] if len(digests) == 1 else None, experiment,
                            run_name="report", extra_tags=tags) as run:
        run_id = run.info.run_id
        out.mkdir(parents=True, exist_ok=True)
        for fname in REPORT_FILES:
            (out / fname).unlink(missing_ok=True)
        body = [header_markdown(header, run_id)]
        for table in tables:
            md = to_markdown(table)
            body.append(md)
            (out / f"{table.key}.md").write_text(md + "\n", encoding="utf-8")
            (out / f"{table.key}.tex").write_text(to_latex(table), encoding="utf-8")
            (out / f"{table.key}.csv").write_text(to_csv(table), encoding="utf-8")
            if table.key == "table1":           # the per-class table under Table 1
                md = per_class_markdown(per_class)
                body.append(md)
                (out / f"{per_class.key}.md").write_text(md, encoding="utf-8")
                (out / f"{per_class.key}.tex").write_text(per_class_latex(per_class), encoding="utf-8")
                (out / f"{per_class.key}.csv").write_text(to_csv(per_class), encoding="utf-8")
        for key, title, result in (("figure2", "Figure 2: real vs generated image-mask pairs (one row per class)",
                                    fig2), ("figure3", "Figure 3: XAI heatmaps (one row per model)", fig3)):
            body.append(f"## {title}\n")
            if result.image is None:
                body.append(f"Missing — {result.reason}.\n")
                continue
            result.image.save(out / f"{key}.png", format="PNG")
            body.append(f"![{title}]({key}.png)\n\n" + "".join(f"- {n}\n" for n in result.notes))
        forest = forest_figure(claim_results)
        if forest is not None:
            forest.savefig(out / FOREST_FILE, dpi=150)
            plt.close(forest)
        body.append(claims.claims_markdown(claim_results, forest=FOREST_FILE if forest is not None else ""))
        if fig2.image is not None:
            (out / "figure2.json").write_text(json.dumps({"columns": list(figures.COLUMNS), "rows": fig2.rows,
                                                          "cell": cfg.figure_cell}, indent=1), encoding="utf-8")
        (out / "report.md").write_text("\n".join(body), encoding="utf-8")
        record = {**header, "report_run_id": run_id,
                  "tables": {t.key: [cell_record(c) for c in t.cells] for t in tables},
                  per_class.key: {"classes": per_class.classes, "notes": per_class.notes,
                                  "cells": [cell_record(c) for c in per_class.cells]},
                  "claims_summary": claims.counts(claim_results),
                  "claims": [claims.claim_record(r) for r in claim_results]}
        (out / "report.json").write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
        for fname in REPORT_FILES:          # only this report's files, not whatever else is in the folder
            if (out / fname).is_file():
                mlflow.log_artifact(str(out / fname))
        mlflow.log_metrics({"cells": header["cells"], "cells_missing": header["cells_missing"],
                            **claims.counts(claim_results),
                            **{f"{t.key}/cells_missing": sum(c.ours is None for c in t.cells) for t in tables}})
        return run_id


__all__ = ["REPORT_FILES", "ReportError", "build_figure2", "build_figure3", "build_header", "experiment_folder",
           "header_markdown", "report"]
