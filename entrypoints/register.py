"""`register` entry point: register the lowest-FID finetune run's model and point an alias at it."""
import click

from entrypoints.common import experiment_option, user_errors
from harness.config import RegisterConfig

D = RegisterConfig()


@click.command("register")
@click.option("--name", default=D.name, show_default=True, help="registered model name")
@click.option("--alias", default=D.alias, show_default=True)
@click.option("--comparison", default=D.comparison, show_default=True)
@experiment_option
@user_errors
def register(name, alias, comparison, experiment):
    from harness.registry import register_best
    version, ft = register_best(RegisterConfig(name=name, alias=alias, comparison=comparison), experiment)
    click.echo(f"models:/{name}/{version} (finetune run {ft}) is now models:/{name}@{alias}")


if __name__ == "__main__":
    register()
