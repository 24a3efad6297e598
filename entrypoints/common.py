"""Shared bits of the click wrappers: user errors become a clean message and exit code 2."""
from __future__ import annotations

import functools

import click

from harness.data.records import DataError


class UserError(click.ClickException):
    exit_code = 2


def user_errors(fn):
    """Turn DataError / FileNotFoundError / ValueError raised for bad input into `error: ...`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DataError, FileNotFoundError) as e:
            raise UserError(str(e)) from e
    return wrapper


experiment_option = click.option("--experiment", default=None,
                                 help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or skindualgen)")
