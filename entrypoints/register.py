"""`register` entry point: register the lowest-FID finetune run's model; the alias moves to it only on
evidence (its FID interval below the holder's, by default), and every decision is recorded."""
import click

from entrypoints.common import user_errors
from entrypoints.options import config_options, experiment_option
from harness.config import RegisterConfig


@click.command("register")
@config_options(RegisterConfig)
@experiment_option
@user_errors
def register(experiment, **given):
    from harness.registry import register_best
    cfg = RegisterConfig(**{k: v for k, v in given.items() if v is not None})
    version, ft = register_best(cfg, experiment)
    click.echo(f"models:/{cfg.name}/{version} (finetune run {ft}) registered; see `skindualgen registry-history "
               f"--name {cfg.name}` for who holds @{cfg.alias} and why")


@click.command("registry-history")
@click.option("--name", default=RegisterConfig.name, show_default=True, help="registered model name")
@user_errors
def registry_history(name):
    """Every alias decision of a registered model: when, which version, moved or kept, and why."""
    from harness.registry import history, history_table
    click.echo(history_table(history(name)))


if __name__ == "__main__":
    register()
