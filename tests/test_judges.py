"""The judges stage (CAS classifier, consistency segmenter), evaluate and `generate --min-consistency`
that use it, on small real data.

The judges are trained once per module by the `judges` stage (demo profile, demo_small's real train split at
the split the fine-tuned model below also uses, so `generate` finds the same run). What they say is checked
against an independent computation: the run's MLflow models loaded by mlflow.pytorch itself, the images
preprocessed as the logged `<judge>.json` says, argmax / sigmoid > 0.5, and Dice written out in numpy.
Nothing under test is mocked; every run goes to the real sqlite store.
"""
import csv
import dataclasses
import json
import os
import re

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from PIL import Image

from harness.config import EvaluateConfig, FinetuneConfig, GenerateConfig, JudgesConfig
from harness.data.prepare import load_prepared
from harness.data.records import DataError
from harness.downstream.reference import cas, mask_consistency, predict_classes
from harness.dualgen.generate import consistency_judge, generate, generate_consistent, plan
from harness.dualgen.mlflow_model import model_folder
from harness.dualgen.pipeline import DualGenPipeline
from harness.dualgen.train import finetune
from harness.errors import ConfigError
from harness.judges import choose_judges, find_judges_run, load_judge, train_judges
from harness.quality import evaluate
from harness.report.runs import metric_value
from harness.schema import (JUDGE_CLASSIFIER, JUDGE_SEGMENTER, JUDGES_FOUND, JUDGES_GIVEN, JUDGES_NONE, METRIC_CAS,
                            METRIC_FID, METRIC_LPIPS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, METRIC_MS_SSIM,
                            STAGE_JUDGES, TAG_CAS_MODEL, TAG_CONSISTENCY_MODEL, TAG_DIGEST, TAG_JUDGES_FROM,
                            TAG_JUDGES_PROFILE, TAG_JUDGES_RUN, TAG_MISSING_PREFIX, TAG_STAGE, TRAINING_JSON)

TEST_FRACTION = 0.25        # the fine-tuned model's split too: its `generate` judge is this module's segmenter
SEED = 42
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLASS = "melanoma"          # the one class `generate` makes below (one class: seeds are taken in order)
JUDGED = (METRIC_CAS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY)


# ------------------------------------------------------------------------------------------------
# The judges run, and what its models say computed without reference.py / judges.py
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(demo_small):
    return load_prepared(str(demo_small), "auto", TEST_FRACTION, SEED, progress=False)


@pytest.fixture(scope="module")
def judges_exp(mlflow_store):
    """The module's experiment: it holds the judges run (evaluate / generate there find it)."""
    mlflow.set_tracking_uri(mlflow_store)
    return f"test-judges-{os.getpid()}"


@pytest.fixture(scope="module")
def judges_run(demo_small, judges_exp):
    while mlflow.active_run():
        mlflow.end_run()
    cfg = JudgesConfig(data_dir=str(demo_small), judges_profile="demo", test_fraction=TEST_FRACTION, seed=SEED)
    return mlflow.get_run(train_judges(cfg, experiment=judges_exp, progress=False))


@pytest.fixture(scope="module")
def clf(judges_run):
    return load_judge(judges_run, JUDGE_CLASSIFIER)


@pytest.fixture(scope="module")
def seg(judges_run):
    return load_judge(judges_run, JUDGE_SEGMENTER)


def logged(run, name):
    """A judge as the run logged it, read by MLflow alone: (its torch module, its `<name>.json`)."""
    uri = f"runs:/{run.info.run_id}/{name}"
    return mlflow.pytorch.load_model(uri, map_location="cpu").eval(), mlflow.artifacts.load_dict(uri + ".json")


def rgb(path, size):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def normalised(images):
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), ImageNet normalisation."""
    x = (np.stack(images).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def independent_classes(run, samples):
    """The logged classifier's argmax class per sample, by hand."""
    net, info = logged(run, JUDGE_CLASSIFIER)
    size = info["config"]["image_size"]
    with torch.no_grad():
        logits = net(normalised([rgb(s.image, size) for s in samples]))
    return [info["classes"][i] for i in logits.argmax(1).tolist()]


