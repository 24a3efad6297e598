"""`classify` and `segment` end to end on the demo data (32 px, 1 epoch, 2 folds) with a synthetic
set standing in for a generate run; training-set composition; errors; HAM10000 evaluation; crashes."""
import csv
import json
import math
import os
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn import metrics as skm

from entrypoints.stages import COMMANDS
from harness import tracking
from harness.config import ClassifyConfig, SegmentConfig
from harness.data.layouts import load_dataset
from harness.data.prepare import load_prepared
from harness.downstream import classify as classify_mod
from harness.downstream import segment as segment_mod
from harness.downstream.sets import DownstreamError, build_training_set, load_synthetic, map_to_classes
from harness.schema import (
    STAGE_CLASSIFY, STAGE_CLASSIFY_FOLD, STAGE_SEGMENT, TAG_FOLD, TAG_MLFLOW_PARENT_RUN, TAG_MLFLOW_RUN_NAME,
    TAG_OUTPUT_DIR, TAG_STAGE, TAG_SYNTH_RUN,
)



def write_manifest(csv_path: Path, dataset_dir: Path, split: str, drop_labels=()):
    """A manifest CSV (image,mask,label,description,split; paths relative to the CSV) of a dataset."""
    rows = [s for s in load_dataset(dataset_dir).samples if s.label not in drop_labels]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "label", "description", "split"])
        for s in rows:
            writer.writerow([os.path.relpath(s.image, csv_path.parent), os.path.relpath(s.mask, csv_path.parent),
                             s.label, s.description, split])
    return csv_path


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    from harness.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("real") / "demo", seed=0, per_class=6, min_size=32, max_size=48)


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory):
    """Stands in for a generate run: another demo draw (seed 1) listed in a manifest CSV."""
    from harness.data.demo import make_demo_dataset
    root = tmp_path_factory.mktemp("synth")
    folder = make_demo_dataset(root / "generated", seed=1, per_class=6, min_size=32, max_size=48)
    return write_manifest(root / "synth.csv", folder, split="train")


def runs_of(experiment):
    exp = mlflow.get_experiment_by_name(experiment)
    return [] if exp is None else mlflow.search_runs([exp.experiment_id], output_format="list")


