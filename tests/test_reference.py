"""The reference judges (CAS, mask consistency) and `generate --min-consistency`, on small real data.

The judges are trained once per module (demo profile, demo_small's real train split at the split the
fine-tuned model below also uses, so `generate` finds the same segmenter in the cache). What they
say is checked against an independent computation: the cached weights loaded into the harness's
backbones by hand, the images preprocessed as the cached metadata says, argmax / sigmoid > 0.5, and
Dice written out in numpy. Nothing under test is mocked; every run goes to the real sqlite store.
"""
import csv
import dataclasses
import json
import os
import re

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from harness.config import PROFILES, EvaluateConfig, FinetuneConfig, GenerateConfig
from harness.data.prepare import load_prepared
from harness.downstream import classify as classify_mod
from harness.downstream import segment as segment_mod
from harness.downstream.reference import (cas, mask_consistency, predict_classes, reference_classifier,
                                          reference_segmenter)
from harness.dualgen.generate import consistency_judge, generate, generate_consistent, plan
from harness.dualgen.mlflow_model import model_folder
from harness.dualgen.pipeline import DualGenPipeline
from harness.dualgen.train import finetune
from harness.errors import ConfigError
from harness.quality import evaluate
from harness.schema import (CACHED_SUFFIX, METRIC_CAS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, STAGE_CLASSIFY,
                            TAG_CAS_MODEL, TAG_CONSISTENCY_MODEL, TRAINING_JSON)

TEST_FRACTION = 0.25        # the fine-tuned model's split too: its `generate` judge is this module's segmenter
SEED = 42
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLASS = "melanoma"          # the one class `generate` makes below (one class: seeds are taken in order)


# ------------------------------------------------------------------------------------------------
# The judges, and what they say computed without reference.py
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(demo_small):
    return load_prepared(str(demo_small), "auto", TEST_FRACTION, SEED, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="module")
def clf(prepared, cache):
    return reference_classifier(prepared, "resnet34", "demo", cache, SEED, progress=False)


@pytest.fixture(scope="module")
def seg(prepared, cache):
    return reference_segmenter(prepared, "unet", "demo", cache, SEED, progress=False)


def cached_files(cache, key):
    """The weights and metadata a judge was cached as (`key` is the file stem, also the run tag)."""
    weights = cache / f"{key}.pt"
    return weights, json.loads(weights.with_suffix(".json").read_text())


def rgb(path, size):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def normalised(images):
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), ImageNet normalisation."""
    x = (np.stack(images).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def independent_classes(cache, key, samples):
    """The cached classifier's argmax class per sample, by hand."""
    weights, info = cached_files(cache, key)
    size = info["config"]["image_size"]
    net = classify_mod.build_model(info["model"], len(info["classes"]), size)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.no_grad():
        logits = net.eval()(normalised([rgb(s.image, size) for s in samples]))
    return [info["classes"][i] for i in logits.argmax(1).tolist()]


def independent_masks(cache, key, samples, sizes):
    """The cached segmenter's mask per sample at sizes[i] (logits resized bilinearly, sigmoid > 0.5)."""
    weights, info = cached_files(cache, key)
    size = info["config"]["image_size"]
    net = segment_mod.build_model(info["model"])
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.no_grad():
        logits = net.eval()(normalised([rgb(s.image, size) for s in samples]))
        return [(torch.sigmoid(torch.nn.functional.interpolate(lg[None], size=hw, mode="bilinear",
                                                                align_corners=False))[0, 0] > 0.5).numpy()
                for lg, hw in zip(logits, sizes)]


def hand_dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def gt_mask(sample):
    with Image.open(sample.mask) as m:
        return np.asarray(m.convert("L")) > 0


def relabelled(samples, classes):
    """Every sample labelled with the class after its own (cyclically): a set whose labels are all wrong."""
    return [dataclasses.replace(s, label=classes[(classes.index(s.label) + 1) % len(classes)]) for s in samples]


def means(values, samples, name):
    """{name: the mean of values, name/<class>: the mean over the samples labelled <class>}."""
    values = np.asarray(values, np.float64)
    out = {name: values.mean()}
    for c in sorted({s.label for s in samples}):
        out[f"{name}/{c}"] = values[[s.label == c for s in samples]].mean()
    return out


def shares(predicted, samples, name):
    """The share of samples predicted as their label, overall and per label."""
    return means([p == s.label for p, s in zip(predicted, samples)], samples, name)


