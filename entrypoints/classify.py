"""`classify` entry point: one classifier x one training set (real / synth / hybrid), k-fold CV."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import ClassifyConfig, with_profile
from harness.schema import STAGE_CLASSIFY


@click.command("classify")
@profile_option
@config_options(ClassifyConfig)
@experiment_option
@user_errors
def classify(profile, experiment, **given):
    from harness.downstream.classify import classify as run_classify
    cfg = with_profile(ClassifyConfig, STAGE_CLASSIFY, profile, given)
    run_id = run_classify(cfg, experiment=experiment)
    click.echo(f"classify run {run_id}: {cfg.model} on {cfg.train_set}; best fold's model at runs:/{run_id}/model")


if __name__ == "__main__":
    classify()
