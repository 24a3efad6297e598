"""Errors in the user's input or environment become a one-line message and exit status 2."""
from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path

import click

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
