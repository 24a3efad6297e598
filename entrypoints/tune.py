"""`tune` entry point: Optuna search of num_inference_steps and guidance_scale by FID."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import TuneConfig, with_profile
from harness.schema import STAGE_TUNE


@click.command("tune")
@profile_option
@config_options(TuneConfig)
@experiment_option
@user_errors
def tune(profile, experiment, **given):
    from harness.tune import tune as run_tune
    cfg = with_profile(TuneConfig, STAGE_TUNE, profile, given)
    run_id = run_tune(cfg, experiment=experiment)
    click.echo(f"tune run {run_id}: generate --settings-from-run {run_id} uses its best settings")


if __name__ == "__main__":
    tune()
