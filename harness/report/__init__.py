"""The `report` stage: the paper's Tables 1-3 and Figures 2-3 rebuilt from MLflow runs, the paper's
numbers beside ours, and the paper's claims checked on them (see build.py for the files, runs.py for the
choice rule, tables.py for the cells, claims.py for the claims, paths.py for how paths are shown)."""
from harness.report.build import REPORT_FILES, ReportError, report
from harness.report.runs import CHOICE_RULE
from harness.report.tables import paper_values

__all__ = ["CHOICE_RULE", "REPORT_FILES", "ReportError", "paper_values", "report"]
