"""File modes a team can share: what the user's umask gives a new file, for the files written
atomically through a temp file (tempfile.mkstemp makes them 0600, readable by their owner only)."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)          # reading the umask means setting it: set it back at once
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    """0o666 minus the umask: the mode `open()` would give a new file (0o644 with the usual 022)."""
    return 0o666 & ~_umask()


def user_dir_mode() -> int:
    """0o777 minus the umask (0o755 with the usual 022)."""
    return 0o777 & ~_umask()


__all__ = ["user_dir_mode", "user_file_mode"]
