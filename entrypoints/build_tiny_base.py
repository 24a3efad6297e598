"""`build-tiny-base`: pre-train the tiny SD2-shaped base on the demo data (seeded, offline)."""
import os

import click

from entrypoints.common import user_errors

# The build is one process that keeps every core busy for ~15 min with many small ops. The package's
# passive OpenMP waiting (harness/__init__.py) puts a thread to sleep at every barrier; letting it spin
# 3,000 rounds first (tens of microseconds) made the build 1.4x faster on an idle 2-core machine
# (measured 2026-12-05: 150 UNet steps in 36-38 s vs 52-63 s). When another process holds a core,
# spinning costs instead (1.6x slower than passive): set GOMP_SPINCOUNT=0 there. libgomp reads it when
# torch is imported, so it is set before that; a value already in the environment wins. Thread timing
# only: the weights are the same bytes either way.
BUILD_SPIN_COUNT = "3000"


@click.command("build-tiny-base")
@click.option("--output-dir", default=None, help="default: the shipped harness/assets/tiny-sd2")
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def build_tiny_base(output_dir, seed):
    os.environ.setdefault("GOMP_SPINCOUNT", BUILD_SPIN_COUNT)
    from harness.dualgen.base import TINY_BASE_DIR
    from harness.dualgen.pretrain_tiny import build_tiny_base as build
    path = build(output_dir or TINY_BASE_DIR, seed=seed)
    click.echo(f"tiny base written to {path}")


if __name__ == "__main__":
    build_tiny_base()