def independent_masks(run, samples, sizes):
    """The logged segmenter's mask per sample at sizes[i] (logits resized bilinearly, sigmoid > 0.5)."""
    net, info = logged(run, JUDGE_SEGMENTER)
    size = info["config"]["image_size"]
    with torch.no_grad():
        logits = net(normalised([rgb(s.image, size) for s in samples]))
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
def by_hand(judges_run, samples):
    """Per sample id: the class the classifier gives and the mask the segmenter gives (at the mask's size)."""
    classes = independent_classes(judges_run, samples)
    masks = independent_masks(judges_run, samples, [gt_mask(s).shape for s in samples])
    return {s.id: (c, m) for s, c, m in zip(samples, classes, masks)}


# ------------------------------------------------------------------------------------------------
# 1. CAS
# ------------------------------------------------------------------------------------------------

def test_cas_equals_an_independent_judgement(prepared, judges_run, clf, samples, by_hand):
    train, test = prepared.dataset.split("train"), prepared.dataset.split("test")
    _, info = logged(judges_run, JUDGE_CLASSIFIER)
    assert info == clf.info
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
# 2. The judges run: two MLflow models, found by dataset digest and profile
# ------------------------------------------------------------------------------------------------

def test_judges_run_holds_both_models_and_is_found_by_digest_and_profile(demo_small, prepared, judges_run, judges_exp,
                                                                         clf, seg, samples, experiment):
    run_id, tags = judges_run.info.run_id, judges_run.data.tags
    assert judges_run.info.status == "FINISHED" and tags[TAG_STAGE] == STAGE_JUDGES
    assert tags[TAG_DIGEST] == prepared.digest and tags[TAG_JUDGES_PROFILE] == "demo"
    params = judges_run.data.params
    assert (params["cas_model"], params["consistency_model"], params["judges_profile"]) == ("resnet34", "unet", "demo")
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)}
    assert {f"{JUDGE_CLASSIFIER}.json", f"{JUDGE_SEGMENTER}.json"} <= artifacts
    models = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[judges_run.info.experiment_id],
                                                             output_format="list") if m.source_run_id == run_id}
    assert set(models) == {JUDGE_CLASSIFIER, JUDGE_SEGMENTER}       # MLflow models of the run (the UI's Models tab)
    for name, judge in ((JUDGE_CLASSIFIER, clf), (JUDGE_SEGMENTER, seg)):
        net, info = logged(judges_run, name)      # what evaluate loads is the logged model, weight for weight
        a, b = net.state_dict(), judge.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].cpu()) for k in a)
        assert info["digest"] == prepared.digest and info["n_train"] == len(prepared.dataset.split("train"))
        assert judge.run_id == run_id
    assert predict_classes(clf, samples) == predict_classes(load_judge(judges_run, JUDGE_CLASSIFIER), samples)

    # found: by the digest and the profile, in the experiment; not for another profile, digest or experiment
    assert find_judges_run(prepared.digest, "demo", judges_exp).info.run_id == run_id
    assert find_judges_run(prepared.digest, "paper", judges_exp) is None
    other = load_prepared(str(demo_small), "auto", 0.5, SEED, progress=False)      # the same files split otherwise
    assert other.digest != prepared.digest and find_judges_run(other.digest, "demo", judges_exp) is None
    assert find_judges_run(prepared.digest, "demo", experiment) is None
    found, how = choose_judges("", prepared.digest, "demo", judges_exp)
    assert (found.info.run_id, how) == (run_id, JUDGES_FOUND)
    assert choose_judges("none", prepared.digest, "demo", judges_exp) == (None, JUDGES_NONE)
    given, how = choose_judges(f"runs:/{run_id}", prepared.digest, "paper", experiment)    # given: any experiment
    assert (given.info.run_id, how) == (run_id, JUDGES_GIVEN)

    # a given run that cannot judge this data: refused, naming why
    with pytest.raises(DataError, match=f"dataset digest {prepared.digest}.*has digest {other.digest}"):
        choose_judges(f"runs:/{run_id}", other.digest, "demo", judges_exp)
    with pytest.raises(ConfigError, match="no such run"):
        choose_judges("runs:/0123456789abcdef0123456789abcdef", prepared.digest, "demo", judges_exp)
    with mlflow.start_run(experiment_id=mlflow.set_experiment(experiment).experiment_id) as not_judges:
        pass
    with pytest.raises(ConfigError, match="not a judges run"):
        choose_judges(not_judges.info.run_id, prepared.digest, "demo", judges_exp)


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


