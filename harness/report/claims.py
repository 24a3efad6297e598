"""The paper's quantitative claims, each checked mechanically on the report's own cells.

`CLAIMS` holds every claim: the paper's sentence(s), quoted verbatim with their section, the rule
each reading applies, and one small function that lists its checks. A check is one difference of
two cells of Tables 1-3 (a − b, e.g. hybrid − real accuracy of one classifier), read from the same
cells (so the same chosen runs) as the tables, with one test per reading (e.g. "in [8, 15]").

Each check of ours carries the 95 % interval of its difference, paired over the test images both
runs were scored on (evidence.py). Its test **passes** when the whole interval satisfies it,
**fails** when the whole interval violates it, and is **inconclusive** otherwise (also when the
difference has no interval: a point estimate decides nothing). Verdict of a reading:
    holds           every measured check passes, and at least one was measured
    does not hold   at least one measured check fails
    inconclusive    none fails, at least one is inconclusive
    not measured    no check could be measured (a cell missing, or a comparison made invalid)
The claim's verdict is its first reading's; "partly measured" when some of its checks could not be
measured (they are listed with why). The paper's own numbers have no intervals: the same tests on
its point differences (passes or fails) are shown beside ours, labelled as point comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from harness import intervals
from harness.intervals import Interval, needed_units
from harness.report.evidence import Evidence
from harness.report.tables import CLASSIFIERS, SEGMENTERS, TRAIN_SETS_T2, Cell, Table, fmt, fmt_interval
from harness.schema import (
    METRIC_ACCURACY, METRIC_ASD, METRIC_DICE, METRIC_F1, METRIC_FID, METRIC_HD, METRIC_IOU, METRIC_SENSITIVITY,
    REAL_VS_REAL, REAL_VS_SYNTH, SEGMENT_METRICS, TAG_EXTRACTOR,
)

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED)
METRIC_METRICS = {HOLDS: "claims/holds", FAILS: "claims/does_not_hold", INCONCLUSIVE: "claims/inconclusive",
                  NOT_MEASURED: "claims/not_measured"}
# a check's test result: intervals.PASSES / FAILS / INCONCLUSIVE, or NOT_MEASURED
MARK = {intervals.PASSES: "✓", intervals.FAILS: "✗", intervals.INCONCLUSIVE: "?", NOT_MEASURED: "—"}
LABELS = {METRIC_ACCURACY: "Accuracy", METRIC_SENSITIVITY: "Sensitivity", METRIC_F1: "F1", METRIC_DICE: "Dice",
          METRIC_IOU: "IoU", METRIC_ASD: "ASD", METRIC_HD: "HD", METRIC_FID: "FID"}


@dataclass(frozen=True)
class Test:
    text: str
    passes: Callable[[float], bool]


def between(lo: float, hi: float) -> Test:
    return Test(f"in [{lo:g}, {hi:g}]", lambda x: lo <= x <= hi)


ABOVE = Test("> 0", lambda x: x > 0)
BELOW = Test("< 0", lambda x: x < 0)


@dataclass
class Check:
    part: str                    # the model or training set the check is about
    quantity: str                # what a − b is, e.g. "Accuracy: hybrid − real (points)"
    a: Cell
    b: Cell
    tests: tuple[Test, ...]      # one per reading of the claim
    blocked: str = ""            # why our a − b is not measured although both cells have a value
    ci: Interval = field(default_factory=lambda: Interval(None, None, "not computed"))   # paired 95 % interval
    n_units: int | None = None   # test units (lesion groups) the two runs were scored on

    @property
    def ours(self) -> float | None:
        if self.blocked or self.a.ours is None or self.b.ours is None:
            return None
        return self.a.ours - self.b.ours

    @property
    def paper(self) -> float | None:
        return None if self.a.paper is None or self.b.paper is None else self.a.paper - self.b.paper

    @property
    def reason(self) -> str:
        if self.blocked:
            return self.blocked
        return "; ".join(dict.fromkeys(c.reason for c in (self.a, self.b) if c.ours is None))

    def result(self, reading: int, paper: bool = False) -> str:
        """passes / fails / inconclusive on our paired interval; passes / fails on the paper's point
        difference; not measured without a value."""
        value = self.paper if paper else self.ours
        if value is None:
            return NOT_MEASURED
        test = self.tests[reading]
        if paper:
            return intervals.PASSES if test.passes(value) else intervals.FAILS
        return intervals.verdict(self.ci, test.passes) or intervals.INCONCLUSIVE

    @property
    def effect(self) -> float | None:
        """The difference the paper claims for this check (its own point difference), else ours."""
        return self.paper if self.paper else self.ours

    @property
    def needed(self) -> int | None:
        """Test units for the interval's half-width to shrink to |effect| (∝ 1/half-width²)."""
        if self.ours is None or self.n_units is None or self.effect is None:
            return None
        return needed_units(self.ci, self.n_units, self.effect)


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    quotes: tuple[tuple[str, str], ...]      # (section, the paper's sentence verbatim)
    readings: tuple[str, ...]                # the rule of each reading; the first one decides the verdict
    part_title: str                          # what a check's `part` is (Model, Training set, ...)
    checks: Callable[[Cells], list[Check]]


