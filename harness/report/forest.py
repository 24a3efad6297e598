"""The claims' forest figure: one row per check (its difference a − b and paired 95 % interval), the
region its test calls "passes" shaded, one panel per claim (each claim's checks share a unit).

A check with a value but no interval is drawn as a hollow point labelled "no interval"; a check not
measured is left out (the claims tables list it with why). Rows are in the claims tables' order.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.report.claims import ClaimResult, Test  # noqa: E402

ROW_H = 0.28           # inches per check row
PASS_COLOUR = "#cfe8cf"


def _passing_span(test: Test, lo: float, hi: float) -> tuple[float, float] | None:
    """The part of [lo, hi] where the test passes (the passing set of > 0, < 0, in [a, b] is one interval)."""
    xs = [lo + (hi - lo) * i / 400 for i in range(401)]
    passing = [x for x in xs if test.passes(x)]
    return (min(passing), max(passing)) if passing else None


def _limits(checks) -> tuple[float, float]:
    values = [v for c in checks for v in (c.ours, c.ci.low, c.ci.high, c.paper, 0.0) if v is not None]
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def forest_figure(results: list[ClaimResult]):
    """A matplotlib Figure, or None when no check of any claim has a value."""
    panels = [(r, [c for c in r.checks if c.ours is not None]) for r in results]
    panels = [(r, checks) for r, checks in panels if checks]
    if not panels:
        return None
    heights = [max(len(checks), 1) * ROW_H + 0.6 for _, checks in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights) + 0.4),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (r, checks) in zip(axes[:, 0], panels):
        lo, hi = _limits(checks)
        for y, c in enumerate(checks):
            span = _passing_span(c.tests[0], lo, hi)
            if span:
                ax.fill_betweenx([y - 0.45, y + 0.45], span[0], span[1], color=PASS_COLOUR, lw=0)
            if c.ci.ok:
                ax.plot([c.ci.low, c.ci.high], [y, y], color="black", lw=1.2)
                ax.plot([c.ours], [y], "o", color="black", ms=4)
            else:
                ax.plot([c.ours], [y], "o", mfc="white", mec="black", ms=4)
                ax.annotate("no interval", (c.ours, y), xytext=(4, 2), textcoords="offset points", fontsize=6)
            if c.paper is not None and math.isfinite(c.paper):
                ax.plot([c.paper], [y], "x", color="#c0392b", ms=4)
        ax.axvline(0, color="grey", lw=0.6, ls=":")
        ax.set_xlim(lo, hi)
        ax.set_ylim(len(checks) - 0.5, -0.5)
        ax.set_yticks(range(len(checks)), [f"{c.part}: {c.quantity}" for c in checks], fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{r.claim.title} — {r.verdict_text()}", fontsize=7, loc="left")
    fig.suptitle("Claims: difference a − b with its paired 95 % interval (●), the paper's (×); shaded: the "
                 "first reading's test passes", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (sum(heights) + 0.4)))      # room for the title above the panels
    return fig


__all__ = ["forest_figure"]
