"""`main` entry point: the paper pipeline as child runs of one parent run, reusing finished steps."""
import click

from entrypoints.common import user_errors
from entrypoints.options import experiment_option, profile_option
from harness.pipeline import PipelineConfig

D = PipelineConfig()


@click.command("main")
@profile_option
@click.option("--data-dir", default=D.data_dir, help="dataset folder or manifest ('' = embedded demo)")
@click.option("--base-model", default=D.base_model, help="'' = the profile's base model")
@click.option("--env-manager", default=D.env_manager, show_default=True,
              help="env manager for the child `mlflow run`s (local, virtualenv, conda, uv)")
@click.option("--launcher", type=click.Choice(["auto", "fork", "mlflow"]), default=D.launcher, show_default=True,
              help="how a child run starts: fork (of a server with the stages imported), mlflow (`mlflow run`); "
                   "auto = fork for --env-manager local")
@click.option("--eval-data", default=D.eval_data,
              help="HAM10000 folder for Table 3 ('' = demo: the shifted HAM-layout demo set; paper: none)")
@click.option("--max-parallel", type=int, default=D.max_parallel, show_default=True,
              help="independent child runs at a time (each gets a GPU, or cores / N threads)")
@click.option("--ui-url", default=D.ui_url, help="MLflow UI URL for the report's run links")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--seeds", type=click.IntRange(min=0), default=D.seeds, show_default=True,
              help="classify/segment: models trained per run with seeds seed, seed+1000, ... (0 = the "
                   "profile's: demo 1, paper 3)")
@click.option("--models", default=D.models,
              help="comma list of the classify/segment models to train ('' = all six of the paper's)")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.OPTION=VALUE",
              help="an option of every step of STAGE (finetune, generate, evaluate, classify, segment, "
                   "explain) beyond the profile, e.g. --set classify.epochs=5; repeatable")
@experiment_option
@user_errors
def main(profile, data_dir, base_model, env_manager, launcher, eval_data, max_parallel, ui_url, seed, seeds, models,
         overrides, experiment):
    from harness.pipeline import run_pipeline
    cfg = PipelineConfig(profile=profile, data_dir=data_dir, base_model=base_model, env_manager=env_manager,
                         launcher=launcher,
                         eval_data=eval_data, max_parallel=max_parallel, ui_url=ui_url, seed=seed, seeds=seeds, models=models,
                         overrides=tuple(overrides))
    run_pipeline(cfg, experiment=experiment, log=click.echo)


if __name__ == "__main__":
    main()
