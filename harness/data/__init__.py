"""Data layer: one Sample per image from any supported layout, validation, splits, augmentation."""
from harness.data.layouts import HAM_DX, detect_layout, load_dataset  # noqa: F401
from harness.data.records import DataError, Dataset, Sample, sha256_file  # noqa: F401
