"""Training sets `real`, `synth`, `hybrid` (paper Sec. 4.3.1), the real test split, and `--eval-data`.

The three sets have the same size and the same class proportions as the real training split
("all of identical scale", paper Sec. 4.2), so they differ only in where the images come from.
With N_c = the number of real training images of class c:

    real     all real training images (N_c of class c)
    synth    N_c synthetic images of class c
    hybrid   N_c // 2 synthetic + (N_c - N_c // 2) real images of class c: the same total size as
             `real`, the real set's class proportions kept, 50 % synthetic (exactly 50 % when every
             N_c is even; otherwise real has the odd image of each class)

Beyond the paper, for the question "what is synthetic data worth": `augmented` keeps every real
image and adds synth_ratio x N_c (rounded half up) synthetic images of class c (0 = real only), or, with
`balance`, max_c' N_c' - N_c of them (the rare classes filled up to the largest, the paper's use
against class imbalance).

`real_fraction` f < 1 first keeps, per class, the first int(f x N_c) real training images of one
seeded order of that class (numpy.random.default_rng([seed, hash(class), 2])), so a smaller fraction's
subset lies inside every larger one and class proportions stay (a class left with none is an error
naming it); N_c above is then the subset's count.

Which images are taken is fixed by the seed: per (class, source) the candidates are sorted by id and
shuffled with numpy.random.default_rng([seed, hash(class), source]), and the first ones are taken.
The same seed, data and synthetic set therefore give the same training set on any machine.

A synthetic set is a folder (generated set or any dataset layout), a manifest CSV, or
`runs:/<generate run id>` (the run's tag `skindualgen.output_dir`). All of its images are
training material whatever their `split`; `--train-set real` ignores it. Synthetic ids get the
prefix `synth:` so they never collide with real ids. Errors (each a DownstreamError naming what to do):
  - synth / hybrid without a synthetic set;
  - a synthetic class the real data does not have;
  - fewer synthetic images of a class than the set needs (every shortfall is listed), unless
    `allow_repeats` is set: then the class's synthetic images are used in turn, each one
    floor or ceil of (needed / available) times; the number of repeats is logged.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np

from harness import tracking
from harness.data.generated import generated_set
from harness.data.layouts import load_dataset
from harness.data.prepare import Prepared, load_prepared, log_dataset_input
from harness.data.records import DataError, Dataset, Sample
from harness.errors import HarnessError
from harness.schema import AUGMENTED, TAG_EVAL_DATA, TAG_SYNTH_DIR, TAG_SYNTH_RUN, TRAIN_SET_CHOICES

SYNTH_PREFIX = "synth:"

# Eval labels are matched to the model's classes by name after normalising case, "_"/"-" and spaces;
# these aliases are the other common spellings of HAM10000's classes (applied on both sides).
CLASS_ALIASES = {
    "nevus": "melanocytic nevus",
    "melanocytic nevi": "melanocytic nevus",
    "pigmented benign keratosis": "benign keratosis",
    "benign keratosis-like lesions": "benign keratosis",
    "vascular lesions": "vascular lesion",
}


class DownstreamError(HarnessError, ValueError):
    """A bad option combination or too little data for the requested set; the message says why."""


class PretrainedUnavailable(DownstreamError):
    """--pretrained true, and a backbone's ImageNet weights cannot be had here (the message names the
    file and where it goes)."""


# ---------------------------------------------------------------------------------------------
# Synthetic sets
# ---------------------------------------------------------------------------------------------

def resolve_synth(spec: str) -> tuple[Path, dict[str, str]]:
    """`runs:/<id>[/...]`, a folder or a CSV -> (path, tags recording where it came from)."""
    try:
        path, run = generated_set(spec)
    except DataError as e:
        raise DownstreamError(f"--synth {e}") from e
    tags = {TAG_SYNTH_RUN: run.info.run_id} if run is not None else {}
    tags[TAG_SYNTH_DIR] = str(path)
    return path, tags


def load_synthetic(spec: str) -> tuple[Dataset, dict[str, str]]:
    path, tags = resolve_synth(spec)
    if path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"          # a generated set: its manifest also records seeds
    dataset = load_dataset(path)
    if not len(dataset):
        raise DownstreamError(f"--synth {spec}: the synthetic set {path} is empty")
    samples = [replace(s, id=SYNTH_PREFIX + s.id, split="train") for s in dataset.samples]
    return replace(dataset, samples=samples), tags


# ---------------------------------------------------------------------------------------------
# Building the training set
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainingSet:
    kind: str                       # real | synth | hybrid | augmented
    samples: list[Sample]
    sources: list[str]              # "real" or "synth", one per sample
    classes: list[str]              # the model's classes: the real training split's classes
    seed: int
    repeats: int = 0                # synthetic draws beyond each image's first use (allow_repeats)
    rule: str = ""                  # how it was composed (RULES[kind], or augmented's with its ratio)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def counts(self) -> dict[str, dict[str, int]]:
        """source -> class -> count (every class listed for both sources)."""
        out = {src: {c: 0 for c in self.classes} for src in ("real", "synth")}
        for s, src in zip(self.samples, self.sources):
            out[src][s.label] += 1
        return out

    def metrics(self) -> dict[str, float]:
        counts = self.counts()
        m = {"train_set/n": len(self), "train_set/n_real": sum(counts["real"].values()),
             "train_set/n_synth": sum(counts["synth"].values()), "train_set/synth_repeats": self.repeats}
        for src, per_class in counts.items():
            m.update({f"train_set/{src}/{c}": n for c, n in per_class.items()})
        return m

    def composition(self) -> dict:
        """What `train_set.json` holds: the rule, the counts, and every id taken (synthetic ids carry
        the `synth:` prefix; a repeated synthetic id appears once per use)."""
        return {"kind": self.kind, "seed": self.seed, "classes": self.classes, "rule": self.rule or RULES[self.kind],
                "n": len(self), "counts": self.counts(), "synth_repeats": self.repeats,
                "ids": {src: [s.id for s, s2 in zip(self.samples, self.sources) if s2 == src]
                        for src in ("real", "synth")}}


RULES = {
    "real": "all real training images",
    "synth": "per class c: N_c synthetic images, N_c = real training count of c",
    "hybrid": "per class c: N_c // 2 synthetic + (N_c - N_c // 2) real, N_c = real training count of c",
}


def _class_hash(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "little")


def _rng(seed: int, label: str, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, _class_hash(label), 0 if source == "real" else 1])


def _draw(pool: list[Sample], n: int, rng: np.random.Generator, repeat: bool) -> list[Sample]:
    """n samples from pool: a seeded shuffle of the id-sorted pool; when repeating, one new shuffle
    per pass so each image is used floor or ceil of n / len(pool) times."""
    pool = sorted(pool, key=lambda s: s.id)
    out: list[Sample] = []
    while len(out) < n:
        out += [pool[i] for i in rng.permutation(len(pool))][: n - len(out)]
        if not repeat:
            break
    return out


def check_set_options(kind: str, synth_ratio: float = 1.0, real_fraction: float = 1.0) -> None:
    """The training-set options' ranges, checked before any data is read."""
    if kind not in TRAIN_SET_CHOICES:
        raise DownstreamError(f"--train-set must be one of {', '.join(TRAIN_SET_CHOICES)}, got {kind!r}")
    if not synth_ratio >= 0:
        raise DownstreamError(f"--synth-ratio must be >= 0, got {synth_ratio}")
    if not 0.0 < real_fraction <= 1.0:
        raise DownstreamError(f"--real-fraction must be in (0, 1], got {real_fraction}")


