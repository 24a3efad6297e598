"""`describe` entry point: fill missing per-image descriptions from an LLM endpoint or a template.

Every option takes a value ("" = the default), so MLproject can pass each parameter as it is:
`--overwrite true`. The API key is read from the environment variable named by --api-key-env only.
Exit status: 0 when every image asked for got its description, 1 when some could not be described
(they are listed in the run's describe_failures.json; with --overwrite they keep their old text; a
re-run asks only for those), 2 on bad input.
"""
import click

from entrypoints.common import user_errors
from entrypoints.options import config_options, experiment_option
from harness.config import DescribeConfig


@click.command("describe")
@config_options(DescribeConfig)
@experiment_option
@user_errors
def describe(experiment, **given):
    """Describe every image lacking a description (all with --overwrite true), tracked in MLflow."""
    import mlflow

    from harness.describe import describe as run_describe
    cfg = DescribeConfig(**{k: v for k, v in given.items() if v is not None})
    run_id = run_describe(cfg, experiment=experiment)
    m = mlflow.get_run(run_id).data.metrics
    click.echo(f"describe run {run_id}: {int(m.get('described/llm', 0))} from the LLM, "
               f"{int(m.get('described/cache', 0))} from the cache, {int(m.get('described/template', 0))} "
               f"from the template; {int(m.get('failures', 0))} failed; tokens "
               f"{int(m.get('prompt_tokens', 0))} prompt / {int(m.get('completion_tokens', 0))} completion")
    if m.get("missing", 0):
        click.echo(f"{int(m['missing'])} image(s) still have no description (see describe_failures.json "
                   "in the run); run again to retry them", err=True)
        raise SystemExit(1)
    if m.get("failures", 0):          # --overwrite: they keep their old description, but were not rewritten
        click.echo(f"{int(m['failures'])} image(s) could not be described anew and keep their old description "
                   "(see describe_failures.json in the run); run again to retry them", err=True)
        raise SystemExit(1)


if __name__ == "__main__":
    describe()
