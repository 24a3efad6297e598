"""One in-memory record per sample, whatever layout the data came from."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import HarnessError


class DataError(HarnessError, ValueError):
    """Bad input data. The message always names the offending file and the problem."""


MAX_LISTED = 20                  # problems listed in one message (then "... and N more")


def raise_problems(problems: list[str], what: str) -> None:
    """Nothing when `problems` is empty; else one DataError: the problem itself when there is one, or
    "<N> <what>:" and every problem (the first MAX_LISTED) on its own line."""
    if not problems:
        return
    if len(problems) == 1:
        raise DataError(problems[0])
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DataError(f"{len(problems)} {what}:\n  {shown}{more}")


@dataclass(frozen=True)
class Sample:
    id: str                      # unique within a dataset (file stem, ISIC id, HAM image_id)
    image: Path                  # absolute path to the RGB image
    mask: Path | None            # absolute path to the binary mask (None: no mask available)
    label: str                   # readable class name, e.g. "melanoma"
    description: str = ""        # clinical description (may be empty)
    split: str = ""              # "train", "test" or "" (not fixed yet)
    group: str = ""              # samples of one group stay on one side of a split (HAM lesion_id)

    @property
    def group_key(self) -> str:
        return self.group or self.id


@dataclass
class Dataset:
    samples: list[Sample]
    root: Path                   # folder (or manifest CSV) the dataset was read from
    layout: str                  # "isic-gpt", "ham10000", "manifest", "synthetic"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for s in self.samples})

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s.label] = counts.get(s.label, 0) + 1
        return dict(sorted(counts.items()))

    def split(self, name: str) -> "Dataset":
        return replace(self, samples=[s for s in self.samples if s.split == name])

    @property
    def is_split(self) -> bool:
        return bool(self.samples) and all(s.split in ("train", "test") for s in self.samples)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