def artifact(run_id, path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def rescore(csv_path: Path) -> pd.DataFrame:
    """Per fold, sklearn's macro metrics from the saved per-image predictions."""
    df = pd.read_csv(csv_path)
    out = []
    for _model, part in df.groupby(["seed", "fold"]):
        t, p = part["true_label"], part["predicted_label"]
        out.append({"accuracy": 100 * skm.accuracy_score(t, p),
                    "sensitivity": 100 * skm.recall_score(t, p, average="macro", zero_division=0),
                    "precision": 100 * skm.precision_score(t, p, average="macro", zero_division=0),
                    "f1": 100 * skm.f1_score(t, p, average="macro", zero_division=0)})
    return pd.DataFrame(out)


def numpy_interval(values_by_model, groups, n=4000, seed=7):
    """An independent bootstrap of a run's logged interval, in plain numpy: draw the test units (a
    lesion's images together) and the models with replacement, average each drawn model's per-image
    values over the drawn images, then over the drawn models with weights spread about 1/M by
    sqrt(M / (M - 1)) (the small-M adjustment the harness documents); percentile 2.5 / 97.5."""
    values_by_model = np.asarray(values_by_model, dtype=float)
    units = {}
    for i, g in enumerate(groups):
        units.setdefault(g if isinstance(g, str) and g else f"#{i}", []).append(i)
    units = list(units.values())
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        images = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        k = len(values_by_model)
        means = np.array([v[images].mean() for v in values_by_model])
        if k == 1:
            out.append(means[0])
            continue
        w = np.bincount(rng.integers(0, k, k), minlength=k) / k
        out.append(np.sum((1 / k + np.sqrt(k / (k - 1)) * (w - 1 / k)) * means))
    return np.percentile(out, [2.5, 97.5])


# ------------------------------------------------------------------------------- training sets
def test_training_sets_sizes_proportions_and_seed(real_dir, synth_csv):
    prepared = load_prepared(str(real_dir), progress=False)
    real_train = prepared.dataset.split("train").samples
    synthetic, _tags = load_synthetic(str(synth_csv))
    n_c = {c: sum(s.label == c for s in real_train) for c in prepared.dataset.classes}
    assert set(n_c.values()) == {5}                          # 6 per class, 1 to test

    real = build_training_set("real", real_train, None, seed=42)
    assert len(real) == 35 and set(real.sources) == {"real"}

    synth = build_training_set("synth", real_train, synthetic.samples, seed=42)
    assert len(synth) == 35 and set(synth.sources) == {"synth"}
    assert synth.counts()["synth"] == n_c                    # same per-class counts as the real set

    hybrid = build_training_set("hybrid", real_train, synthetic.samples, seed=42)
    counts = hybrid.counts()
    assert len(hybrid) == len(real)
    assert counts["synth"] == {c: n // 2 for c, n in n_c.items()}              # 2 of each class
    assert counts["real"] == {c: n - n // 2 for c, n in n_c.items()}           # 3 of each class
    assert all(s.id.startswith("synth:") for s, src in zip(hybrid.samples, hybrid.sources) if src == "synth")
    assert len({s.id for s in hybrid.samples}) == len(hybrid)
    assert hybrid.metrics()["train_set/n_synth"] == 14 and hybrid.metrics()["train_set/n_real"] == 21

    again = build_training_set("hybrid", real_train, synthetic.samples, seed=42)
    other = build_training_set("hybrid", real_train, synthetic.samples, seed=7)
    assert [s.id for s in again.samples] == [s.id for s in hybrid.samples]
    assert [s.id for s in other.samples] != [s.id for s in hybrid.samples]
    assert json.loads(json.dumps(hybrid.composition()))["counts"] == counts


def test_augmented_keeps_every_real_image_and_adds_synth_ratio_per_class_or_balances(real_dir, synth_csv):
    real_train = load_prepared(str(real_dir), progress=False).dataset.split("train").samples
    real_train = [s for s in real_train if s.label != "melanoma"] + [s for s in real_train if s.label == "melanoma"][:2]
    synthetic = load_synthetic(str(synth_csv))[0].samples                  # 6 per class
    n_c = Counter(s.label for s in real_train)
    assert n_c["melanoma"] == 2 and {n for c, n in n_c.items() if c != "melanoma"} == {5}
    real_ids = sorted(s.id for s in real_train)
    for ratio, expected in ((1.0, dict(n_c)), (0.5, {c: (n + 1) // 2 for c, n in n_c.items()})):   # 5 -> 3, 2 -> 1
        aug = build_training_set("augmented", real_train, synthetic, seed=42, synth_ratio=ratio)
        counts = aug.counts()
        assert counts["real"] == dict(n_c) and counts["synth"] == expected
        assert sorted(s.id for s, src in zip(aug.samples, aug.sources) if src == "real") == real_ids   # every one
        assert aug.composition()["rule"] == f"per class c: all N_c real + round({ratio:g} x N_c) synthetic"
        assert aug.metrics()["train_set/n_synth"] == sum(expected.values())
    balanced = build_training_set("augmented", real_train, synthetic, seed=42, balance=True)
    assert balanced.counts()["synth"] == {c: 5 - n for c, n in n_c.items()}            # melanoma 3, the rest 0
    assert balanced.counts()["real"] == dict(n_c)
    alone = build_training_set("augmented", real_train, None, seed=42, synth_ratio=0)  # ratio 0: real only
    assert alone.counts()["synth"] == {c: 0 for c in n_c} and len(alone) == len(real_train)
    with pytest.raises(DownstreamError, match="--synth-ratio must be >= 0, got -1"):
        build_training_set("augmented", real_train, synthetic, seed=42, synth_ratio=-1)
    with pytest.raises(DownstreamError, match=r"--train-set augmented: the synthetic set has too few images "
                                              r"\('actinic keratosis': needs 20, has 6"):
        build_training_set("augmented", real_train, synthetic, seed=42, synth_ratio=4)


def test_real_fractions_are_nested_stratified_seeded_subsets_of_the_real_training_split(tmp_path):
    """On the embedded demo's training split (HAM10000-like imbalance: 41 nevi ... 9 dermatofibromas)."""
    from harness.data.demo import make_demo_dataset
    from harness.downstream.sets import real_subset
    real_train = load_prepared(str(make_demo_dataset(tmp_path / "demo", seed=0)), progress=False
                               ).dataset.split("train").samples
    n_c = Counter(s.label for s in real_train)
    assert max(n_c.values()) >= 4 * min(n_c.values())
    subsets = {f: {s.id for s in real_subset(real_train, f, seed=42)} for f in (0.12, 0.25, 0.5, 1.0)}
    assert subsets[0.12] <= subsets[0.25] <= subsets[0.5] <= subsets[1.0] == {s.id for s in real_train}
    for f, ids in subsets.items():
        kept = Counter(s.label for s in real_train if s.id in ids)
        assert kept == {c: int(f * n + 1e-9) for c, n in n_c.items()}, f               # per class: stratified
    assert {s.id for s in real_subset(real_train, 0.5, seed=42)} == subsets[0.5]      # seeded
    assert {s.id for s in real_subset(real_train, 0.5, seed=7)} != subsets[0.5]
    smallest = min(n_c.values())
    with pytest.raises(DownstreamError, match=rf"--real-fraction 0.1 leaves no real training image of class\(es\) "
                                              rf"'dermatofibroma' \({smallest} training images\)"):
        real_subset(real_train, 0.1, seed=42)                   # 0.1 x 9 dermatofibromas < 1
    for bad in (0, 1.5, -0.2):
        with pytest.raises(DownstreamError, match=r"--real-fraction must be in \(0, 1\]"):
            real_subset(real_train, bad, seed=42)


def test_training_set_errors(real_dir, synth_csv, tmp_path):
    real_train = load_prepared(str(real_dir), progress=False).dataset.split("train").samples
    synthetic = load_synthetic(str(synth_csv))[0].samples
    for kind in ("synth", "hybrid"):
        with pytest.raises(DownstreamError, match="needs a synthetic set"):
            build_training_set(kind, real_train, None, seed=0)
    alien = [replace(s, label="alien lesion") for s in synthetic[:3]]
    with pytest.raises(DownstreamError, match="alien lesion"):
        build_training_set("hybrid", real_train, synthetic + alien, seed=0)
    few = [s for s in synthetic if s.label != "melanoma"] + [s for s in synthetic if s.label == "melanoma"][:1]
    with pytest.raises(DownstreamError, match="'melanoma': needs 5, has 1"):
        build_training_set("synth", real_train, few, seed=0)
    repeated = build_training_set("synth", real_train, few, seed=0, allow_repeats=True)
    mel = [s.id for s, src in zip(repeated.samples, repeated.sources) if s.label == "melanoma"]
    assert len(mel) == 5 and len(set(mel)) == 1 and repeated.repeats == 4


def test_synthetic_set_from_a_generate_run(synth_csv, experiment):
    tracking.setup(experiment)
    with mlflow.start_run() as gen:
        mlflow.set_tag(TAG_OUTPUT_DIR, str(synth_csv.parent / "generated"))
    with mlflow.start_run() as other:
        pass
    dataset, tags = load_synthetic(f"runs:/{gen.info.run_id}")
    assert len(dataset) == 42 and all(s.id.startswith("synth:") and s.split == "train" for s in dataset.samples)
    assert tags[TAG_SYNTH_RUN] == gen.info.run_id
    with pytest.raises(DownstreamError, match=f"has no tag {TAG_OUTPUT_DIR}.*give a FINISHED generate run"):
        load_synthetic(f"runs:/{other.info.run_id}")


def test_eval_labels_mapped_by_name_and_missing_classes_excluded(ham_dir):
    ham = load_dataset(ham_dir).samples
    ev = map_to_classes("ham", ham, ["Melanoma", "nevus", "dermatofibroma"])
    assert ev.mapping == {"benign keratosis": None, "melanocytic nevus": "nevus", "melanoma": "Melanoma",
                          "vascular lesion": None}
    assert ev.excluded == {"benign keratosis": 6, "vascular lesion": 4}
    assert len(ev.samples) == 20 and len(ev.all_samples) == 30
    assert {s.label for s in ev.samples} == {"nevus", "Melanoma"}


def test_folds_larger_than_smallest_class_is_an_error_before_any_run(real_dir, experiment, small):
    cfg = small(ClassifyConfig, data_dir=str(real_dir), model="squeezenet1_1", folds=6)
    with pytest.raises(DownstreamError, match="--folds 6 needs at least 6"):
        classify_mod.classify(cfg, experiment=experiment, progress=False)
    assert runs_of(experiment) == []


def test_cli_reports_missing_synthetic_set_cleanly(real_dir, experiment):
    result = CliRunner().invoke(COMMANDS["classify"], ["--data-dir", str(real_dir), "--train-set", "hybrid",
                                                   "--profile", "demo", "--experiment", experiment])
    assert result.exit_code == 2 and "needs a synthetic set" in result.output


# ------------------------------------------------------------------------------- classify
def test_classify_real_cli_with_ham_eval(real_dir, ham_dir, experiment, tmp_path):
    result = CliRunner().invoke(COMMANDS["classify"], [
        "--data-dir", str(real_dir), "--model", "squeezenet1_1", "--train-set", "real", "--eval-data", str(ham_dir),
        "--profile", "demo", "--image-size", "32", "--epochs", "1", "--folds", "2", "--batch-size", "8",
        "--experiment", experiment])
    assert result.exit_code == 0, result.output
    runs = runs_of(experiment)
    [parent] = [r for r in runs if r.data.tags[TAG_STAGE] == STAGE_CLASSIFY]
    folds = [r for r in runs if r.data.tags[TAG_STAGE] == STAGE_CLASSIFY_FOLD]
    assert parent.info.status == "FINISHED" and len(folds) == 2
    assert all(f.info.status == "FINISHED" and f.data.tags[TAG_MLFLOW_PARENT_RUN] == parent.info.run_id for f in folds)
    m = parent.data.metrics
    for key in ("accuracy", "sensitivity", "precision", "f1"):
        for name in (key, f"{key}_std", f"ham_{key}", f"ham_{key}_std", f"val/{key}"):
            assert name in m, name
    assert m["ham_n"] == 30 and m["ham_n_excluded"] == 0 and m["epochs"] == 1
    assert "sensitivity/melanoma" in m and "ham_sensitivity/vascular lesion" in m
    assert parent.data.params["image_size"] == "32" and parent.data.params["folds"] == "2"

    rid = parent.info.run_id
    for name, prefix, n in (("test", "", 7), ("ham", "ham_", 30)):
        table = artifact(rid, f"predictions/{name}.csv")
        df = pd.read_csv(table)
        assert len(df) == 2 * n and sorted(df["fold"].unique()) == [0, 1]
        scores = rescore(table)
        for key in ("accuracy", "sensitivity", "precision", "f1"):
            assert m[prefix + key] == pytest.approx(scores[key].mean(), abs=1e-9)
            assert m[prefix + key + "_std"] == pytest.approx(scores[key].std(ddof=0), abs=1e-9)
        for f in folds:
            k = int(f.data.tags[TAG_FOLD])
            assert f.data.metrics[prefix + "f1"] == pytest.approx(scores["f1"][k], abs=1e-9)
    for name in ("confusion_test.png", "confusion_ham.png", "train_set.json", "eval_sets.json"):
        assert artifact(rid, name).is_file()

    # every test metric has its 95 % interval around the point value, and the accuracy's agrees with
    # an independent bootstrap of the predictions artifact (HAM: lesion_id groups drawn together)
    assert parent.data.params["ci_level"] == "0.95" and parent.data.params["ci_resamples"] == "2000"
    for name, prefix in (("test", ""), ("ham", "ham_")):
        for key in ("accuracy", "sensitivity", "precision", "f1"):
            assert m[prefix + key + "_ci_low"] <= m[prefix + key] <= m[prefix + key + "_ci_high"], (prefix, key)
        df = pd.read_csv(artifact(rid, f"predictions/{name}.csv"), keep_default_na=False)
        per_fold = [part.sort_values("id") for _, part in df.groupby("fold")]
        correct = [100.0 * (part["true_label"] == part["predicted_label"]).to_numpy() for part in per_fold]
        lo, hi = numpy_interval(correct, per_fold[0]["group"].tolist())
        assert m[prefix + "accuracy_ci_low"] == pytest.approx(lo, abs=3.0)
        assert m[prefix + "accuracy_ci_high"] == pytest.approx(hi, abs=3.0)
    ham_groups = pd.read_csv(artifact(rid, "predictions/ham.csv"))["group"]
    assert ham_groups.str.startswith("HAM_").all() and ham_groups.nunique() < len(ham_groups) / 2

    # the best fold's model reproduces its saved test probabilities
    model, info = classify_mod.load_classifier(rid)
    assert info["fold"] == int(m["best_fold"]) and info["classes"] == sorted(info["classes"])
    test = load_prepared(str(real_dir), progress=False).dataset.split("test").samples
    images = classify_mod.decode_images(test, 32, progress=False)
    x = torch.stack([classify_mod.ImageSet(images, np.zeros(len(test), np.int64))[i][0] for i in range(len(test))])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    df = pd.read_csv(artifact(rid, "predictions/test.csv"))
    saved = df[df["fold"] == info["fold"]].set_index("id").loc[[s.id for s in test]]
    columns = [f"prob_{c}" for c in info["classes"]]
    assert np.allclose(probs, saved[columns].to_numpy(), atol=1e-5)

    # ... and so does the run's MLflow model, on raw RGB images of their own sizes (its preprocessing inside),
    # loaded by mlflow.pyfunc and served by `mlflow models predict`
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    raw = [np.asarray(Image.open(s.image).convert("RGB")) for s in test]
    out = pd.concat([pyfunc.predict(image[None]) for image in raw], ignore_index=True)
    assert np.allclose(out[columns].to_numpy(), saved[columns].to_numpy(), atol=1e-5)
    assert out["predicted"].tolist() == saved["predicted_label"].tolist()
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": raw[0][None].tolist()}))
    served = subprocess.run(["mlflow", "models", "predict", "-m", f"runs:/{rid}/model", "--env-manager", "local",
                             "-i", str(request), "-t", "json", "-o", str(tmp_path / "served.json")],
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    [row] = json.loads((tmp_path / "served.json").read_text())["predictions"]
    assert np.allclose([row[c] for c in columns], saved[columns].to_numpy()[0], atol=1e-5)


def test_classify_hybrid_with_a_class_the_model_lacks_on_ham(real_dir, synth_csv, ham_dir, experiment, tmp_path, small):
    # real data without "vascular lesion" (and the synthetic set likewise): HAM's 4 vascular images are excluded
    real = write_manifest(tmp_path / "real.csv", real_dir, split="", drop_labels=("vascular lesion",))
    synth = write_manifest(tmp_path / "synth.csv", synth_csv.parent / "generated", split="train",
                           drop_labels=("vascular lesion",))
    cfg = small(ClassifyConfig, data_dir=str(real), model="squeezenet1_1", train_set="hybrid", synth=str(synth),
                eval_data=str(ham_dir))
    rid = classify_mod.classify(cfg, experiment=experiment, progress=False)
    run = mlflow.get_run(rid)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["train_set/n"] == 30 and m["train_set/n_synth"] == 12 and m["train_set/n_real"] == 18
    assert m["train_set/synth/melanoma"] == 2 and m["train_set/real/melanoma"] == 3
    assert m["ham_n_excluded"] == 4 and m["ham_n"] == 26
    assert all(k in m for k in ("accuracy", "f1", "ham_accuracy", "ham_f1"))
    comp = json.loads(artifact(rid, "train_set.json").read_text())
    assert comp["kind"] == "hybrid" and len(comp["ids"]["synth"]) == 12
    ev = json.loads(artifact(rid, "eval_sets.json").read_text())
    assert ev["ham"]["excluded"] == {"vascular lesion": 4}
    ham = pd.read_csv(artifact(rid, "predictions/ham.csv"))
    assert "vascular lesion" not in set(ham["true_label"]) and len(ham) == 2 * 26
    scores = rescore(artifact(rid, "predictions/ham.csv"))
    assert m["ham_f1"] == pytest.approx(scores["f1"].mean(), abs=1e-9)


def test_classify_crash_mid_run_leaves_failed_run(real_dir, experiment, monkeypatch, small):
    calls = []
    real_step = classify_mod.train_one_epoch

    def crash_in_second_fold(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)
    monkeypatch.setattr(classify_mod, "train_one_epoch", crash_in_second_fold)
    cfg = small(ClassifyConfig, data_dir=str(real_dir), model="squeezenet1_1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        classify_mod.classify(cfg, experiment=experiment, progress=False)
    runs = {r.data.tags[TAG_MLFLOW_RUN_NAME]: r for r in runs_of(experiment)}
    parent = next(r for r in runs.values() if r.data.tags[TAG_STAGE] == STAGE_CLASSIFY)
    assert parent.info.status == "FAILED" and "accuracy" not in parent.data.metrics
    assert runs["squeezenet1_1 real fold 1"].info.status == "FAILED"
    assert not [r for r in runs.values() if r.data.tags[TAG_STAGE] == STAGE_CLASSIFY
                and r.info.status == "FINISHED"]


def test_classify_seeds_repeat_the_folds_and_every_model_counts(real_dir, experiment, small):
    """--seeds 2 with 2 folds: 4 fold runs (seeds 42 and 1042, each its own fold split), the point value
    is the mean of the 4 models (sklearn on the predictions), <metric>_seed_std the spread of the two
    repeats' means, and the interval resamples all 4 models (independent numpy bootstrap)."""
    cfg = small(ClassifyConfig, data_dir=str(real_dir), model="squeezenet1_1", seeds=2)
    rid = classify_mod.classify(cfg, experiment=experiment, progress=False)
    m = mlflow.get_run(rid).data.metrics
    folds = [r for r in runs_of(experiment) if r.data.tags.get("mlflow.parentRunId") == rid]
    assert sorted(r.data.tags[TAG_MLFLOW_RUN_NAME] for r in folds) == [
        f"squeezenet1_1 real fold {k} seed {s}" for k in (0, 1) for s in (1042, 42)]
    df = pd.read_csv(artifact(rid, "predictions/test.csv"))
    assert sorted(set(zip(df["seed"], df["fold"]))) == [(42, 0), (42, 1), (1042, 0), (1042, 1)]
    scores = rescore(artifact(rid, "predictions/test.csv"))
    assert m["accuracy"] == pytest.approx(scores["accuracy"].mean(), abs=1e-9)
    per_seed = [per_seed_mean(df, s) for s in (42, 1042)]
    assert m["accuracy_seed_std"] == pytest.approx(np.std(per_seed), abs=1e-9)
    groups = df[(df["seed"] == 42) & (df["fold"] == 0)]["group"].fillna("").tolist()
    correct = [100.0 * (part["true_label"] == part["predicted_label"]).to_numpy()
               for _key, part in df.groupby(["seed", "fold"])]
    lo, hi = numpy_interval(correct, groups)
    assert abs(m["accuracy_ci_low"] - lo) < 3.0 and abs(m["accuracy_ci_high"] - hi) < 3.0
    # one seed is the run from before --seeds: no _seed_std, the models of seed 42 alone
    one = mlflow.get_run(classify_mod.classify(small(ClassifyConfig, data_dir=str(real_dir), model="squeezenet1_1"),
                                               experiment=experiment, progress=False)).data.metrics
    assert "accuracy_seed_std" not in one
    assert one["accuracy"] == pytest.approx(per_seed_mean(df, 42), abs=1e-9)


def per_seed_mean(df, seed):
    part = df[df["seed"] == seed]
    return part.groupby("fold").apply(lambda p: 100 * (p["true_label"] == p["predicted_label"]).mean(),
                                      include_groups=False).mean()


# ------------------------------------------------------------------------------- segment
def check_segmentation_artifacts(rid, name, n, masks):
    """`masks`: id -> ground-truth mask file; each saved prediction has its ground truth's size."""
    table = artifact(rid, f"segmentation/{name}.csv")
    df = pd.read_csv(table)
    assert len(df) == n
    prepared_masks = {}
    for row in df.itertuples():
        pred = np.asarray(Image.open(artifact(rid, row.pred_mask))) > 0
        with Image.open(masks[row.id]) as gt:   # GT resolution
            assert pred.shape == (gt.height, gt.width)
        prepared_masks[row.id] = pred
    return df, prepared_masks


def test_segment_real_with_ham_and_hybrid(real_dir, synth_csv, ham_dir, experiment, small):
    result = CliRunner().invoke(COMMANDS["segment"], [
        "--data-dir", str(real_dir), "--model", "unet", "--train-set", "real", "--eval-data", str(ham_dir),
        "--profile", "demo", "--image-size", "32", "--epochs", "1", "--experiment", experiment])
    assert result.exit_code == 0, result.output
    [run] = runs_of(experiment)
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STAGE] == STAGE_SEGMENT
    for key in ("dice", "iou", "asd", "hd", "n_empty_pred", "n_empty_gt"):
        assert key in m and f"ham_{key}" in m
    assert m["ham_n"] == 30 and m["n_test"] == 7 and "ham_n_excluded" not in m
    test = load_prepared(str(real_dir), progress=False).dataset.split("test").samples
    df, preds = check_segmentation_artifacts(run.info.run_id, "test", 7, {s.id: s.mask for s in test})
    for key in ("dice", "iou", "asd", "hd"):
        assert m[key] == pytest.approx(df[key].mean(), abs=1e-9)
        assert m[key + "_ci_low"] <= m[key] <= m[key + "_ci_high"]
        assert "ham_" + key + "_ci_low" in m and "ham_" + key + "_ci_high" in m
    lo, hi = numpy_interval([df["dice"].to_numpy()], [""] * len(df))
    assert m["dice_ci_low"] == pytest.approx(lo, abs=3.0) and m["dice_ci_high"] == pytest.approx(hi, abs=3.0)
    assert run.data.params["ci_method"].startswith("bootstrap-percentile")
    # Dice and IoU of the saved masks, recomputed with numpy from the ground truth
    for s in test:
        gt = np.asarray(Image.open(s.mask).convert("L")) > 0       # scored at the ground truth's size
        pred = preds[s.id]
        inter, total = (pred & gt).sum(), pred.sum() + gt.sum()
        row = df.set_index("id").loc[s.id]
        assert row["dice"] == pytest.approx(200 * inter / total if total else 100.0)
        assert row["iou"] == pytest.approx(100 * inter / (total - inter) if total else 100.0)
    ham = load_dataset(str(ham_dir)).samples
    check_segmentation_artifacts(run.info.run_id, "ham", 30, {s.id: s.mask for s in ham})
    _model, info = segment_mod.load_segmenter(run.info.run_id)
    assert info["model"] == "unet" and info["image_size"] == 32
    # the run's MLflow model: raw RGB in, the masks the run saved out (at the image's own size)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    for s in test:
        [mask] = pyfunc.predict(np.asarray(Image.open(s.image).convert("RGB"))[None])
        assert mask.dtype == np.uint8 and mask.shape == preds[s.id].shape
        assert (mask.astype(bool) == preds[s.id]).mean() > 0.999       # a logit at 0.5 may round either way

    name = f"seg-{experiment}"          # --register-as: the run's model becomes a registered version
    cfg = small(SegmentConfig, data_dir=str(real_dir), model="unet", train_set="hybrid", synth=str(synth_csv),
                register_as=name)
    rid = segment_mod.segment(cfg, experiment=experiment, progress=False)
    hybrid = mlflow.get_run(rid)
    assert hybrid.info.status == "FINISHED"
    [version] = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    assert version.run_id == rid
    assert mlflow.pyfunc.load_model(f"models:/{name}/1").predict(np.zeros((1, 40, 50, 3), np.uint8)).shape == (1, 40, 50)
    assert hybrid.data.metrics["train_set/n_synth"] == 14 and hybrid.data.metrics["train_set/n_real"] == 21
    assert all(k in hybrid.data.metrics for k in ("dice", "iou", "asd", "hd"))


def test_segment_and_classify_train_on_the_augmented_set_and_log_its_composition(real_dir, synth_csv, experiment,
                                                                                   small):
    for stage, cfg_cls in ((segment_mod.segment, SegmentConfig), (classify_mod.classify, ClassifyConfig)):
        cfg = small(cfg_cls, data_dir=str(real_dir), train_set="augmented", synth=str(synth_csv), synth_ratio=0.5)
        run = mlflow.get_run(stage(cfg, experiment=experiment, progress=False))
        assert run.info.status == "FINISHED" and run.data.params["train_set"] == "augmented"
        assert run.data.params["synth_ratio"] == "0.5" and run.data.params["balance"] == "False"
        m = run.data.metrics
        assert (m["train_set/n_real"], m["train_set/n_synth"]) == (35, 21)      # every real image, 3 of 5 added
        assert json.loads(artifact(run.info.run_id, "train_set.json").read_text())["counts"]["synth"]["melanoma"] == 3
    cfg = small(SegmentConfig, data_dir=str(real_dir), train_set="augmented", synth=str(synth_csv), real_fraction=0.4)
    m = mlflow.get_run(segment_mod.segment(cfg, experiment=experiment, progress=False)).data.metrics
    assert (m["train_set/n_real"], m["train_set/n_synth"]) == (14, 14)          # 2 of 5 per class, + 1 x 2


def test_segment_seeds_train_several_models_and_every_one_counts(real_dir, experiment, small):
    cfg = small(SegmentConfig, data_dir=str(real_dir), model="unet", seeds=2)
    rid = segment_mod.segment(cfg, experiment=experiment, progress=False)
    m = mlflow.get_run(rid).data.metrics
    df = pd.read_csv(artifact(rid, "segmentation/test.csv"))
    assert sorted(set(df["seed"])) == [42, 1042] and len(df) == 2 * 7
    by_seed = {s: part["dice"].to_numpy() for s, part in df.groupby("seed")}
    assert m["seed42/dice"] == pytest.approx(by_seed[42].mean()) and m["seed1042/dice"] == pytest.approx(by_seed[1042].mean())
    assert m["dice"] == pytest.approx(np.mean([v.mean() for v in by_seed.values()]))
    assert m["dice_seed_std"] == pytest.approx(np.std([v.mean() for v in by_seed.values()]))
    assert all(p.startswith(f"pred_masks/test/seed{s}/") for s, p in zip(df["seed"], df["pred_mask"]))
    assert artifact(rid, df["pred_mask"].iloc[-1]).is_file()
    lo, hi = numpy_interval([by_seed[42], by_seed[1042]], [""] * 7)
    assert abs(m["dice_ci_low"] - lo) < 3.0 and abs(m["dice_ci_high"] - hi) < 3.0
    _model, info = segment_mod.load_segmenter(rid)
    assert info["seed"] == 42


class AllBackground(torch.nn.Module):
    """A 'segmenter' that predicts no lesion anywhere (one trainable bias far below the threshold)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(-30.0))

    def forward(self, x):
        return x[:, :1] * 0 + self.bias


def test_segment_all_empty_predictions_give_defined_scores(real_dir, experiment, monkeypatch, small):
    monkeypatch.setattr(segment_mod, "build_model", lambda name, pretrained=False: AllBackground())
    cfg = small(SegmentConfig, data_dir=str(real_dir), model="unet")
    rid = segment_mod.segment(cfg, experiment=experiment, progress=False)
    run = mlflow.get_run(rid)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["n_empty_pred"] == 7 and m["n_empty_gt"] == 0
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    df = pd.read_csv(artifact(rid, "segmentation/test.csv"))
    diagonals = [math.hypot(*np.asarray(Image.open(artifact(rid, p))).shape) for p in df["pred_mask"]]
    assert m["hd"] == pytest.approx(np.mean(diagonals)) and m["asd"] == pytest.approx(np.mean(diagonals))
    assert len(df) == 7 and (df["empty_pred"] == 1).all()


def test_segment_crash_leaves_failed_run(real_dir, experiment, monkeypatch, small):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in evaluation")
    monkeypatch.setattr(segment_mod, "evaluate", broken)
    cfg = small(SegmentConfig, data_dir=str(real_dir), model="unet")
    with pytest.raises(RuntimeError, match="simulated crash"):
        segment_mod.segment(cfg, experiment=experiment, progress=False)
    [run] = runs_of(experiment)
    assert run.info.status == "FAILED" and "dice" not in run.data.metrics
