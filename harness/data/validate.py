"""Check every image and mask of a dataset; hash them. All problems are reported together."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from harness.data.records import MAX_LISTED, DataError, Dataset, Sample, sha256_file



@dataclass(frozen=True)
class FileInfo:
    image_sha256: str
    mask_sha256: str
    width: int
    height: int


def _open_fully(path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
        im.load()            # decodes all pixels: a truncated file fails here, not later in training
    return im


def check_sample(s: Sample) -> tuple[FileInfo | None, str | None]:
    """(info, None) when the pair is fine, else (None, "<file>: <problem>")."""
    try:
        im = _open_fully(s.image)
    except Exception as e:  # PIL raises many types for broken files
        return None, f"{s.image}: unreadable or truncated image ({type(e).__name__}: {e})"
    if im.mode not in ("RGB", "RGBA", "L", "P", "CMYK", "I;16", "I"):
        return None, f"{s.image}: unsupported image mode {im.mode}"
    mask_sha = ""
    if s.mask is not None:
        try:
            mk = _open_fully(s.mask)
        except Exception as e:
            return None, f"{s.mask}: unreadable or truncated mask ({type(e).__name__}: {e})"
        if mk.size != im.size:
            return None, f"{s.mask}: mask size {mk.size[0]}x{mk.size[1]} differs from image {s.image.name} " \
                         f"size {im.size[0]}x{im.size[1]}"
        arr = np.asarray(mk.convert("L") if mk.mode not in ("L", "1") else mk)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        values = np.unique(arr)
        if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
            bad = int(np.count_nonzero((arr != 0) & (arr != 255))) if 255 in values else \
                int(np.count_nonzero(arr > 1))
            return None, (f"{s.mask}: mask not binary: {bad} of {arr.size} pixels have values other than "
                          f"0/255 or 0/1 (values seen: {values[:8].tolist()}{'...' if len(values) > 8 else ''})")
        mask_sha = sha256_file(s.mask)
    return FileInfo(sha256_file(s.image), mask_sha, im.size[0], im.size[1]), None


def validate(dataset: Dataset, progress: bool = True) -> dict[str, FileInfo]:
    """Decode every image and mask; return id -> FileInfo. Raise DataError listing every bad file."""
    if not dataset.samples:
        raise DataError(f"{dataset.root}: no samples found")
    infos, problems = {}, []
    for s in tqdm(dataset.samples, desc="validate", unit="img", disable=not progress, leave=False):
        info, problem = check_sample(s)
        if problem:
            problems.append(problem)
        else:
            infos[s.id] = info
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} bad file(s) in {dataset.root}:\n  {shown}{more}")
    return infos
