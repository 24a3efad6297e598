"""`skindualgen <command>`: the MLproject entry points as one console script."""
import click

from entrypoints.demo_data import demo_data
from entrypoints.prepare import prepare


@click.group()
def cli():
    """SkinDualGen harness: every paper step as a command, tracked in MLflow."""


for command in (prepare, demo_data):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
