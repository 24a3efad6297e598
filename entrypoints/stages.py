"""The click command of every config-driven stage, built from its entry in harness/stages.py: its
config's fields as options, --profile and --experiment, the harness function run, one line printed."""
import click

from entrypoints.common import user_errors
from entrypoints.options import config_options, experiment_option, profile_option
from harness.config import with_profile
from harness.stages import STAGES, load


def stage_command(name: str) -> click.Command:
    stage = STAGES[name]

    @click.command(name, help=stage.description)
    @profile_option
    @config_options(stage.config)
    @experiment_option
    @user_errors
    def command(profile, experiment, **given):
        model_uri = given.get("model_uri")
        made_with = load(stage.model_profile)(model_uri) if stage.model_profile and profile == "auto" and model_uri \
            else ""
        cfg = with_profile(stage.config, name, profile, given, made_with)
        result = load(stage.run)(cfg, experiment=experiment)
        line = stage.summary(result, cfg) if stage.summary else f"{name} run {result}"
        if line:
            click.echo(line)
    return command


COMMANDS = {name: stage_command(name) for name, stage in STAGES.items() if stage.run}
