"""SkinDualGen harness: the library behind every MLproject entry point.

Environment defaults that must be in place before torch / albumentations / mlflow are imported:
- OMP_WAIT_POLICY=PASSIVE: PyTorch's spinning OpenMP threads were at times ~100x slower per op on
  a shared 2-core machine (measured; passive waiting removed it);
- NO_ALBUMENTATIONS_UPDATE, MLFLOW_DISABLE_TELEMETRY: no hidden network calls.
Each is only a default: a value already in the environment wins.
"""
import os

for _key, _value in {
    "OMP_WAIT_POLICY": "PASSIVE",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
