"""`skindualgen <command>`: the MLproject entry points as one console script."""
import click

from entrypoints.build_tiny_base import build_tiny_base
from entrypoints.classify import classify
from entrypoints.common import accept_underscores
from entrypoints.demo_data import demo_data
from entrypoints.describe import describe
from entrypoints.evaluate import evaluate
from entrypoints.explain import explain
from entrypoints.finetune import finetune
from entrypoints.generate import generate
from entrypoints.judges import judges
from entrypoints.main import main
from entrypoints.prepare import prepare
from entrypoints.register import register, registry_history
from entrypoints.report import report
from entrypoints.segment import segment
from entrypoints.tune import tune


@click.group()
def cli():
    """SkinDualGen harness: every paper step as a command, tracked in MLflow."""


COMMANDS = (main, prepare, describe, demo_data, build_tiny_base, finetune, generate, judges, evaluate, register, tune,
            classify, segment, explain, report, registry_history)
for command in COMMANDS:
    cli.add_command(accept_underscores(command))

if __name__ == "__main__":
    cli()