def test_mask_consistency_is_the_dice_against_the_judges_own_mask(prepared, judges_run, seg, by_hand, tmp_path):
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
    own_big = independent_masks(judges_run, test, big)
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

def fake_set(prepared, tmp_path):
    """A "generated" set: the real test split's files (one image per class; FID features cost ~0.5 s an
    image here, so it stays small), every other one with a wrong label and an empty mask, so that judging
    the real test split instead of this set would not pass. Returns (its samples, its manifest)."""
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
    return fake, manifest


def runs_of(experiment):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_evaluate_logs_cas_and_consistency_by_the_judges_run_given_or_found(demo_small, prepared, judges_run,
                                                                           judges_exp, by_hand, experiment,
                                                                           tmp_path, small):
    fake, manifest = fake_set(prepared, tmp_path)
    test = sorted(prepared.dataset.split("test").samples, key=lambda s: s.id)
    cfg = small(EvaluateConfig, real=str(demo_small), fake=str(manifest), test_fraction=TEST_FRACTION, seed=SEED,
                cache_dir=str(tmp_path / "features"), judges=f"runs:/{judges_run.info.run_id}")
    run = mlflow.get_run(evaluate(cfg, experiment=experiment, progress=False))
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in runs_of(experiment)] == [run.info.run_id]     # nothing trained: no other run

    expected = shares([by_hand[s.id][0] for s in fake], fake, METRIC_CAS)
    assert 0 < expected[METRIC_CAS] < 1 and expected != shares([by_hand[s.id][0] for s in test], test, METRIC_CAS)
    assert {k: v for k, v in m.items() if k.split("/")[0] == METRIC_CAS} == pytest.approx(expected, abs=1e-12)
    dice = [hand_dice(by_hand[s.id][1], gt_mask(s)) for s in fake]
    consistency = means(dice, fake, METRIC_MASK_CONSISTENCY)
    assert {k: v for k, v in m.items() if k.split("/")[0] == METRIC_MASK_CONSISTENCY} == \
        pytest.approx(consistency, abs=1e-12)
    assert m[METRIC_MASK_NONEMPTY] == pytest.approx(np.mean([gt_mask(s).any() for s in fake])) and \
        m[METRIC_MASK_NONEMPTY] == pytest.approx((len(test) + 1) // 2 / len(test))
    assert (t[TAG_JUDGES_RUN], t[TAG_JUDGES_FROM]) == (judges_run.info.run_id, JUDGES_GIVEN)
    assert (t[TAG_CAS_MODEL], t[TAG_CONSISTENCY_MODEL]) == ("resnet34", "unet")
    assert not any(k.startswith(TAG_MISSING_PREFIX) for k in t)
    # their 95 % intervals: the set's images resampled, recomputed here by plain numpy from the values
    # by hand (a few images: percentiles of a coarse distribution, so one image's step of tolerance)
    correct = [float(by_hand[s.id][0] == s.label) for s in fake]
    for key, values in ((METRIC_CAS, correct), (METRIC_MASK_CONSISTENCY, dice)):
        v = np.asarray(values, float)
        resampled = v[np.random.default_rng(5).integers(0, len(v), (4000, len(v)))].mean(axis=1)
        lo, hi = np.percentile(resampled, [2.5, 97.5])
        assert abs(m[key + "_ci_low"] - lo) <= 1 / len(v) + 1e-9 and abs(m[key + "_ci_high"] - hi) <= 1 / len(v) + 1e-9

    # not given: the judges run of the real set's digest and the profile, found in the experiment
    found = mlflow.get_run(evaluate(dataclasses.replace(cfg, judges="", judges_profile="demo"), experiment=judges_exp,
                                    progress=False))
    assert (found.data.tags[TAG_JUDGES_RUN], found.data.tags[TAG_JUDGES_FROM]) == (judges_run.info.run_id, JUDGES_FOUND)
    assert {k: found.data.metrics[k] for k in JUDGED} == {k: m[k] for k in JUDGED}


def test_plain_evaluate_trains_nothing_and_says_what_would_add_the_judges(demo_small, prepared, experiment, tmp_path,
                                                                          small, capsys):
    # two small folders, no judges run anywhere in the experiment: the three Table 1 metrics, and a line
    _, manifest = fake_set(prepared, tmp_path)
    cfg = small(EvaluateConfig, real=str(demo_small), fake=str(manifest), test_fraction=TEST_FRACTION, seed=SEED,
                cache_dir=str(tmp_path / "features"))
    assert cfg.judges == ""
    run = mlflow.get_run(evaluate(cfg, experiment=experiment, progress=False))
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and all(np.isfinite(m[k]) for k in (METRIC_FID, METRIC_LPIPS, METRIC_MS_SSIM))
    assert not any(k.split("/")[0] in JUDGED for k in m)           # no CAS / consistency, not a 0
    assert [r.info.run_id for r in runs_of(experiment)] == [run.info.run_id]     # no judges / classify / segment run
    assert t[TAG_JUDGES_FROM] == JUDGES_NONE and TAG_JUDGES_RUN not in t
    command = f"skindualgen judges --profile {cfg.judges_profile} --data-dir {demo_small} --experiment {experiment}"
    assert command in capsys.readouterr().err
    for key in JUDGED:                       # the report's cell: missing, with the run's reason
        value, reason = metric_value(run, key)
        assert value is None and command in reason and run.info.run_id in reason

    # a judges run with no judge in it (both models `none`): the same, naming that run
    empty = train_judges(JudgesConfig(data_dir=str(demo_small), cas_model="none", consistency_model="none",
                                      test_fraction=TEST_FRACTION, seed=SEED), experiment=experiment, progress=False)
    run = mlflow.get_run(evaluate(dataclasses.replace(cfg, judges=empty), experiment=experiment, progress=False))
    assert not any(k.split("/")[0] in JUDGED for k in run.data.metrics)
    assert run.data.tags[TAG_MISSING_PREFIX + METRIC_CAS] == f"judges run {empty} has no CAS classifier"
    assert run.data.tags[TAG_MISSING_PREFIX + METRIC_MASK_CONSISTENCY] == \
        f"judges run {empty} has no consistency segmenter"


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
    """`gen_cfg(run_id, out, **kw)`: one class, one image per batch (a pair then depends only on its seed),
    the judges of the demo profile (the module's run, found by the model's dataset digest)."""
    def gen_cfg(run_id, out, **kw):
        return small(GenerateConfig, **{"model_uri": f"runs:/{run_id}/model", "classes": CLASS, "batch_size": 1,
                                        "output_dir": str(out), "seed": SEED, "judges_profile": "demo", **kw})
    return gen_cfg


def test_generate_threshold_zero_keeps_every_pair_and_out_of_range_is_refused(finetuned, gen_cfg, experiment,
                                                                              tmp_path):
    run_id, out = generate(gen_cfg(finetuned, tmp_path / "g0", per_class=2), experiment=experiment,
                           progress=False)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["n_generated"] == 2 and len((out / "manifest.csv").read_text().splitlines()) == 3
    assert "n_dropped" not in run.data.metrics and TAG_CONSISTENCY_MODEL not in run.data.tags   # 0: no judge

    for bad in (1.01, -0.1):
        n = len(runs_of(experiment))
        with pytest.raises(ConfigError, match=re.escape(f"--min-consistency is a Dice in [0, 1], got {bad}")):
            generate(gen_cfg(finetuned, tmp_path / "bad", min_consistency=bad), experiment=experiment,
                     progress=False)
        assert len(runs_of(experiment)) == n and not (tmp_path / "bad").exists()

    # above 0 with no judges run for the model's data in the experiment: refused before generating,
    # naming the command that makes one
    with pytest.raises(ConfigError, match=re.escape("make one with `skindualgen judges --profile demo")):
        generate(gen_cfg(finetuned, tmp_path / "none", min_consistency=0.5), experiment=experiment, progress=False)
    assert len(runs_of(experiment)) == n and not (tmp_path / "none").exists()


def test_generate_min_consistency_replaces_dropped_pairs_or_names_the_short_class(finetuned, judges_run, seg,
                                                                                   gen_cfg, judges_exp, tmp_path):
    experiment = judges_exp                          # where generate finds the judges run of the model's data
    folder = model_folder(f"runs:/{finetuned}/model")
    training = json.loads((folder / TRAINING_JSON).read_text())
    assert training["dataset_digest"] == seg.info["digest"]
    judge, how = consistency_judge(training, gen_cfg(finetuned, tmp_path / "x", min_consistency=0.5), experiment)
    assert (judge.run_id, how) == (judges_run.info.run_id, JUDGES_FOUND)   # the real-trained segmenter of the data

    # with a judge and threshold 0 nothing is dropped: one round, and the score of every seed
    pipe = DualGenPipeline.from_folder(folder)
    cfg0 = gen_cfg(finetuned, tmp_path / "x", per_class=4)
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
    run_id, out = generate(gen_cfg(finetuned, tmp_path / "g1", min_consistency=threshold, max_rounds=3),
                           experiment=experiment, progress=False)
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    assert m["n_dropped"] == m[f"n_dropped/{CLASS}"] == best > 0 and m["generation_rounds"] == best + 1
    assert m["n_generated"] == 1 and m["consistency_kept_mean"] == pytest.approx(scores[best], abs=1e-6)
    assert m["consistency_all_mean"] == pytest.approx(np.mean(scores[:best + 1]), abs=1e-6)
    with open(out / "manifest.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["label"], int(row["seed"])) == (CLASS, SEED + best)
    assert run.data.tags[TAG_CONSISTENCY_MODEL] == "unet"
    assert (run.data.tags[TAG_JUDGES_RUN], run.data.tags[TAG_JUDGES_FROM]) == (judges_run.info.run_id, JUDGES_FOUND)

    # a threshold no pair reaches: after max_rounds the run fails naming the class and kept/needed
    message = f"after 2 rounds these classes still lack pairs that pass (kept/needed): {{'{CLASS}': '0/2'}}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate(gen_cfg(finetuned, tmp_path / "g2", per_class=2, min_consistency=0.999, max_rounds=2),
                 experiment=experiment, progress=False)
    failed = max(runs_of(experiment), key=lambda r: r.info.start_time)
    assert failed.info.status == "FAILED" and not (tmp_path / "g2").exists()


# ------------------------------------------------------------------------------------------------
# 6. A generated folder belongs to its run (issue "Faults": nothing lost on folder reuse)
# ------------------------------------------------------------------------------------------------

def test_generate_never_replaces_a_finished_runs_set_and_evaluate_refuses_a_changed_one(finetuned, gen_cfg, demo_small,
                                                                                        experiment, tmp_path, small):
    from mlflow.tracking import MlflowClient

    from harness.data.generated import OWNER_FILE, read_set
    from harness.schema import TAG_SET_DIGEST
    out = tmp_path / "set"
    first, _ = generate(gen_cfg(finetuned, out, per_class=2), experiment=experiment, progress=False)
    assert json.loads((out / OWNER_FILE).read_text()) == {"run_id": first}
    assert mlflow.get_run(first).data.tags[TAG_SET_DIGEST] == read_set(out, progress=False)[1]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # a second generate into the folder of a FINISHED run: refused before it generates, nothing changed
    n = len(runs_of(experiment))
    with pytest.raises(DataError, match=re.escape(f"already holds the generated set of generate run {first} (FINISHED)")):
        generate(gen_cfg(finetuned, out, per_class=1), experiment=experiment, progress=False)
    assert len(runs_of(experiment)) == n
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # the set of a FAILED run is no one's result: replaced, and the folder then names its new run
    MlflowClient().set_terminated(first, "FAILED")
    second, _ = generate(gen_cfg(finetuned, out, per_class=1), experiment=experiment, progress=False)
    assert json.loads((out / OWNER_FILE).read_text()) == {"run_id": second}
    assert len((out / "manifest.csv").read_text().splitlines()) == 2

    # evaluate of runs:/<second> once a file of its set changed: refused, naming the run, no evaluate run
    image = next((out / "images").rglob("*.png"))
    with Image.open(image) as im:
        Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(image)
    cfg = small(EvaluateConfig, real=str(demo_small), fake=f"runs:/{second}", test_fraction=TEST_FRACTION,
                seed=SEED, cache_dir=str(tmp_path / "features"), judges="none")
    n = len(runs_of(experiment))
    with pytest.raises(DataError, match=f"not the set generate run {second} wrote"):
        evaluate(cfg, experiment=experiment, progress=False)
    assert len(runs_of(experiment)) == n
