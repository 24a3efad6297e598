"""`demo-data`: write the embedded demo dataset (deterministic, offline) in the ISIC-GPT layout."""
import click

from entrypoints.common import user_errors
from harness.config import DemoDataConfig

D = DemoDataConfig()


@click.command("demo-data")
@click.option("--output-dir", default=D.output_dir, show_default=True)
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--per-class", type=int, default=D.per_class, show_default=True,
              help="images per class (0 = HAM10000-like balance, ~140 images)")
@user_errors
def demo_data(output_dir, seed, per_class):
    from harness.data.demo import make_demo_dataset
    path = make_demo_dataset(output_dir, seed=seed, per_class=per_class, progress=True)
    click.echo(f"demo dataset: {path}")


if __name__ == "__main__":
    demo_data()
