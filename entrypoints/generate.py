"""`generate` entry point: image+mask pairs per class from a run, a registry version/alias or a folder."""
import click

from entrypoints.common import config_options, experiment_option, user_errors
from harness.config import GenerateConfig, with_profile
from harness.schema import STAGE_GENERATE


@click.command("generate")
@click.option("--profile", type=click.Choice(["paper", "demo"]), default="paper", show_default=True)
@config_options(GenerateConfig)
@experiment_option
@user_errors
def generate(profile, experiment, **given):
    from harness.dualgen.generate import generate as run_generate
    cfg = with_profile(GenerateConfig, STAGE_GENERATE, profile, given)
    run_id, out = run_generate(cfg, experiment=experiment)
    click.echo(f"generate run {run_id}: pairs in {out}")


if __name__ == "__main__":
    generate()