class Cells:
    """The report's cells by (table, row key, metric) and the run chosen for each row."""

    def __init__(self, tables: list[Table]):
        self._cells = {(c.table, c.row, c.metric): c for t in tables for c in t.cells}
        self._runs = {(t.key, r.key): r.choice.run for t in tables for s in t.sections for r in s.rows}

    def __call__(self, table: str, row: str, metric: str) -> Cell:
        return self._cells[(table, row, metric)]

    def run(self, table: str, row: str):
        return self._runs[(table, row)]


def combine(results: list[str]) -> str:
    """A reading's verdict from its checks' results (passes / fails / inconclusive / not measured)."""
    measured = [r for r in results if r != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if intervals.FAILS in measured:
        return FAILS
    return HOLDS if all(r == intervals.PASSES for r in measured) else INCONCLUSIVE


# ------------------------------------------------------------------------------------------------
# One function per claim
# ------------------------------------------------------------------------------------------------

def hybrid_gain_classification(cells: Cells) -> list[Check]:
    return [Check(name, f"{LABELS[metric]}: hybrid − real (points)", cells("table2", f"{model}/hybrid", metric),
                  cells("table2", f"{model}/real", metric), (between(8, 15), ABOVE))
            for model, name in CLASSIFIERS.items() for metric in (METRIC_ACCURACY, METRIC_F1)]


def synth_below_real(cells: Cells) -> list[Check]:
    checks = [Check(name, f"{LABELS[metric]}: synth − real (points)", cells("table2", f"{model}/synth", metric),
                    cells("table2", f"{model}/real", metric), (BELOW,))
              for model, name in CLASSIFIERS.items() for metric in (METRIC_ACCURACY, METRIC_F1)]
    return checks + [Check(name, "Dice: synth − real (points)", cells("table2", f"{model}/synth", METRIC_DICE),
                           cells("table2", f"{model}/real", METRIC_DICE), (BELOW,)) for model, name in SEGMENTERS.items()]


def hybrid_gain_segmentation(cells: Cells) -> list[Check]:
    checks = []
    for model, name in SEGMENTERS.items():
        for metric in SEGMENT_METRICS:
            unit = "points" if metric in (METRIC_DICE, METRIC_IOU) else "px"
            tests = (between(0.5, 1), ABOVE) if metric in (METRIC_DICE, METRIC_IOU) else (BELOW, BELOW)
            checks.append(Check(name, f"{LABELS[metric]}: hybrid − real ({unit})",
                                cells("table2", f"{model}/hybrid", metric), cells("table2", f"{model}/real", metric),
                                tests))
    return checks


def deeplab_beats_unet(cells: Cells) -> list[Check]:
    return [Check(name, f"{LABELS[metric]}: DeepLabV3+ − U-Net", cells("table2", f"deeplabv3plus/{train_set}", metric),
                  cells("table2", f"unet/{train_set}", metric), (ABOVE if metric in (METRIC_DICE, METRIC_IOU) else BELOW,))
            for train_set, name in TRAIN_SETS_T2.items() for metric in SEGMENT_METRICS]


def ham_hybrid_gain(cells: Cells) -> list[Check]:
    return [Check(name, f"HAM10000 {LABELS[metric]}: hybrid − real (points)",
                  cells("table3", f"{model}/hybrid", metric), cells("table3", f"{model}/real", metric), (ABOVE,))
            for model, name in CLASSIFIERS.items() for metric in (METRIC_SENSITIVITY, METRIC_F1)]


def fid_synth_above_real(cells: Cells) -> list[Check]:
    synth, real = REAL_VS_SYNTH, REAL_VS_REAL
    blocked = ""
    runs = [cells.run("table1", synth), cells.run("table1", real)]
    if all(r is not None for r in runs):
        ext = [r.data.tags.get(TAG_EXTRACTOR, "") for r in runs]
        if all(ext) and ext[0] != ext[1]:
            blocked = (f"the two evaluate runs used different FID feature extractors ({ext[0]}, {ext[1]}): their "
                       "FIDs are not comparable")
    return [Check("Table 1", "FID: real train vs synth train − real train vs real test", cells("table1", synth, METRIC_FID),
                  cells("table1", real, METRIC_FID), (ABOVE,), blocked)]


CLAIMS: tuple[Claim, ...] = (
    Claim("hybrid_gain_classification",
          "Hybrid training improves accuracy and F1 by 8–15 % over real-only, for every classifier",
          (("Abstract", "A hybrid dataset combining real and synthetic data markedly enhances the performance of "
                        "classification and segmentation models, achieving substantial improvements in accuracy and "
                        "F1-score of 8% to 15%, with additional positive gains in other key metrics such as the Dice "
                        "coefficient and IoU."),
           ("Sec. 4.3.1", "This approach enhanced classification performance across all models, with accuracy and "
                          "F1-score improvements ranging from 8% to 15%.")),
          ("\"8% to 15%\" read as percentage points (accuracy and F1 are in %): for every classifier, hybrid − real "
           "is in [8, 15] points for accuracy and for F1 (Table 2)",
           "weaker: for every classifier, hybrid − real > 0 for accuracy and F1 (Table 2)"),
          "Model", hybrid_gain_classification),
    Claim("synth_below_real",
          "Training on synthetic data only is worse than on real data only",
          (("Sec. 4.3.1", "The suboptimal results with synthetic-only data likely stem from distributional shifts or "
                          "label noise relative to the real test set, impeding generalization."),
           ("Sec. 4.3.2", "The poorer performance of synthetic-only data likely arises from geometric distortions in "
                          "mask generation or domain mismatches with the real test set, leading to imprecise boundary "
                          "predictions.")),
          ("for every classifier, synth − real < 0 for accuracy and F1; for every segmenter, synth − real < 0 for "
           "Dice (Table 2)",),
          "Model", synth_below_real),
    Claim("hybrid_gain_segmentation",
          "Hybrid training raises Dice and IoU by 0.5–1 % over real-only and lowers ASD and HD, for every segmenter",
          (("Sec. 4.3.2", "This resulted in Dice and IoU improvements of 0.5%–1% and substantial reductions in ASD and "
                          "HD (5–10 units)."),),
          ("\"0.5%–1%\" read as percentage points (Dice and IoU are in %): for every segmenter, hybrid − real is in "
           "[0.5, 1] points for Dice and IoU, and hybrid − real < 0 for ASD and HD (Table 2). The size of the ASD/HD "
           "reduction (\"5–10 units\") is not tested: ASD and HD are in pixels of the run's image size, which need "
           "not be the paper's",
           "weaker: for every segmenter, hybrid − real > 0 for Dice and IoU and < 0 for ASD and HD (Table 2)"),
          "Model", hybrid_gain_segmentation),
    Claim("deeplab_beats_unet",
          "DeepLabV3+ beats U-Net on every metric",
          (("Sec. 4.3.2", "DeepLabV3+ consistently outperformed U-Net across all metrics, particularly with the hybrid "
                          "dataset, achieving a Dice coefficient of 81.951% and HD of 89.778, highlighting its "
                          "efficacy in complex medical image segmentation."),),
          ("for every training set (real, synth, hybrid), DeepLabV3+ − U-Net > 0 for Dice and IoU and < 0 for ASD "
           "and HD (Table 2)",),
          "Training set", deeplab_beats_unet),
    Claim("ham_hybrid_gain",
          "On HAM10000, hybrid training improves sensitivity and F1 over real-only, for every classifier",
          (("Sec. 4.3.3", "The hybrid dataset generally enhanced sensitivity and F1-scores in classification tasks, "
                          "improving positive class detection and overall model performance."),),
          ("\"generally\" read as for every classifier: hybrid − real > 0 for HAM10000 sensitivity and F1 (Table 3, "
           "the ham_* metrics)",),
          "Model", ham_hybrid_gain),
    Claim("fid_synth_above_real",
          "The synthetic set's FID is above the real test split's",
          (("Sec. 4.2", "While our synthetic dataset’s FID exceeds that of the real dataset, it remains viable for "
                        "downstream tasks."),),
          ("FID(real train vs synth train) − FID(real train vs real test) > 0 (Table 1); not measured when the two "
           "evaluate runs used different FID feature extractors",),
          "Table", fid_synth_above_real),
)


# ------------------------------------------------------------------------------------------------
# Evaluation and rendering
# ------------------------------------------------------------------------------------------------

@dataclass
class ClaimResult:
    claim: Claim
    checks: list[Check]

    def verdict(self, reading: int = 0, paper: bool = False) -> str:
        return combine([c.result(reading, paper) for c in self.checks])

    @property
    def partly_measured(self) -> bool:
        n = sum(c.ours is None for c in self.checks)
        return 0 < n < len(self.checks)

    def verdict_text(self, reading: int = 0) -> str:
        v = self.verdict(reading)
        return v + (" (partly measured)" if self.partly_measured and v != NOT_MEASURED else "")

    def not_measured(self) -> list[str]:
        """One line per part with checks not measured: which quantities, and why."""
        by_part: dict[str, dict[str, list[str]]] = {}
        for c in self.checks:
            if c.ours is None:
                by_part.setdefault(c.part, {}).setdefault(c.reason, []).append(c.quantity)
        lines = []
        for part, reasons in by_part.items():
            n_part = sum(c.part == part for c in self.checks)
            for reason, quantities in reasons.items():
                what = "all checks" if len(quantities) == n_part else ", ".join(quantities)
                lines.append(f"{part} ({what}): {reason}")
        return lines


def evaluate(tables: list[Table], evidence: Evidence | None = None) -> list[ClaimResult]:
    """Every claim's checks on the tables' cells, each with its paired interval from the runs' artifacts."""
    cells, evidence = Cells(tables), evidence or Evidence()
    results = [ClaimResult(claim, claim.checks(cells)) for claim in CLAIMS]
    for check in (c for r in results for c in r.checks):
        if check.ours is None:
            continue
        check.ci = evidence.paired(check.a, check.b)
        check.n_units = evidence.n_units(check.a)
    return results


def counts(results: list[ClaimResult]) -> dict[str, int]:
    """{"claims/holds": n, "claims/does_not_hold": n, "claims/inconclusive": n, "claims/not_measured": n}
    over the claims' verdicts."""
    return {METRIC_METRICS[v]: sum(r.verdict() == v for r in results) for v in VERDICTS}


def _pair(a: float | None, b: float | None, d: float | None) -> str:
    if a is None or b is None or d is None:
        return "—"
    return f"{fmt(a)} − {fmt(b)} = {fmt(d, signed=True)}"


def _ours(c: Check) -> str:
    """a − b = d and its paired interval, or "no interval (reason)"."""
    text = _pair(c.a.ours, c.b.ours, c.ours)
    if c.ours is None:
        return text
    return text + " " + (fmt_interval(c.ci, _unit_of(c)) if c.ci.ok else f"(no interval: {c.ci.reason})")


def _cell_ref(c: Cell) -> dict:
    return {"table": c.table, "row": c.row, "metric": c.metric, "run_metric": c.run_metric, "run_id": c.run_id,
            "ours": c.ours, "paper": c.paper}


def claim_record(r: ClaimResult) -> dict:
    return {
        "key": r.claim.key, "title": r.claim.title,
        "quotes": [{"section": s, "text": q} for s, q in r.claim.quotes],
        "verdict": r.verdict(), "partly_measured": r.partly_measured, "verdict_text": r.verdict_text(),
        "paper_verdict": r.verdict(paper=True),
        "readings": [{"rule": rule, "verdict": r.verdict(i), "paper_verdict": r.verdict(i, paper=True)}
                     for i, rule in enumerate(r.claim.readings)],
        "not_measured": r.not_measured(),
        "checks": [{"part": c.part, "quantity": c.quantity, "a": _cell_ref(c.a), "b": _cell_ref(c.b),
                    "ours": c.ours, "ci_low": c.ci.low, "ci_high": c.ci.high,
                    "ci_reason": c.ci.reason if c.ours is not None else "", "half_width": c.ci.half_width,
                    "n_units": c.n_units, "effect": c.effect, "needed_units": c.needed,
                    "paper": c.paper, "reason": c.reason if c.ours is None else "",
                    "results": [{"test": t.text, "ours": c.result(i), "paper": c.result(i, paper=True)}
                                for i, t in enumerate(c.tests)]}
                   for c in r.checks],
    }


RULE_TEXT = (
    "Each quantitative claim of the paper, quoted, is checked on the cells of the tables above (the same chosen "
    "runs). A check is one difference a − b of two cells with a test, and carries the 95 % interval of the "
    "difference, paired: the same resampled test images for both runs, so the noise they share cancels, each "
    "run's models resampled on their own. A test **passes** (✓) when the whole interval satisfies it, **fails** "
    "(✗) when the whole interval violates it, and is **inconclusive** (?) otherwise, also when the difference "
    "has no interval; — not measured. A reading **holds** when every measured check passes, **does not hold** "
    "when one fails, is **inconclusive** when none fails and one or more are inconclusive, and **not "
    "measured** when no check could be measured. The first reading decides the verdict; \"partly measured\" "
    "means some checks lacked a value (listed with why). The paper reports no intervals: its own numbers get "
    "the same tests as point comparisons (✓/✗ on the point difference), shown after ours (ours · paper).")

CAN_TELL = (
    "**What this experiment can and cannot tell.** An interval says how far another draw of test images and of "
    "training randomness (fold models, seeds) could move a difference; it does not cover what both runs share "
    "(this one test split's population, one generated set, one base model), so a passing check says the "
    "difference is real for this data and protocol, not that it transfers. A check can only be decided when "
    "its interval is narrower than the effect it tests: \"needed\" is the number of test units (lesion "
    "groups) at which the half-width would equal the claimed difference (the paper's own, else ours), from "
    "the observed variance (size ∝ 1/half-width²); a test split below it leaves the check inconclusive unless "
    "the true effect is larger than claimed. Inconclusive is a statement about the evidence, not about the "
    "claim.")


def _unit_of(c: Check) -> str:
    return "%" if c.a.unit in ("%", "px") else ""


def _half_width(c: Check) -> str:
    return "—" if not c.ci.ok else f"{c.ci.half_width:.{1 if _unit_of(c) else 3}f}"


def _needed(c: Check) -> str:
    n = c.needed
    return "—" if n is None else f"{n} (of {c.n_units})"


def precision_line(r: ClaimResult) -> str:
    """The half-widths of a claim's intervals and the test-split size that would decide them."""
    with_ci = [c for c in r.checks if c.ours is not None and c.ci.ok]
    if not with_ci:
        return "- **Precision:** no check has an interval."
    hw = sorted(c.ci.half_width for c in with_ci)
    needed = sorted(c.needed for c in with_ci if c.needed is not None)
    units = sorted({c.n_units for c in with_ci if c.n_units is not None})
    text = (f"- **Precision:** half-widths of the {len(with_ci)} intervals {hw[0]:.2f}–{hw[-1]:.2f}, on "
            f"{'/'.join(map(str, units)) or '?'} test units")
    if needed:
        text += (f"; deciding the claimed differences needs about {needed[0]}–{needed[-1]} test units "
                 f"(median {needed[len(needed) // 2]})")
    return text + "."


def claims_markdown(results: list[ClaimResult], heading_level: int = 2, forest: str = "") -> str:
    """The Claims section; `forest` names the forest figure's file beside the report ("" when none)."""
    n = counts(results)
    out = [f"{'#' * heading_level} Claims", "", RULE_TEXT, "", CAN_TELL, "",
           f"Verdicts of the {len(results)} claims: " + " · ".join(f"{v} {n[METRIC_METRICS[v]]}" for v in VERDICTS)
           + ".", ""]
    if forest:
        out += [f"![Claims: each check's difference with its paired 95 % interval]({forest})", ""]
    h = "#" * (heading_level + 1)
    for k, r in enumerate(results, 1):
        claim = r.claim
        out += [f"{h} Claim {k}: {claim.title} — **{r.verdict_text()}**", ""]
        for i, (section, quote) in enumerate(claim.quotes):
            out += ([">"] if i else []) + [f"> “{quote}” — *{section}*"]
        out.append("")
        for i, rule in enumerate(claim.readings):
            name = "Reading" if i == 0 else "Also"
            out.append(f"- **{name}:** {rule} — ours: **{r.verdict_text(i)}**; "
                       f"the paper's own numbers (point comparison): {r.verdict(i, paper=True)}.")
        for line in r.not_measured():
            out.append(f"- **Not measured:** {line}")
        out.append(precision_line(r))
        out.append("")
        rule_heads = ["Test"] if len(claim.readings) == 1 else ["Test", "Test (also)"]
        out.append(f"| {claim.part_title} | Quantity | Ours [95 % interval] | ± | Needed | Paper | "
                   + " | ".join(rule_heads) + " |")
        out.append("|:--|:--|--:|--:|--:|--:|" + ":--|" * len(rule_heads))
        for c in r.checks:
            tests = [f"{t.text}: {MARK[c.result(i)]} · {MARK[c.result(i, paper=True)]}" for i, t in enumerate(c.tests)]
            out.append(f"| {c.part} | {c.quantity} | {_ours(c)} | {_half_width(c)} | {_needed(c)} | "
                       f"{_pair(c.a.paper, c.b.paper, c.paper)} | " + " | ".join(tests) + " |")
        out.append("")
    return "\n".join(out)


__all__ = ["CAN_TELL", "CLAIMS", "FAILS", "HOLDS", "INCONCLUSIVE", "METRIC_METRICS", "NOT_MEASURED", "Check", "Claim",
           "ClaimResult", "Cells", "claim_record", "claims_markdown", "counts", "evaluate", "precision_line"]
