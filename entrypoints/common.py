"""Shared bits of the click wrappers: errors in the user's input become a one-line message and exit status 2."""
from __future__ import annotations

import dataclasses
import errno
import functools
import sys
from pathlib import Path

import click

from harness.config import PROFILE_CHOICES, parse_bool, shown
from harness.errors import HarnessError, Stopped


class UserError(click.ClickException):
    exit_code = 2


# what the file system says about a path the user chose: a folder that is a file, no permission, a full
# or read-only disk (files.py writes atomically, so nothing half-written is left behind)
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def _os_message(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    a_file = e.filename and Path(e.filename).is_file() and isinstance(e, (NotADirectoryError, FileExistsError))
    return f"{where}{e.strerror or e}" + (" (a file, where a folder is expected)" if a_file else "")


def user_errors(fn):
    """Run the command; a HarnessError (the user's input or environment is wrong: harness/errors.py), a
    path the file system refuses or a full / read-only disk becomes `Error: <message>` and exit status 2.
    Any other exception propagates with its traceback: it is a bug."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HarnessError as e:
            raise UserError(str(e)) from e
        except OSError as e:
            if isinstance(e, PATH_ERRORS) or e.errno in DISK_ERRNOS:
                raise UserError(_os_message(e)) from e
            raise
        except Stopped as e:          # SIGTERM / SIGHUP: the run is KILLED; exit as the signal says
            click.echo(f"{fn.__name__}: {e}; the run is marked KILLED", err=True)
            sys.exit(128 + e.signum)
    return wrapper


profile_option = click.option(
    "--profile", type=click.Choice(PROFILE_CHOICES), default="auto", show_default=True,
    help="paper: the paper's protocol; demo: sizes shrunk for 2 CPU cores; auto: demo on the embedded demo "
         "data, paper on yours (the run's tag skindualgen.profile_rule says which)")

experiment_option = click.option("--experiment", default=None,
                                 help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or skindualgen)")


class GivenOrDefault(click.ParamType):
    """An option of a config field: "" (an MLproject parameter left empty) and no value are None, the
    profile's or the paper's default; anything else is converted to the field's type. --help shows
    the type, or the words a field takes (harness.config.choice), which the stage itself checks."""

    def __init__(self, kind: type, choices: tuple[str, ...] | None = None):
        self.kind, self.choices = kind, choices
        self.name = {int: "integer", float: "float", bool: "boolean"}.get(kind, "text")

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join(self.choices)}]" if self.choices else self.name.upper()

    def convert(self, value, param, ctx):
        if value is None or value == "" or not isinstance(value, str):
            return None if value == "" else value
        try:
            return parse_bool(value) if self.kind is bool else self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not " + ("true/false" if self.kind is bool else f"a valid {self.kind.__name__}"),
                      param, ctx)


def config_options(cfg_cls, exclude: tuple[str, ...] = ()):
    """One `--field-name` option per dataclass field, defaulting to None (= profile / paper default;
    "" from an MLproject parameter counts as not given). Booleans take true/false values."""
    def decorate(fn):
        for f in reversed(dataclasses.fields(cfg_cls)):
            if f.name in exclude:
                continue
            kind = {int: int, float: float, bool: bool}.get(type(f.default), str)
            param_type = GivenOrDefault(kind, f.metadata.get("choices"))
            fn = click.option("--" + f.name.replace("_", "-"), f.name, type=param_type, default=None,
                              help="default: " + (shown(f.name, "") if f.default == "" else repr(f.default)))(fn)
        return fn
    return decorate


def accept_underscores(command: click.Command) -> click.Command:
    """MLflow passes an extra `-P learning_rate=1e-4` on as `--learning_rate 1e-4`: every `--dashed-name`
    option also answers to its `--underscored_name` (listed beside it in --help)."""
    for param in command.params:            # idempotent: a module imported twice (as __main__ too) adds none again
        if isinstance(param, click.Option):
            param.opts += [alias for alias in (o.replace("-", "_").replace("__", "--", 1) for o in list(param.opts)
                                               if o.startswith("--") and "-" in o[2:]) if alias not in param.opts]
    return command