def real_subset(real_train: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """The nested, stratified `fraction` of the real training split (see the module docstring)."""
    check_set_options("real", real_fraction=fraction)
    if fraction == 1.0:
        return list(real_train)
    kept, empty = [], []
    for c in sorted({s.label for s in real_train}):
        pool = sorted((s for s in real_train if s.label == c), key=lambda s: s.id)
        order = np.random.default_rng([seed, _class_hash(c), 2]).permutation(len(pool))
        n = int(fraction * len(pool) + 1e-9)         # + 1e-9: 0.1 x 50 is 5, not 4.999...
        if n == 0:
            empty.append(f"{c!r} ({len(pool)} training images)")
        kept += [pool[i] for i in order[:n]]
    if empty:
        raise DownstreamError(f"--real-fraction {fraction:g} leaves no real training image of class(es) "
                              f"{', '.join(empty)}; choose a fraction of at least 1 / the smallest class's count")
    return kept


def synthetic_needed(kind: str, real_counts: Counter, synth_ratio: float = 1.0, balance: bool = False) -> dict[str, int]:
    """class -> synthetic images the `kind` set takes (see the module docstring)."""
    if kind == "synth":
        return dict(real_counts)
    if kind == "hybrid":
        return {c: n // 2 for c, n in real_counts.items()}
    if kind == AUGMENTED and balance:
        top = max(real_counts.values())
        return {c: top - n for c, n in real_counts.items()}
    if kind == AUGMENTED:
        return {c: int(synth_ratio * n + 0.5) for c, n in real_counts.items()}      # rounded half up
    return {c: 0 for c in real_counts}


def build_training_set(kind: str, real_train: list[Sample], synthetic: list[Sample] | None, seed: int,
                       allow_repeats: bool = False, synth_ratio: float = 1.0, balance: bool = False) -> TrainingSet:
    """The `kind` training set (see the module docstring for the rule)."""
    check_set_options(kind, synth_ratio)
    if not real_train:
        raise DownstreamError("the real training split is empty")
    classes = sorted({s.label for s in real_train})
    real_counts = Counter(s.label for s in real_train)
    need_synth = synthetic_needed(kind, real_counts, synth_ratio, balance)
    rule = ("per class c: all N_c real + (max N - N_c) synthetic (balance)" if balance else
            f"per class c: all N_c real + round({synth_ratio:g} x N_c) synthetic") if kind == AUGMENTED else ""
    if not any(need_synth.values()):      # real, or augmented with nothing to add
        samples = sorted(real_train, key=lambda s: s.id)
        return TrainingSet(kind, samples, ["real"] * len(samples), classes, seed, rule=rule)

    if not synthetic:
        raise DownstreamError(f"--train-set {kind} needs a synthetic set: pass --synth <folder | manifest.csv | "
                              "runs:/<generate run id>>")
    unknown = sorted({s.label for s in synthetic} - set(classes))
    if unknown:
        raise DownstreamError(f"the synthetic set has class(es) {unknown} that the real training data does not "
                              f"have; real classes: {classes}")
    by_class = {c: [s for s in synthetic if s.label == c] for c in classes}
    short = {c: (n, len(by_class[c])) for c, n in need_synth.items()
             if n > len(by_class[c]) and (not allow_repeats or not by_class[c])}
    if short:
        listing = "; ".join(f"{c!r}: needs {n}, has {have}" for c, (n, have) in short.items())
        raise DownstreamError(
            f"--train-set {kind}: the synthetic set has too few images ({listing}). Generate at least "
            f"{max(n for n, _ in short.values())} per class (generate --per-class N), or pass "
            "--allow-repeats true to reuse synthetic images (not possible for a class with none)")

    samples, sources, repeats = [], [], 0
    for c in classes:
        synth = _draw(by_class[c], need_synth[c], _rng(seed, c, "synth"), allow_repeats)
        repeats += len(synth) - len({s.id for s in synth})
        n_real = real_counts[c] if kind == AUGMENTED else real_counts[c] - need_synth[c]
        real = _draw([s for s in real_train if s.label == c], n_real, _rng(seed, c, "real"), False)
        samples += real + synth
        sources += ["real"] * len(real) + ["synth"] * len(synth)
    return TrainingSet(kind, samples, sources, classes, seed, repeats, rule)


# ---------------------------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------------------------

def normalise_class(name: str) -> str:
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return CLASS_ALIASES.get(key, key)


@dataclass
class EvalSet:
    name: str                            # "test" (real test split) or "ham" (--eval-data)
    samples: list[Sample]                # the images evaluated, labels renamed to the model's classes
    excluded: dict[str, int] = field(default_factory=dict)   # eval label -> images left out
    mapping: dict[str, str | None] = field(default_factory=dict)   # eval label -> model class / None
    all_samples: list[Sample] = field(default_factory=list)   # every image, labels as read (segmentation)

    def report(self) -> dict:
        return {"name": self.name, "n": len(self.samples), "n_excluded": sum(self.excluded.values()),
                "excluded": self.excluded, "mapping": self.mapping}


def map_to_classes(name: str, samples: list[Sample], classes: list[str]) -> EvalSet:
    """Rename eval labels to the model's class names (matched by normalised name); images whose class
    the model does not have are left out and counted in `excluded` (never an error)."""
    by_key = {normalise_class(c): c for c in classes}
    mapping = {label: by_key.get(normalise_class(label)) for label in sorted({s.label for s in samples})}
    kept = [replace(s, label=mapping[s.label]) for s in samples if mapping[s.label] is not None]
    excluded = dict(sorted(Counter(s.label for s in samples if mapping[s.label] is None).items()))
    return EvalSet(name, kept, excluded, mapping, list(samples))


# ---------------------------------------------------------------------------------------------
# Everything a downstream stage reads
# ---------------------------------------------------------------------------------------------

@dataclass
class DownstreamData:
    prepared: Prepared
    train: TrainingSet
    test: EvalSet
    ham: EvalSet | None
    synthetic: Dataset | None
    tags: dict[str, str]


def seed_list(cfg) -> list[int]:
    """The training seeds of `--seeds N` repeats: seed, seed + 1000, ... (N = 1: the seed itself, so a
    one-seed run is the run from before --seeds)."""
    return [cfg.seed + 1000 * s for s in range(cfg.seeds)]


def load_inputs(data_dir: str, train_set: str, synth: str, eval_data: str, test_fraction: float, seed: int,
                allow_repeats: bool = False, progress: bool = True, synth_ratio: float = 1.0,
                balance: bool = False, real_fraction: float = 1.0) -> DownstreamData:
    """Read the real data (split as `prepare` splits it), the synthetic set and `--eval-data`, and build
    the training set. Reads file lists and hashes only; nothing is decoded here."""
    check_set_options(train_set, synth_ratio, real_fraction)
    prepared = load_prepared(data_dir, "auto", test_fraction, seed, progress=progress)
    # --train-set real ignores --synth (so one pipeline can pass the same --synth to all three sets)
    synthetic, tags = load_synthetic(synth) if synth and train_set != "real" else (None, {})
    train = build_training_set(train_set, real_subset(prepared.dataset.split("train").samples, real_fraction, seed),
                               synthetic.samples if synthetic else None, seed, allow_repeats, synth_ratio, balance)
    test = map_to_classes("test", prepared.dataset.split("test").samples, train.classes)
    ham = None
    if eval_data:
        path = Path(eval_data).expanduser().resolve()
        try:
            ham_data = load_dataset(path)
        except DataError as e:
            raise DataError(f"--eval-data: {e}") from e
        ham = map_to_classes("ham", ham_data.samples, train.classes)
        tags[TAG_EVAL_DATA] = str(path)
    return DownstreamData(prepared, train, test, ham, synthetic, tags)


def log_samples_input(samples: list[Sample], source: str, name: str) -> None:
    """One MLflow dataset input (id, image, label per sample), its context = its name."""
    import pandas as pd
    df = pd.DataFrame([{"id": s.id, "image": str(s.image), "label": s.label} for s in samples])
    tracking.log_input(mlflow.data.from_pandas(df, source=source, name=name, targets="label"), context=name)


def log_inputs(data: DownstreamData, eval_by_class: bool = True) -> None:
    """Dataset inputs (real with its digest, synthetic, eval), composition metrics and JSON artifacts.
    eval_by_class=False (segmentation): every `--eval-data` image counts, none is excluded."""
    log_dataset_input(data.prepared, context="real")
    if data.synthetic is not None:
        log_samples_input(data.synthetic.samples, str(data.synthetic.root), "synthetic")
    metrics = data.train.metrics() | {"n_test": len(data.test.all_samples)}
    reports = {"test": data.test.report()}
    if data.ham is not None:
        ham = data.ham.samples if eval_by_class else data.ham.all_samples
        log_samples_input(ham, data.tags[TAG_EVAL_DATA], "eval")
        metrics["ham_n"] = len(ham)
        if eval_by_class:
            metrics["ham_n_excluded"] = sum(data.ham.excluded.values())
            reports["ham"] = data.ham.report()
        else:
            reports["ham"] = {"name": "ham", "n": len(ham), "n_excluded": 0}
    mlflow.log_metrics(metrics)
    mlflow.log_dict(data.train.composition(), "train_set.json")
    mlflow.log_dict(reports, "eval_sets.json")
