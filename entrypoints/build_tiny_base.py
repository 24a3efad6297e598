"""`build-tiny-base`: pre-train the tiny SD2-shaped base on the demo data (seeded, offline)."""
import click

from entrypoints.common import user_errors


@click.command("build-tiny-base")
@click.option("--output-dir", default=None, help="default: the shipped harness/assets/tiny-sd2")
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def build_tiny_base(output_dir, seed):
    from harness.dualgen.base import TINY_BASE_DIR
    from harness.dualgen.pretrain_tiny import build_tiny_base as build
    path = build(output_dir or TINY_BASE_DIR, seed=seed)
    click.echo(f"tiny base written to {path}")


if __name__ == "__main__":
    build_tiny_base()
