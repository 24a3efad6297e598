"""Seeded, stratified splits that keep a group (HAM10000 lesion_id) on one side."""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from harness.data.records import DataError, Dataset


def train_test_split(dataset: Dataset, test_fraction: float, seed: int, min_per_class: int = 2) -> Dataset:
    """Assign split="train"/"test" to every sample; keep any split the dataset already fixes.

    Per class (a group's class = its most common label), groups are shuffled with `seed` and moved
    to test until round(test_fraction * class size) images are there; every class keeps >= 1 group
    on each side. Independent of file order: groups are sorted before shuffling.
    """
    if dataset.is_split:
        return dataset
    if any(s.split for s in dataset.samples):
        partial = next(s for s in dataset.samples if not s.split)
        raise DataError(f"{dataset.root}: some samples have a split and others not (e.g. {partial.image})")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    groups: dict[str, list] = defaultdict(list)
    for s in dataset.samples:
        groups[s.group_key].append(s)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        label = Counter(s.label for s in groups[key]).most_common(1)[0][0]
        by_class[label].append(key)
    rng = np.random.default_rng(seed)
    test_groups: set[str] = set()
    for label in sorted(by_class):
        keys = by_class[label]
        n_images = sum(len(groups[k]) for k in keys)
        if len(keys) < min_per_class:
            raise DataError(f"{dataset.root}: class {label!r} has {n_images} sample(s) in {len(keys)} "
                            f"group(s); the train/test split needs at least {min_per_class}")
        order = [keys[i] for i in rng.permutation(len(keys))]
        target = max(1, round(test_fraction * n_images))
        taken = 0
        for key in order[:-1]:  # the last group always stays in train
            if taken >= target:
                break
            test_groups.add(key)
            taken += len(groups[key])
    samples = [replace(s, split="test" if s.group_key in test_groups else "train") for s in dataset.samples]
    return replace(dataset, samples=samples)


def dataset_digest(dataset: Dataset, file_sha256: dict[str, tuple[str, str]]) -> str:
    """Content digest: ids, labels, splits, descriptions and file hashes; not paths, not order."""
    rows = sorted((s.id, s.label, s.split, s.description, *file_sha256[s.id]) for s in dataset.samples)
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]
