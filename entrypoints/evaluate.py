"""`evaluate` entry point: FID, LPIPS, MS-SSIM of the real train split vs the real test split or a
generated set (paper Table 1), tracked in MLflow. See harness/quality.py for the exact definitions."""
import click

from entrypoints.common import config_options, experiment_option, profile_option, user_errors
from harness.config import EvaluateConfig, with_profile
from harness.schema import (METRIC_CAS, METRIC_FID, METRIC_LPIPS, METRIC_MASK_CONSISTENCY, METRIC_MS_SSIM, STAGE_EVALUATE,
                            TAG_COMPARABLE, TAG_COMPARISON, TAG_EXTRACTOR, TAG_LPIPS_NET)


@click.command("evaluate")
@profile_option
@config_options(EvaluateConfig)
@experiment_option
@user_errors
def evaluate(profile, experiment, **given):
    import mlflow

    from harness.quality import evaluate as run_evaluate
    cfg = with_profile(EvaluateConfig, STAGE_EVALUATE, profile, given)
    run_id = run_evaluate(cfg, experiment=experiment)
    run = mlflow.get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    click.echo(f"evaluate run {run_id} ({tags[TAG_COMPARISON]}, {int(m['n_real'])} real vs "
               f"{int(m['n_fake'])} images, {int(m['n_pairs'])} LPIPS/MS-SSIM pairs)")
    for name in (METRIC_FID, METRIC_LPIPS, METRIC_MS_SSIM, METRIC_CAS, METRIC_MASK_CONSISTENCY):
        if name in m:                 # CAS / consistency only with a judges run (else the line above said why)
            click.echo(f"{name:8s} {m[name]:.4f}")
    status = ("standard" if tags[TAG_COMPARABLE] == "true"
              else "FALLBACK, NOT comparable with published numbers")
    click.echo(f"feature extractors: {tags[TAG_EXTRACTOR]}, {tags[TAG_LPIPS_NET]} ({status})")


if __name__ == "__main__":
    evaluate()
