"""`skindualgen <command>`: the MLproject entry points as one console script. The config-driven stages'
commands come from the table in harness/stages.py (entrypoints/stages.py); the rest are written out."""
import click

from entrypoints.build_tiny_base import build_tiny_base
from entrypoints.demo_data import demo_data
from entrypoints.describe import describe
from entrypoints.main import main
from entrypoints.options import accept_underscores
from entrypoints.prepare import prepare
from entrypoints.register import register, registry_history
from entrypoints.report import report
from entrypoints.stages import COMMANDS as STAGE_COMMANDS
from harness.schema import STAGE_DESCRIBE, STAGE_MAIN, STAGE_PREPARE, STAGE_REGISTER, STAGE_REPORT
from harness.stages import STAGES

# the stages of the table whose options are their own (not their config's fields alone)
HAND_WRITTEN = {STAGE_MAIN: main, STAGE_PREPARE: prepare, STAGE_DESCRIBE: describe, STAGE_REGISTER: register,
                STAGE_REPORT: report}


@click.group()
def cli():
    """SkinDualGen harness: every paper step as a command, tracked in MLflow."""


COMMANDS = tuple({**STAGE_COMMANDS, **HAND_WRITTEN}[name] for name in STAGES) + (demo_data, build_tiny_base,
                                                                               registry_history)
for command in COMMANDS:
    cli.add_command(accept_underscores(command))

if __name__ == "__main__":
    cli()
