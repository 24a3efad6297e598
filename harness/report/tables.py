"""Tables 1-3: which runs and metrics fill them, and their Markdown, LaTeX (booktabs) and CSV forms.

Every cell carries our value (straight from the chosen run's metric, no unit change: classify and
segment already log % for accuracy/sensitivity/precision/F1/Dice/IoU and pixels for ASD/HD), the
paper's value (paper_values.json), the difference ours - paper, and the run it came from. A cell
without a value is "—" with its reason; it is never 0.

Beyond the paper, Table 1 has three columns marked † (`in_paper` false): the evaluate runs' `cas`,
`mask_consistency` and `mask_nonempty`, fractions in [0, 1]. Their paper value and Δ are "—"; like
every cell they count as missing only when our value is absent. Under Table 1, `per_class_table`
lists the same runs' `cas/<class>` and `mask_consistency/<class>`, one row per class (classes as the
runs logged them); its cells are not counted among the report's cells.

CSV (one row per cell): table, section, row, model, train_set, metric, run_metric, label, unit,
in_paper (true | false), ours, paper, diff, run_id, run_url, status (ok | missing), reason. Numbers
in the CSV are full precision (repr); Markdown and LaTeX show 3 decimals like the paper.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from importlib import resources

from harness.intervals import Interval
from harness.report.runs import Choice, RunIndex, choose, metric_interval, metric_value, param, run_link
from harness.schema import (
    CLASSIFY_MODELS, HAM_PREFIX, METRIC_ACCURACY, METRIC_ASD, METRIC_CAS, METRIC_DICE, METRIC_F1, METRIC_FID,
    METRIC_HD, METRIC_IOU, METRIC_LPIPS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, METRIC_MS_SSIM,
    METRIC_PRECISION, METRIC_SENSITIVITY, MODEL_TITLES, REAL_VS_REAL, REAL_VS_SYNTH, SEGMENT_MODELS, STAGE_CLASSIFY,
    STAGE_EVALUATE, STAGE_SEGMENT, TAG_COMPARISON,
)

MISSING = "—"

CLASSIFIERS = {m: MODEL_TITLES[m] for m in CLASSIFY_MODELS}     # model -> its name in the paper's tables
SEGMENTERS = {m: MODEL_TITLES[m] for m in SEGMENT_MODELS}
TRAIN_SETS_T2 = {"real": "Real only", "synth": "Synth only", "hybrid": "50%Real+50%Synth"}
TRAIN_SETS_T3 = {"real": "Real", "hybrid": "Hybrid"}
COMPARISONS = {REAL_VS_REAL: "Real Train vs Real Test", REAL_VS_SYNTH: "Real Train vs Synth Train"}


@dataclass(frozen=True)
class Column:
    metric: str          # the metric key in the paper's table (paper_values.json)
    label: str
    unit: str            # "%", "px" or ""
    in_paper: bool = True


QUALITY_COLUMNS = (Column(METRIC_FID, "FID", ""), Column(METRIC_LPIPS, "LPIPS", ""), Column(METRIC_MS_SSIM, "MS-SSIM", ""))
JUDGE_COLUMNS = (Column(METRIC_CAS, "CAS†", "", in_paper=False),
                 Column(METRIC_MASK_CONSISTENCY, "Mask consistency†", "", in_paper=False),
                 Column(METRIC_MASK_NONEMPTY, "Mask non-empty†", "", in_paper=False))
JUDGE_NOTE = ("† not in the paper: CAS = the share of the set's images that a classifier trained on the real "
              "train split assigns to their class; mask consistency = the mean Dice between each mask and the "
              "mask a segmenter trained on the real train split predicts for its image; mask non-empty = the "
              "share of masks with a lesion pixel. Fractions in [0, 1] (the evaluate run's `cas`, "
              "`mask_consistency`, `mask_nonempty`); the paper has no value, so paper and Δ are —.")
PER_CLASS_METRICS = {METRIC_CAS: "CAS", METRIC_MASK_CONSISTENCY: "Mask consistency"}
CLASSIFY_COLUMNS = (Column(METRIC_ACCURACY, "Accuracy", "%"), Column(METRIC_SENSITIVITY, "Sensitivity", "%"),
                    Column(METRIC_PRECISION, "Precision", "%"), Column(METRIC_F1, "F1score", "%"))
SEGMENT_COLUMNS = (Column(METRIC_DICE, "Dice", "%"), Column(METRIC_IOU, "IoU", "%"), Column(METRIC_ASD, "ASD", "px"),
                   Column(METRIC_HD, "HD", "px"))


@dataclass
class Cell:
    table: str
    section: str
    row: str                 # row key: a comparison, or "<model>/<train set>"
    model: str
    train_set: str
    metric: str              # paper metric key
    run_metric: str          # the MLflow metric read (e.g. ham_dice)
    label: str
    unit: str
    ours: float | None
    paper: float | None
    run_id: str = ""
    run_url: str = ""
    reason: str = ""
    in_paper: bool = True
    ci: Interval = field(default_factory=lambda: Interval(None, None, "no value"))    # our value's 95 % interval

    @property
    def diff(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    @property
    def status(self) -> str:
        return "ok" if self.ours is not None else "missing"


@dataclass
class Row:
    key: str
    labels: tuple[str, ...]          # the row header cells (model, train set) or (comparison,)
    cells: list[Cell]
    choice: Choice


@dataclass
class Section:
    name: str                        # quality | classification | segmentation
    headers: tuple[str, ...]         # the row header column titles
    columns: tuple[Column, ...]
    rows: list[Row] = field(default_factory=list)


@dataclass
class Table:
    key: str                         # table1 | table2 | table3
    title: str
    caption: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)     # footnotes under the table

    @property
    def cells(self) -> list[Cell]:
        return [c for s in self.sections for r in s.rows for c in r.cells]


def paper_values() -> dict:
    return json.loads(resources.files("harness.report").joinpath("paper_values.json").read_text("utf-8"))


# ------------------------------------------------------------------------------------------------
# Filling the tables from runs
# ------------------------------------------------------------------------------------------------

def _row(table: str, section: str, key: str, labels: tuple[str, ...], model: str, train_set: str,
         columns, choice: Choice, paper: dict, prefix: str, link_base: str) -> Row:
    cells = []
    for col in columns:
        run_metric = prefix + col.metric
        cell = Cell(table, section, key, model, train_set, col.metric, run_metric, col.label, col.unit, None,
                    paper.get(col.metric), in_paper=col.in_paper)
        if choice.run is None:
            cell.reason = choice.reason
        else:
            run = choice.run
            cell.run_id = run.info.run_id
            cell.run_url = run_link(link_base, run.info.experiment_id, run.info.run_id)
            cell.ours, cell.reason = metric_value(run, run_metric)
            if cell.ours is not None:
                cell.ci = metric_interval(run, run_metric)
        cells.append(cell)
    return Row(key, labels, cells, choice)


def _digest_note(index: RunIndex) -> str:
    return f" with dataset digest {index.dataset_digest}" if index.dataset_digest else ""


def table1(index: RunIndex, paper: dict, link_base: str) -> Table:
    section = Section("quality", ("Data for calculations",), QUALITY_COLUMNS + JUDGE_COLUMNS)
    runs = index.stage(STAGE_EVALUATE)
    for comparison, label in COMPARISONS.items():
        matching = [r for r in runs if r.data.tags.get(TAG_COMPARISON) == comparison]
        choice = choose(matching, f"evaluate {comparison}",
                        f"no evaluate run with comparison {comparison}{_digest_note(index)}")
        section.rows.append(_row("table1", "quality", comparison, (label,), "", "", section.columns, choice,
                                 paper["table1"][comparison], "", link_base))
    return Table("table1", "Table 1: Image quality of the generated images", paper["table1"]["caption"],
                 [section], [JUDGE_NOTE])


def _downstream(table: str, stage: str, models: dict, train_sets: dict, columns, index: RunIndex,
                paper: dict, link_base: str, ham: bool) -> Section:
    name = "classification" if stage == STAGE_CLASSIFY else "segmentation"
    section = Section(name, ("Models", "Train Dataset" if table == "table2" else "Dataset"), columns)
    runs = index.stage(stage)
    for model, model_label in models.items():
        for train_set, set_label in train_sets.items():
            matching = [r for r in runs if param(r, "model") == model and param(r, "train_set") == train_set]
            what = f"{stage} {model}/{train_set}"
            none_reason = f"no {stage} run of {model} on {train_set}{_digest_note(index)}"
            if ham:
                with_ham = [r for r in matching if param(r, "eval_data")]
                if matching and not with_ham:
                    none_reason = (f"no {stage} run of {model} on {train_set} with eval_data (HAM10000); "
                                   f"{len(matching)} run(s) without it")
                matching, what = with_ham, what + " with eval_data"
            choice = choose(matching, what, none_reason)
            section.rows.append(_row(table, name, f"{model}/{train_set}", (model_label, set_label), model,
                                     train_set, columns, choice, paper[table][stage][model][train_set],
                                     HAM_PREFIX if ham else "", link_base))
    return section


def table2(index: RunIndex, paper: dict, link_base: str) -> Table:
    return Table("table2", "Table 2: Real / synthetic / hybrid training sets (real test split)",
                 paper["table2"]["caption"],
                 [_downstream("table2", STAGE_CLASSIFY, CLASSIFIERS, TRAIN_SETS_T2, CLASSIFY_COLUMNS, index, paper,
                              link_base, ham=False),
                  _downstream("table2", STAGE_SEGMENT, SEGMENTERS, TRAIN_SETS_T2, SEGMENT_COLUMNS, index, paper,
                              link_base, ham=False)])


def table3(index: RunIndex, paper: dict, link_base: str) -> Table:
    return Table("table3", "Table 3: Robustness on HAM10000 (the ham_* metrics of runs given eval_data)",
                 paper["table3"]["caption"],
                 [_downstream("table3", STAGE_CLASSIFY, CLASSIFIERS, TRAIN_SETS_T3, CLASSIFY_COLUMNS, index, paper,
                              link_base, ham=True),
                  _downstream("table3", STAGE_SEGMENT, SEGMENTERS, TRAIN_SETS_T3, SEGMENT_COLUMNS[:2], index, paper,
                              link_base, ham=True)])


def build_tables(index: RunIndex, link_base: str = "") -> list[Table]:
    paper = paper_values()
    return [table1(index, paper, link_base), table2(index, paper, link_base), table3(index, paper, link_base)]


# ------------------------------------------------------------------------------------------------
# Under Table 1: per-class CAS and mask consistency (not in the paper)
# ------------------------------------------------------------------------------------------------

@dataclass
class PerClassTable:
    key: str
    title: str
    columns: list[tuple[str, str]]       # (comparison, metric): the synthetic row's first, then the real test's
    classes: list[str]
    cells: list[Cell]                    # class by class, one per column (Cell.row = class, section = comparison)
    notes: list[str] = field(default_factory=list)     # why a row of Table 1 gives no column


PER_CLASS_ORDER = (REAL_VS_SYNTH, REAL_VS_REAL)
PER_CLASS_SHORT = {REAL_VS_SYNTH: "synth", REAL_VS_REAL: "real test"}


def per_class_table(t1: Table) -> PerClassTable:
    """The `cas/<class>` and `mask_consistency/<class>` metrics of the runs chosen for Table 1's rows (the
    same runs as its cells). A row's columns appear when its run logs at least one such metric; the
    classes are every class either run logs, sorted; a class one run lacks is a missing cell."""
    rows = {r.key: r for r in t1.sections[0].rows}
    columns: list[tuple[str, str]] = []
    classes: set[str] = set()
    notes = []
    for comparison in PER_CLASS_ORDER:
        row = rows[comparison]
        run = row.choice.run
        if run is None:
            notes.append(f"{COMPARISONS[comparison]}: {row.choice.reason}")
            continue
        found = {key.split("/", 1)[1] for key in run.data.metrics for metric in PER_CLASS_METRICS
                 if key.startswith(metric + "/")}
        if not found:
            notes.append(f"{COMPARISONS[comparison]}: evaluate run {run.info.run_id} logs no `cas/<class>` or "
                         "`mask_consistency/<class>` metric")
            continue
        classes |= found
        columns += [(comparison, metric) for metric in PER_CLASS_METRICS]
    cells = []
    for name in sorted(classes):
        for comparison, metric in columns:
            row = rows[comparison]
            run = row.choice.run
            cell = Cell("table1_per_class", comparison, name, "", "", metric, f"{metric}/{name}",
                        f"{PER_CLASS_METRICS[metric]} ({PER_CLASS_SHORT[comparison]})", "", None, None,
                        run.info.run_id, row.cells[0].run_url, in_paper=False)
            cell.ours, cell.reason = metric_value(run, cell.run_metric)
            cells.append(cell)
    return PerClassTable("table1_per_class", "Per-class CAS and mask consistency (not in the paper)", columns,
                         sorted(classes), cells, notes)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------

def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def fmt_interval(iv: Interval, unit: str) -> str:
    """`[low, high]`: one decimal for % and px (as wide as they are, more would be noise), three otherwise."""
    d = 1 if unit in ("%", "px") else 3
    return f"[{iv.low:.{d}f}, {iv.high:.{d}f}]"


def interval_notes(cells: list[Cell]) -> dict[str, int]:
    """The distinct reasons of filled cells without an interval, numbered in order of appearance."""
    out: dict[str, int] = {}
    for c in cells:
        if c.ours is not None and not c.ci.ok:
            out.setdefault(c.ci.reason, len(out) + 1)
    return out


def ours_text(c: Cell, notes: dict[str, int]) -> str:
    """Our value with its interval, or with "no interval" and the number of the note saying why."""
    if c.ours is None:
        return MISSING
    if c.ci.ok:
        return f"{fmt(c.ours)} {fmt_interval(c.ci, c.unit)}"
    return f"{fmt(c.ours)} (no interval {notes[c.ci.reason]})"


def _interval_note_lines(notes: dict[str, int]) -> list[str]:
    return [f"No interval {n}: {reason}." for reason, n in notes.items()]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _unit(col: Column) -> str:
    return f" ({col.unit})" if col.unit else ""


def _md_run(row: Row) -> str:
    run_ids = {c.run_id for c in row.cells if c.run_id}
    if not run_ids:
        return MISSING
    cell = next(c for c in row.cells if c.run_id)
    return f"[{cell.run_id}]({cell.run_url})" if cell.run_url else f"`{cell.run_id}`"


def to_markdown(table: Table, heading_level: int = 2) -> str:
    intro = (f"Paper: *{table.caption}*. Each metric: ours with its 95 % interval in brackets (test images "
             "and the run's models resampled, see Intervals in the header), the paper's value (no interval: the "
             "paper reports none), Δ = ours − paper; the run column names the MLflow run of the whole row.")
    notes = interval_notes(table.cells)
    out = [f"{'#' * heading_level} {table.title}", "", intro, ""]
    for section in table.sections:
        if len(table.sections) > 1:
            out += [f"**{section.name.capitalize()}**", ""]
        header = list(section.headers)
        for col in section.columns:
            header += [f"{col.label}{_unit(col)}", "paper", "Δ"]
        header.append("run")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([":--"] * len(section.headers) + ["--:"] * 3 * len(section.columns) + [":--"]) + "|")
        for row in section.rows:
            values = [_md_escape(x) for x in row.labels]
            for c in row.cells:
                values += [ours_text(c, notes), fmt(c.paper), fmt(c.diff, signed=True)]
            values.append(_md_run(row))
            out.append("| " + " | ".join(values) + " |")
        out.append("")
    out += [*(_md_escape(n) for n in table.notes + _interval_note_lines(notes)), ""] if table.notes or notes else []
    return "\n".join(out)


def _md_link(cell: Cell) -> str:
    return f"[{cell.run_id}]({cell.run_url})" if cell.run_url else f"`{cell.run_id}`"


def per_class_markdown(table: PerClassTable, heading_level: int = 3) -> str:
    """One row per class, ours only (fractions in [0, 1]; no paper value), then the runs and any notes."""
    out = [f"{'#' * heading_level} {table.title}", ""]
    if table.columns:
        out.append("| Class | " + " | ".join(_md_escape(_per_class_label(table, col)) for col in table.columns) + " |")
        out.append("|:--|" + "--:|" * len(table.columns))
        by_class = _per_class_rows(table)
        for name in table.classes:
            out.append("| " + " | ".join([_md_escape(name)] + [fmt(c.ours) for c in by_class[name]]) + " |")
        out.append("")
        runs = {}
        for c in table.cells:
            runs.setdefault(c.section, c)
        out.append("Runs: " + "; ".join(f"{COMPARISONS[k]}: {_md_link(c)}" for k, c in runs.items()) + ".")
        out.append("")
    else:
        out += ["No per-class values.", ""]
    out += [f"- {_md_escape(n)}" for n in table.notes]
    return "\n".join(out).rstrip("\n") + "\n"


def _per_class_label(table: PerClassTable, col: tuple[str, str]) -> str:
    comparison, metric = col
    return f"{PER_CLASS_METRICS[metric]} ({PER_CLASS_SHORT[comparison]})"


def _per_class_rows(table: PerClassTable) -> dict[str, list[Cell]]:
    by_class: dict[str, list[Cell]] = {}
    for c in table.cells:
        by_class.setdefault(c.row, []).append(c)
    return by_class


_TEX_SPECIAL = {"†": r"\dag{}", "Δ": r"$\Delta$", "—": "---", "−": "$-$",
                "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def tex_note(text: str) -> str:
    """A footnote's text for LaTeX: escaped, `code` spans as \\texttt."""
    parts = text.split("`")
    return "".join(r"\texttt{" + tex_escape(p) + "}" if i % 2 else tex_escape(p) for i, p in enumerate(parts))


