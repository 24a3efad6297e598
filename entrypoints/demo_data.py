"""`demo-data`: write an embedded demo dataset (deterministic, offline): the training set in the
ISIC-GPT layout, or the domain-shifted external set in the HAM10000 layout."""
import click

from entrypoints.common import user_errors
from harness.config import DemoDataConfig

D = DemoDataConfig()


@click.command("demo-data")
@click.option("--layout", type=click.Choice(["isic-gpt", "ham10000"]), default=D.layout, show_default=True,
              help="isic-gpt: the training demo set; ham10000: the shifted external set (Table 3)")
@click.option("--output-dir", default=None,
              help=f"default: {D.output_dir} (isic-gpt), {D.ham_output_dir} (ham10000)")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--per-class", type=int, default=D.per_class, show_default=True,
              help="images per class (0 = HAM10000-like balance, ~140 images; ~70 for ham10000)")
@click.option("--extra-test/--no-extra-test", default=D.extra_test, show_default=True,
              help="isic-gpt with --per-class 0: ~127 more test images and a fixed split (the embedded demo)")
@user_errors
def demo_data(layout, output_dir, seed, per_class, extra_test):
    from harness.data.demo import make_demo_dataset
    if output_dir is None:
        output_dir = D.ham_output_dir if layout == "ham10000" else D.output_dir
    extra_test = extra_test and layout == "isic-gpt" and per_class == 0
    path = make_demo_dataset(output_dir, seed=seed, per_class=per_class, progress=True, layout=layout,
                             extra_test=extra_test)
    click.echo(f"demo dataset ({layout} layout): {path}")


if __name__ == "__main__":
    demo_data()
