"""`finetune` entry point: LoRA fine-tune of the 4-channel SD2 model, tracked in MLflow."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import FinetuneConfig, with_profile
from harness.schema import STAGE_FINETUNE


@click.command("finetune")
@profile_option
@config_options(FinetuneConfig)
@experiment_option
@user_errors
def finetune(profile, experiment, **given):
    from harness.dualgen.train import finetune as run_finetune, output_dir_for
    cfg = with_profile(FinetuneConfig, STAGE_FINETUNE, profile, given)
    run_id = run_finetune(cfg, experiment=experiment)
    if not run_id:          # a data-parallel process other than rank 0: rank 0 reports
        return
    model_dir = output_dir_for(cfg).resolve() / "model"         # without --output-dir: outputs/finetune-<hash>
    click.echo(f"finetune run {run_id}: model at runs:/{run_id}/model and {model_dir}")


if __name__ == "__main__":
    finetune()
