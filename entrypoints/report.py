"""`report` entry point: Tables 1-3 and Figures 2-3 of the paper rebuilt from the MLflow runs of one
experiment, the paper's numbers beside ours; written to <output_dir>/<experiment>/ and logged as a
`report` run. Reads runs only: it never trains. See harness/report/ for the rules."""
import click

from entrypoints.common import user_errors
from entrypoints.options import config_options, experiment_option
from harness.config import ReportConfig
from harness.schema import TAG_REPORT_DIR


@click.command("report")
@config_options(ReportConfig)
@experiment_option
@user_errors
def report(experiment, **given):
    import json
    from pathlib import Path

    import mlflow

    from harness.report import report as run_report
    cfg = ReportConfig(**{k: v for k, v in given.items() if v is not None})
    run_id = run_report(cfg, experiment=experiment)
    folder = Path(mlflow.get_run(run_id).data.tags[TAG_REPORT_DIR])
    header = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    click.echo(f"report run {run_id}: {folder}/report.md (tables as .md/.tex/.csv, figures as .png)")
    click.echo(f"cells: {header['cells'] - header['cells_missing']} of {header['cells']} filled"
               + (f"; {header['cells_missing']} missing (reasons in the report header)" if header["cells_missing"]
                  else ""))
    for key in ("figure2", "figure3"):
        if header[key]["reason"]:
            click.echo(f"{key}: missing ({header[key]['reason']})")


if __name__ == "__main__":
    report()
