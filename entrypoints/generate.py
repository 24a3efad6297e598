"""`generate` entry point: image+mask pairs per class from a run, a registry version/alias or a folder."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import GenerateConfig, with_profile
from harness.schema import STAGE_GENERATE


@click.command("generate")
@profile_option
@config_options(GenerateConfig)
@experiment_option
@user_errors
def generate(profile, experiment, **given):
    from harness.dualgen.generate import generate as run_generate
    from harness.dualgen.generate import model_profile
    made_with = model_profile(given["model_uri"]) if profile == "auto" and given.get("model_uri") else ""
    cfg = with_profile(GenerateConfig, STAGE_GENERATE, profile, given, made_with)
    run_id, out = run_generate(cfg, experiment=experiment)
    click.echo(f"generate run {run_id}: pairs in {out}")


if __name__ == "__main__":
    generate()
