"""`explain` entry point: GradCAM, Saliency and Occlusion heatmaps of the real-only and hybrid
classifiers for chosen real test images (paper Figure 3)."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import ExplainConfig, with_profile
from harness.schema import STAGE_EXPLAIN


@click.command("explain")
@profile_option
@config_options(ExplainConfig)
@experiment_option
@user_errors
def explain(profile, experiment, **given):
    from harness.downstream.explain import explain as run_explain
    cfg = with_profile(ExplainConfig, STAGE_EXPLAIN, profile, given)
    run_id = run_explain(cfg, experiment=experiment)
    click.echo(f"explain run {run_id}: Figure 3 heatmaps at runs:/{run_id}/heatmaps/figure3.png")


if __name__ == "__main__":
    explain()