@pytest.fixture(scope="module")
def samples(prepared):
    """All of demo_small (train and test split), in id order."""
    return sorted(prepared.dataset.samples, key=lambda s: s.id)


@pytest.fixture(scope="module")
def by_hand(clf, seg, cache, samples):
    """Per sample id: the class the classifier gives and the mask the segmenter gives (at the mask's size)."""
    classes = independent_classes(cache, clf.info["key"], samples)
    masks = independent_masks(cache, seg.info["key"], samples, [gt_mask(s).shape for s in samples])
    return {s.id: (c, m) for s, c, m in zip(samples, classes, masks)}


# ------------------------------------------------------------------------------------------------
# 1. CAS
# ------------------------------------------------------------------------------------------------

def test_cas_equals_an_independent_judgement(prepared, clf, cache, samples, by_hand):
    train, test = prepared.dataset.split("train"), prepared.dataset.split("test")
    _, info = cached_files(cache, clf.info["key"])
    assert info["classes"] == train.classes and info["n_train"] == len(train) and info["digest"] == prepared.digest
    assert (info["profile"], info["config"]["image_size"], info["epochs"]) == ("demo", 32, 30)   # the demo settings

    # the real test split with its own labels: CAS is the judge's test accuracy
    expected = shares([by_hand[s.id][0] for s in test.samples], test.samples, METRIC_CAS)
    assert cas(clf, test.samples) == pytest.approx(expected, abs=1e-12)
    assert set(expected) == {METRIC_CAS} | {f"{METRIC_CAS}/{c}" for c in train.classes}

    # every sample given a wrong label: cas/<c> is the share of those labelled c predicted as c
    wrong = relabelled(samples, train.classes)
    expected_wrong = shares([by_hand[s.id][0] for s in samples], wrong, METRIC_CAS)
    got = cas(clf, wrong)
    assert got == pytest.approx(expected_wrong, abs=1e-12)
    right = shares([by_hand[s.id][0] for s in samples], samples, METRIC_CAS)
    assert right[METRIC_CAS] > got[METRIC_CAS]                   # the judge learned the real classes
    assert predict_classes(clf, samples) == [by_hand[s.id][0] for s in samples]
    with pytest.raises(ValueError, match="at least one image"):
        cas(clf, [])


# ------------------------------------------------------------------------------------------------
# 2. The cache
# ------------------------------------------------------------------------------------------------

def mtimes(cache):
    return {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.suffix in (".pt", ".json")}


def test_cache_loads_the_same_judge_and_misses_on_another_config_or_digest(demo_small, prepared, clf, seg, cache,
                                                                           samples, monkeypatch):
    assert not clf.cached and not seg.cached                     # trained by this module, into its own cache
    before = mtimes(cache)
    assert set(before) == {f"{r.info['key']}{ext}" for r in (clf, seg) for ext in (".pt", ".json")}

    again = reference_classifier(prepared, "resnet34", "demo", cache, SEED, progress=False)
    again_seg = reference_segmenter(prepared, "unet", "demo", cache, SEED, progress=False)
    assert again.cached and again_seg.cached
    assert mtimes(cache) == before                               # nothing trained, nothing written
    assert again.info == clf.info and again_seg.info == seg.info
    for a, b in ((again, clf), (again_seg, seg)):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert predict_classes(again, samples) == predict_classes(clf, samples)

    # another config (the demo profile changed: 1 epoch) is a miss: a new judge beside the old one
    monkeypatch.setitem(PROFILES[STAGE_CLASSIFY], "demo", {**PROFILES[STAGE_CLASSIFY]["demo"], "epochs": 1})
    short = reference_classifier(prepared, "resnet34", "demo", cache, SEED, progress=False)
    assert not short.cached and short.info["epochs"] == 1 and short.info["key"] != clf.info["key"]
    assert short.info["key"].startswith(f"{prepared.digest}-{STAGE_CLASSIFY}-resnet34-")
    # another dataset digest (the same files split otherwise), same config: a miss too
    other = load_prepared(str(demo_small), "auto", 0.5, SEED, progress=False)
    assert other.digest != prepared.digest
    elsewhere = reference_classifier(other, "resnet34", "demo", cache, SEED, progress=False)
    assert not elsewhere.cached and elsewhere.info["key"].startswith(f"{other.digest}-{STAGE_CLASSIFY}-resnet34-")
    assert elsewhere.info["n_train"] == len(other.dataset.split("train")) != clf.info["n_train"]
    after = mtimes(cache)
    assert {k: after[k] for k in before} == before               # the first judges are untouched
    assert set(after) - set(before) == {f"{r.info['key']}{ext}" for r in (short, elsewhere) for ext in (".pt", ".json")}
    assert reference_classifier(prepared, "resnet34", "demo", cache, SEED, progress=False).cached


