"""Decode once, train many: the resized image-mask pairs of a sample list, cached on disk.

The 12 classify and 6 segment runs of one `main` read the same training and test images at one or two
sizes; each decoded and resized every file again. `pairs(samples, size, cache_dir)` returns them as
(rgb (N, S, S, 3) uint8, mask (N, S, S) uint8 in {0, 1}), resized exactly as
harness.data.augment.load_pair does (LANCZOS image, NEAREST mask), from `<cache_dir>/<key>.npz` when an
earlier run wrote it, else decoded (by `threads` threads) and written there for the next run.

The key is a sha256 of the size and, per sample in order, its id and the path, byte size and
modification time of its image and mask: a file rewritten in place gets a new key, as a build tool's
rule would see it (hashing the contents would cost as much as decoding small files). The file is
written to a temporary name and renamed, so a killed run never leaves half a cache behind, and two runs
writing the same key at once both write the same bytes. cache_dir "" = no cache (decode every time).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from harness.files import user_file_mode
from harness.data.augment import load_pair
from harness.data.records import Sample


def _file_key(path: Path | None) -> str:
    if path is None:
        return "-"
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(samples: list[Sample], size: int) -> str:
    h = hashlib.sha256(f"pairs v1 size={size}\n".encode())
    for s in samples:
        h.update(f"{s.id}\t{_file_key(s.image)}\t{_file_key(s.mask)}\n".encode())
    return h.hexdigest()[:32]


def decode(samples: list[Sample], size: int, threads: int = 1, progress: bool = True,
           desc: str = "decode") -> tuple[np.ndarray, np.ndarray]:
    """Every pair decoded and resized (load_pair), stacked: rgb (N, S, S, 3), mask (N, S, S)."""
    if not samples:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:       # PIL releases the GIL while decoding
        out = list(tqdm(pool.map(lambda s: load_pair(s, size), samples), total=len(samples), desc=desc,
                        unit="img", disable=not progress))
    return np.stack([rgb for rgb, _ in out]), np.stack([mask for _, mask in out])


def pairs(samples: list[Sample], size: int, cache_dir: str | os.PathLike = "", threads: int = 1,
          progress: bool = True, desc: str = "decode") -> tuple[np.ndarray, np.ndarray]:
    """(rgb, mask) of `samples` at `size`, from the cache when it holds them, else decoded and cached."""
    if not cache_dir:
        return decode(samples, size, threads, progress, desc)
    path = Path(cache_dir) / f"{cache_key(samples, size)}.npz"
    if path.is_file():
        with np.load(path) as f:
            rgb, mask = f["rgb"], f["mask"]
        if len(rgb) == len(samples):
            return rgb, mask
    rgb, mask = decode(samples, size, threads, progress, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, rgb=rgb, mask=mask)
        os.chmod(tmp, user_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rgb, mask
