"""`segment` entry point: one segmentation model x one training set (real / synth / hybrid)."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import SegmentConfig, with_profile
from harness.schema import STAGE_SEGMENT


@click.command("segment")
@profile_option
@config_options(SegmentConfig)
@experiment_option
@user_errors
def segment(profile, experiment, **given):
    from harness.downstream.segment import segment as run_segment
    cfg = with_profile(SegmentConfig, STAGE_SEGMENT, profile, given)
    run_id = run_segment(cfg, experiment=experiment)
    click.echo(f"segment run {run_id}: {cfg.model} on {cfg.train_set}; model at runs:/{run_id}/model")


if __name__ == "__main__":
    segment()