# ------------------------------------------------------------------------------------------------
# 3. Mask consistency
# ------------------------------------------------------------------------------------------------

def with_masks(samples, masks, folder):
    """Copies of the samples whose masks are `masks`, written as 0/255 PNGs."""
    folder.mkdir(parents=True)
    out = []
    for s, m in zip(samples, masks):
        Image.fromarray((np.asarray(m, bool) * 255).astype(np.uint8)).save(folder / f"{s.id}.png")
        out.append(dataclasses.replace(s, mask=folder / f"{s.id}.png"))
    return out


def test_mask_consistency_is_the_dice_against_the_judges_own_mask(prepared, seg, cache, by_hand, tmp_path):
    test = sorted(prepared.dataset.split("test").samples, key=lambda s: s.id)
    own = [by_hand[s.id][1] for s in test]
    assert any(m.any() for m in own) and all(0 < m.mean() < 1 for m in own if m.any())

    # the judge's own masks: Dice 1 each
    scores, dice, _ = mask_consistency(seg, with_masks(test, own, tmp_path / "own"))
    assert dice.tolist() == [1.0] * len(test) and scores[METRIC_MASK_CONSISTENCY] == 1.0
    assert scores[METRIC_MASK_NONEMPTY] == pytest.approx(np.mean([m.any() for m in own]))
    assert {k for k in scores if k.startswith(METRIC_MASK_CONSISTENCY + "/")} == \
        {f"{METRIC_MASK_CONSISTENCY}/{s.label}" for s in test}

    # ... also when the generated mask has another resolution than its image (judged at the mask's)
    big = [(2 * m.shape[0] + 3, 2 * m.shape[1]) for m in own]
    own_big = independent_masks(cache, seg.info["key"], test, big)
    _, dice, _ = mask_consistency(seg, with_masks(test, own_big, tmp_path / "big"))
    assert dice.tolist() == [1.0] * len(test)

    # empty masks: 0 where the judge sees a lesion, 1 where it sees none; none counts as non-empty
    scores, dice, nonempty = mask_consistency(seg, with_masks(test, [np.zeros_like(m) for m in own],
                                                               tmp_path / "empty"))
    assert not nonempty.any()
    assert dice.tolist() == [0.0 if m.any() else 1.0 for m in own] and scores[METRIC_MASK_NONEMPTY] == 0.0

    # the real masks: the Dice of each against the judge's, by hand
    truth = [gt_mask(s) for s in test]
    scores, dice, _ = mask_consistency(seg, test)
    expected = [hand_dice(p, t) for p, t in zip(own, truth)]
    assert dice == pytest.approx(expected, abs=1e-12) and len(set(np.round(expected, 6))) > 1
    assert scores[METRIC_MASK_CONSISTENCY] == pytest.approx(np.mean(expected), abs=1e-12)
    for s, d in zip(test, expected):
        assert scores[f"{METRIC_MASK_CONSISTENCY}/{s.label}"] == pytest.approx(d, abs=1e-12)   # one per class

    # a mix: mask_nonempty counts the masks with a lesion pixel
    mixed = [t if i % 2 else np.zeros_like(t) for i, t in enumerate(truth)]
    scores, dice, _ = mask_consistency(seg, with_masks(test, mixed, tmp_path / "mixed"))
    assert scores[METRIC_MASK_NONEMPTY] == pytest.approx(len(test) // 2 / len(test))
    assert dice == pytest.approx([hand_dice(p, m) for p, m in zip(own, mixed)], abs=1e-12)
    with pytest.raises(ValueError, match="at least one image"):
        mask_consistency(seg, [])


# ------------------------------------------------------------------------------------------------
# 4. evaluate logs them
# ------------------------------------------------------------------------------------------------

def test_evaluate_logs_cas_and_consistency_of_a_set_with_the_judges_tags(demo_small, prepared, clf, seg, cache,
                                                                        by_hand, experiment, tmp_path, small):
    # the "generated" set: the real test split's files (one image per class; FID features cost ~0.5 s an
    # image here, so it stays small), every other one with a wrong label and an empty mask, so that
    # judging the real test split instead of this set would not pass
    test = sorted(prepared.dataset.split("test").samples, key=lambda s: s.id)
    wrong = relabelled(test[1::2], prepared.dataset.split("train").classes)
    wrong = with_masks(wrong, [np.zeros_like(gt_mask(s)) for s in wrong], tmp_path / "empty")
    fake = [s if i % 2 == 0 else wrong[i // 2] for i, s in enumerate(test)]
    manifest = tmp_path / "fake" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "label", "description", "split"])
        writer.writeheader()
        writer.writerows({"image": str(s.image), "mask": str(s.mask), "label": s.label, "description": "",
                          "split": "train"} for s in fake)
    before = mtimes(cache)
    cfg = small(EvaluateConfig, real=str(demo_small), fake=str(manifest), test_fraction=TEST_FRACTION, seed=SEED,
                cache_dir=str(tmp_path / "features"), cas_model="resnet34", consistency_model="unet",
                reference_profile="demo", reference_cache_dir=str(cache))
    run = mlflow.get_run(evaluate(cfg, experiment=experiment, progress=False))
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and mtimes(cache) == before      # judged by the cached judges

    expected = shares([by_hand[s.id][0] for s in fake], fake, METRIC_CAS)
    assert 0 < expected[METRIC_CAS] < 1 and expected != shares([by_hand[s.id][0] for s in test], test, METRIC_CAS)
    assert {k: v for k, v in m.items() if k.split("/")[0] == METRIC_CAS} == pytest.approx(expected, abs=1e-12)
    dice = [hand_dice(by_hand[s.id][1], gt_mask(s)) for s in fake]
    consistency = means(dice, fake, METRIC_MASK_CONSISTENCY)
    assert {k: v for k, v in m.items() if k.split("/")[0] == METRIC_MASK_CONSISTENCY} == \
        pytest.approx(consistency, abs=1e-12)
    assert m[METRIC_MASK_NONEMPTY] == pytest.approx(np.mean([gt_mask(s).any() for s in fake])) and \
        m[METRIC_MASK_NONEMPTY] == pytest.approx((len(test) + 1) // 2 / len(test))
    assert t[TAG_CAS_MODEL] == clf.info["key"] and t[TAG_CAS_MODEL + CACHED_SUFFIX] == "true"
    assert t[TAG_CONSISTENCY_MODEL] == seg.info["key"] and t[TAG_CONSISTENCY_MODEL + CACHED_SUFFIX] == "true"
    # their 95 % intervals: the set's images resampled, recomputed here by plain numpy from the values
    # by hand (a few images: percentiles of a coarse distribution, so one image's step of tolerance)
    correct = [float(by_hand[s.id][0] == s.label) for s in fake]
    for key, values in ((METRIC_CAS, correct), (METRIC_MASK_CONSISTENCY, dice)):
        v = np.asarray(values, float)
        resampled = v[np.random.default_rng(5).integers(0, len(v), (4000, len(v)))].mean(axis=1)
        lo, hi = np.percentile(resampled, [2.5, 97.5])
        assert abs(m[key + "_ci_low"] - lo) <= 1 / len(v) + 1e-9 and abs(m[key + "_ci_high"] - hi) <= 1 / len(v) + 1e-9


# ------------------------------------------------------------------------------------------------
# 5. generate --min-consistency
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetuned(tiny_folder, demo_small, mlflow_store, tmp_path_factory, small):
    """A tiny model fine-tuned for the test profile's 2 steps on demo_small at this module's split."""
    mlflow.set_tracking_uri(mlflow_store)
    while mlflow.active_run():
        mlflow.end_run()
    cfg = small(FinetuneConfig, data_dir=str(demo_small), base_model=str(tiny_folder), mask_warmup_steps=0,
                output_dir=str(tmp_path_factory.mktemp("ft") / "ft"), test_fraction=TEST_FRACTION, seed=SEED)
    return finetune(cfg, experiment=f"test-reference-{os.getpid()}", progress=False)


@pytest.fixture
def gen_cfg(small):
    """`gen_cfg(run_id, cache, out, **kw)`: one class, one image per batch (a pair then depends only on its
    seed), the module's judge."""
    def gen_cfg(run_id, cache, out, **kw):
        return small(GenerateConfig, **{"model_uri": f"runs:/{run_id}/model", "classes": CLASS, "batch_size": 1,
                                        "output_dir": str(out), "seed": SEED, "reference_profile": "demo",
                                        "reference_cache_dir": str(cache), **kw})
    return gen_cfg


def runs_of(experiment):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_generate_threshold_zero_keeps_every_pair_and_out_of_range_is_refused(finetuned, seg, cache, gen_cfg,
                                                                              experiment, tmp_path):
    run_id, out = generate(gen_cfg(finetuned, cache, tmp_path / "g0", per_class=2), experiment=experiment,
                           progress=False)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["n_generated"] == 2 and len((out / "manifest.csv").read_text().splitlines()) == 3
    assert "n_dropped" not in run.data.metrics and TAG_CONSISTENCY_MODEL not in run.data.tags   # 0: no judge

    for bad in (1.01, -0.1):
        n = len(runs_of(experiment))
        with pytest.raises(ConfigError, match=re.escape(f"--min-consistency is a Dice in [0, 1], got {bad}")):
            generate(gen_cfg(finetuned, cache, tmp_path / "bad", min_consistency=bad), experiment=experiment,
                     progress=False)
        assert len(runs_of(experiment)) == n and not (tmp_path / "bad").exists()


def test_generate_min_consistency_replaces_dropped_pairs_or_names_the_short_class(finetuned, seg, cache, gen_cfg,
                                                                                   experiment, tmp_path):
    folder = model_folder(f"runs:/{finetuned}/model")
    training = json.loads((folder / TRAINING_JSON).read_text())
    assert training["dataset_digest"] == seg.info["digest"]
    judge = consistency_judge(training, gen_cfg(finetuned, cache, tmp_path / "x", min_consistency=0.5), False)
    assert judge.cached and judge.info["key"] == seg.info["key"]   # the real-trained segmenter of the same data

    # with a judge and threshold 0 nothing is dropped: one round, and the score of every seed
    pipe = DualGenPipeline.from_folder(folder)
    cfg0 = gen_cfg(finetuned, cache, tmp_path / "x", per_class=4)
    jobs, seeds, pairs, stats = generate_consistent(pipe, training["prompt_template"], plan(training, cfg0), cfg0,
                                                    judge, progress=False)
    assert jobs == [(CLASS, k) for k in range(4)] and seeds == [SEED + k for k in range(4)]
    assert stats["rounds"] == 1 and stats["dropped"] == {CLASS: 0} and stats["kept_scores"] == stats["scores"]
    scores = stats["scores"]                                     # of seeds SEED, SEED + 1, ...
    assert len(scores) == 4 and all(0.0 <= s < 0.999 for s in scores) and len(set(scores)) > 1

    # a threshold that the first seed misses and a later one (within 3 rounds) meets: one pair per round,
    # the first seed that passes is kept, the others are dropped and counted
    best = 1 + int(np.argmax(scores[1:3]))
    assert scores[best] > scores[0], scores                      # holds for these fixed seeds
    threshold = (scores[best] + max(scores[:best])) / 2
    run_id, out = generate(gen_cfg(finetuned, cache, tmp_path / "g1", min_consistency=threshold, max_rounds=3),
                           experiment=experiment, progress=False)
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    assert m["n_dropped"] == m[f"n_dropped/{CLASS}"] == best > 0 and m["generation_rounds"] == best + 1
    assert m["n_generated"] == 1 and m["consistency_kept_mean"] == pytest.approx(scores[best], abs=1e-6)
    assert m["consistency_all_mean"] == pytest.approx(np.mean(scores[:best + 1]), abs=1e-6)
    with open(out / "manifest.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["label"], int(row["seed"])) == (CLASS, SEED + best)
    assert run.data.tags[TAG_CONSISTENCY_MODEL] == seg.info["key"]
    assert run.data.tags[TAG_CONSISTENCY_MODEL + CACHED_SUFFIX] == "true"

    # a threshold no pair reaches: after max_rounds the run fails naming the class and kept/needed
    message = f"after 2 rounds these classes still lack pairs that pass (kept/needed): {{'{CLASS}': '0/2'}}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate(gen_cfg(finetuned, cache, tmp_path / "g2", per_class=2, min_consistency=0.999, max_rounds=2),
                 experiment=experiment, progress=False)
    failed = max(runs_of(experiment), key=lambda r: r.info.start_time)
    assert failed.info.status == "FAILED" and not (tmp_path / "g2").exists()
