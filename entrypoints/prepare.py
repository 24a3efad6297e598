"""`prepare` entry point: validate a dataset, split it, write its manifest, log it to MLflow."""
import click

from entrypoints.common import user_errors
from entrypoints.options import experiment_option
from harness.config import LAYOUTS, PrepareConfig

D = PrepareConfig()


@click.command("prepare")
@click.option("--data-dir", default=D.data_dir, help="dataset folder or manifest CSV ('' = embedded demo)")
@click.option("--layout", type=click.Choice(LAYOUTS), default=D.layout, show_default=True)
@click.option("--test-fraction", type=float, default=D.test_fraction, show_default=True)
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--output-dir", default=D.output_dir, show_default=True)
@experiment_option
@user_errors
def prepare(data_dir, layout, test_fraction, seed, output_dir, experiment):
    from harness.data.prepare import prepare as run_prepare
    cfg = PrepareConfig(data_dir=data_dir, layout=layout, test_fraction=test_fraction, seed=seed,
                        output_dir=output_dir)
    prepared, manifest = run_prepare(cfg, experiment=experiment)
    ds = prepared.dataset
    click.echo(f"prepared {len(ds)} samples ({len(ds.split('train'))} train / {len(ds.split('test'))} test), "
               f"{len(ds.classes)} classes, digest {prepared.digest}")
    click.echo(f"manifest: {manifest}")


if __name__ == "__main__":
    prepare()
