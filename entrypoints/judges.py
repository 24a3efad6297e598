"""`judges` entry point: the CAS classifier and the mask-consistency segmenter, trained on the real train
split as one MLflow run that evaluate and generate --min-consistency load (harness/judges.py)."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import JudgesConfig, with_profile
from harness.schema import STAGE_JUDGES


@click.command("judges")
@profile_option
@config_options(JudgesConfig)
@experiment_option
@user_errors
def judges(profile, experiment, **given):
    from harness.judges import train_judges
    cfg = with_profile(JudgesConfig, STAGE_JUDGES, profile, given)
    run_id = train_judges(cfg, experiment=experiment)
    click.echo(f"judges run {run_id}: {cfg.cas_model} (CAS) and {cfg.consistency_model} (mask consistency), "
               f"{cfg.judges_profile} settings; evaluate finds them by the dataset digest, or give "
               f"--judges runs:/{run_id}")


if __name__ == "__main__":
    judges()