def _tex_num(value: float | None, signed: bool = False) -> str:
    return "---" if value is None else f"${fmt(value, signed)}$"


def _tex_ours(c: Cell, notes: dict[str, int]) -> str:
    if c.ours is None or not c.ci.ok:
        return _tex_num(c.ours) + ("" if c.ours is None else rf"$^{{{notes[c.ci.reason]}}}$")
    return _tex_num(c.ours) + r" {\scriptsize " + fmt_interval(c.ci, c.unit) + "}"


def _tex_run(row: Row) -> str:
    cell = next((c for c in row.cells if c.run_id), None)
    if cell is None:
        return "---"
    short = r"\texttt{" + cell.run_id[:8] + "}"
    if cell.run_url:
        url = cell.run_url.replace("\\", "").replace("#", r"\#").replace("%", r"\%")
        return r"\href{" + url + "}{" + short + "}"
    return short


def to_latex(table: Table) -> str:
    """One booktabs tabular; sections share the columns (a shorter section leaves the rest empty).
    Run ids are shortened to 8 characters (the CSV has them in full); links need \\usepackage{hyperref}."""
    n_head = max(len(s.headers) for s in table.sections)
    n_metric = max(len(s.columns) for s in table.sections)
    spec = "l" * n_head + "rrr" * n_metric + "l"
    notes = interval_notes(table.cells)
    lines = [(f"% {table.title}. Generated by harness.report from MLflow runs; needs \\usepackage{{booktabs}}"
              " (and hyperref for run links)."),
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex_escape(table.caption) + r" (ours, paper, $\Delta$ = ours $-$ paper)}",
             r"\label{tab:skindualgen-" + table.key + "}",
             r"\begin{tabular}{" + spec + "}", r"\toprule"]
    for i, section in enumerate(table.sections):
        if i:
            lines.append(r"\midrule")
        heads = [tex_escape(h) for h in section.headers] + [""] * (n_head - len(section.headers))
        groups, rules = [], []
        for j, col in enumerate(section.columns):
            groups.append(r"\multicolumn{3}{c}{" + tex_escape(col.label + _unit(col)) + "}")
            start = n_head + 3 * j + 1
            rules.append(rf"\cmidrule(lr){{{start}-{start + 2}}}")
        groups += [r"\multicolumn{3}{c}{}"] * (n_metric - len(section.columns))
        lines.append(" & ".join(heads + groups + ["Run"]) + r" \\")
        lines.append(" ".join(rules))
        sub = [""] * n_head + ["ours", "paper", r"$\Delta$"] * len(section.columns) + \
              [""] * (3 * (n_metric - len(section.columns))) + [""]
        lines.append(" & ".join(sub) + r" \\")
        lines.append(r"\midrule")
        previous = None
        for row in section.rows:
            labels = [tex_escape(x) for x in row.labels] + [""] * (n_head - len(row.labels))
            if len(row.labels) > 1 and row.labels[0] == previous:
                labels[0] = ""          # the model name once per group, as in the paper
            previous = row.labels[0]
            values = []
            for c in row.cells:
                values += [_tex_ours(c, notes), _tex_num(c.paper), _tex_num(c.diff, signed=True)]
            values += [""] * (3 * (n_metric - len(row.cells)))
            lines.append(" & ".join(labels + values + [_tex_run(row)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip{\footnotesize " + tex_note(n) + "}" for n in table.notes + _interval_note_lines(notes)]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def per_class_latex(table: PerClassTable) -> str:
    """One booktabs tabular: a class per row, ours only; run ids shortened to 8 characters."""
    lines = [f"% {table.title}. Generated by harness.report from MLflow runs; needs \\usepackage{{booktabs}}.",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex_escape(table.title) + "}", r"\label{tab:skindualgen-" + table.key.replace("_", "-") + "}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule"]
    lines.append(" & ".join(["Class"] + [tex_escape(_per_class_label(table, col)) for col in table.columns]) + r" \\")
    lines.append(r"\midrule")
    by_class = _per_class_rows(table)
    for name in table.classes:
        lines.append(" & ".join([tex_escape(name)] + [_tex_num(c.ours) for c in by_class[name]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    runs = {}
    for c in table.cells:
        runs.setdefault(c.section, c)
    notes = [f"{COMPARISONS[k]}: run {c.run_id[:8]}" for k, c in runs.items()] + table.notes
    lines += [r"\par\smallskip{\footnotesize " + tex_note(n) + "}" for n in notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


CSV_FIELDS = ["table", "section", "row", "model", "train_set", "metric", "run_metric", "label", "unit", "in_paper",
              "ours", "ci_low", "ci_high", "ci_reason", "paper", "diff", "run_id", "run_url", "status", "reason"]


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def cell_record(c: Cell) -> dict[str, str]:
    return {"table": c.table, "section": c.section, "row": c.row, "model": c.model, "train_set": c.train_set,
            "metric": c.metric, "run_metric": c.run_metric, "label": c.label, "unit": c.unit,
            "in_paper": str(c.in_paper).lower(), "ours": _num(c.ours), "ci_low": _num(c.ci.low),
            "ci_high": _num(c.ci.high), "ci_reason": "" if c.ours is None else c.ci.reason, "paper": _num(c.paper),
            "diff": _num(c.diff), "run_id": c.run_id, "run_url": c.run_url, "status": c.status, "reason": c.reason}


def to_csv(table: Table | PerClassTable) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in table.cells:
        writer.writerow(cell_record(c))
    return buf.getvalue()


__all__ = [
    "CLASSIFIERS",
    "COMPARISONS",
    "JUDGE_COLUMNS",
    "PER_CLASS_METRICS",
    "CSV_FIELDS",
    "MISSING",
    "SEGMENTERS",
    "Cell",
    "Column",
    "PerClassTable",
    "Row",
    "Section",
    "Table",
    "build_tables",
    "cell_record",
    "fmt",
    "fmt_interval",
    "interval_notes",
    "ours_text",
    "paper_values",
    "per_class_latex",
    "per_class_markdown",
    "per_class_table",
    "tex_escape",
    "to_csv",
    "to_latex",
    "to_markdown",
]
