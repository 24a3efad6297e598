"""`skindualgen <command>`: the MLproject entry points as one console script. The config-driven stages'
commands come from the table in harness/stages.py (entrypoints/stages.py); the rest are written out."""
import click

from entrypoints.build_tiny_base import build_tiny_base
from entrypoints.common import accept_underscores
from entrypoints.demo_data import demo_data
from entrypoints.register import registry_history
from entrypoints.stages import COMMANDS as STAGE_COMMANDS
from harness.stages import STAGES, load


@click.group()
def cli():
    """SkinDualGen harness: every paper step as a command, tracked in MLflow."""


COMMANDS = tuple(STAGE_COMMANDS[name] if name in STAGE_COMMANDS else load(stage.command)
                 for name, stage in STAGES.items()) + (demo_data, build_tiny_base, registry_history)
for command in COMMANDS:
    cli.add_command(accept_underscores(command))

if __name__ == "__main__":
    cli()
