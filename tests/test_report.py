"""The `report` stage on a real sqlite MLflow store: runs are logged with harness.tracking.stage_run
exactly as the stages log them (real-looking metrics and tags, no training), then the report is
built and every file is read back and checked against the runs it names."""
import csv
import json
import os
import re
import time

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from harness import tracking
from harness.config import ReportConfig
from harness.data.demo import DEMO_CLASSES, make_demo_dataset
from harness.data.prepare import load_prepared
from harness.report import REPORT_FILES, paper_values, report
from harness.report.claims import CLAIMS
from harness.report.figures import LABEL_H, cell_box, figure2_size, panel_image, panel_mask
from harness.report.paths import scrub, show_path, show_uri
from harness.report.runs import run_link, strip_credentials, ui_base
from harness.schema import (
    METRIC_CAS, METRIC_MASK_CONSISTENCY,
    REAL_VS_REAL, REAL_VS_SYNTH, STAGE_CLASSIFY, STAGE_EVALUATE, STAGE_EXPLAIN, STAGE_FINETUNE, STAGE_GENERATE,
    STAGE_REPORT, STAGE_SEGMENT, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_COMPARABLE, TAG_COMPARISON, TAG_DIGEST,
    TAG_EXPLAIN_MODEL, TAG_EXTRACTOR, TAG_FINETUNE_RUN, TAG_GENERATE_RUN, TAG_LPIPS_NET, TAG_OUTPUT_DIR, TAG_STAGE,
    TAG_NO_INTERVAL_PREFIX, TAG_SYNTH_RUN,
)

ONE_UNIT = "1 test unit(s): at least 2 are needed"
CELLS = {"table1": 2 * 6, "table2": 4 * 3 * 4 + 2 * 3 * 4, "table3": 4 * 2 * 4 + 2 * 2 * 2}
STAGES = (STAGE_EVALUATE, STAGE_CLASSIFY, STAGE_SEGMENT, STAGE_GENERATE, STAGE_FINETUNE, STAGE_EXPLAIN, STAGE_REPORT)


def log_run(experiment, stage, params, metrics, tags=None, digest="d" * 16, fail=False):
    """One run as a stage logs it (stage_run: stage/code/digest tags, the config as params)."""
    time.sleep(0.005)                     # distinct start times: "newest" is well defined
    try:
        with tracking.stage_run(stage, params, digest, experiment, extra_tags=tags or {}) as run:
            mlflow.log_metrics(metrics)
            if fail:
                raise RuntimeError("simulated crash")
    except RuntimeError:
        assert fail
    return run.info.run_id


def clf_metrics(base, ham=False, ci=False):
    """As classify logs them; with ci, each metric's interval [value − 7.5, value + 5.25] too."""
    m = {"accuracy": base, "sensitivity": base + 0.5, "precision": base + 2.25, "f1": base - 0.125}
    if ham:
        m.update({"ham_accuracy": base / 2, "ham_sensitivity": base / 2 + 20, "ham_precision": base / 2 + 3,
                  "ham_f1": base / 2 + 1})
    if ci:
        m.update({k + s: v + d for k, v in list(m.items()) for s, d in (("_ci_low", -7.5), ("_ci_high", 5.25))})
    return {**m, "accuracy_std": 1.0, **({"ham_n_excluded": 0} if ham else {})}


def judge_metrics(cas, consistency=None, classes=(), skip=()):
    """CAS / mask consistency as evaluate logs them: overall and per class (fractions in [0, 1])."""
    m = {"cas": cas, **{f"cas/{c}": round(cas - 0.0625 * i, 6) for i, c in enumerate(classes) if c not in skip}}
    if consistency is not None:
        m.update({"mask_consistency": consistency, "mask_nonempty": 0.96875,
                  **{f"mask_consistency/{c}": round(consistency - 0.03125 * i, 6)
                     for i, c in enumerate(classes) if c not in skip}})
    return m


def stage_counts(experiment_id):
    runs = mlflow.search_runs([experiment_id], output_format="list")
    return {"all": len(runs), **{s: sum(r.data.tags.get(TAG_STAGE) == s for r in runs) for s in STAGES}}


@pytest.fixture(scope="module")
def scenario(mlflow_store, tmp_path_factory):
    """A subset of the paper's cells as runs (re-runs, a FAILED run, a metric left out, a run without
    eval_data), a finetune -> generate lineage with a generated folder, an explain run; then one report."""
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(key, None)
    mlflow.set_tracking_uri(mlflow_store)
    while mlflow.active_run():
        mlflow.end_run()
    exp = f"test-report-{os.getpid()}"
    root = tmp_path_factory.mktemp("report")
    real_dir = make_demo_dataset(root / "real", seed=0, per_class=4, min_size=32, max_size=40)
    gen_dir = make_demo_dataset(root / "generated", seed=7, per_class=2, min_size=32, max_size=40)
    digest = load_prepared(str(real_dir), "auto", 0.176, 42, progress=False).digest
    ham = str(root / "HAM10000")
    ids = {}

    ids["finetune"] = log_run(exp, STAGE_FINETUNE, {"data_dir": str(real_dir), "test_fraction": 0.176, "seed": 42,
                                                "base_model": "stabilityai/stable-diffusion-2-base"},
                              {"train/loss": 0.1}, digest=digest,
                              tags={TAG_BASE_MODEL: "stabilityai/stable-diffusion-2-base",
                                    TAG_BASE_REVISION: "1e128c8891e52218b74cde8f26dbfc701cb99d79"})
    ids["generate"] = log_run(exp, STAGE_GENERATE, {"model_uri": f"runs:/{ids['finetune']}/model", "per_class": 2},
                              {"n_generated": 14}, digest=digest,
                              tags={TAG_FINETUNE_RUN: ids["finetune"],
                                    TAG_OUTPUT_DIR: str(gen_dir)})
    # the real test split judged for CAS only (no mask_consistency: missing cells); the synthetic set for
    # both, one class without per-class values
    ids["eval_real"] = log_run(exp, STAGE_EVALUATE, {"real": str(real_dir), "fake": ""},
                               {"fid": 41.25, "lpips": 0.5125, "ms_ssim": 0.203125, "n_pairs": 100,
                                **judge_metrics(0.9375, classes=sorted(DEMO_CLASSES))}, digest=digest,
                               tags={TAG_COMPARISON: REAL_VS_REAL,
                                     TAG_EXTRACTOR: "standard:inception-v3-compat",
                                     TAG_LPIPS_NET: "standard:lpips-alex-v0.1",
                                     TAG_COMPARABLE: "true"})
    ids["eval_synth"] = log_run(exp, STAGE_EVALUATE, {"real": str(real_dir), "fake": f"runs:/{ids['generate']}"},
                                {"fid": 73.5, "lpips": 0.53125, "ms_ssim": 0.1875, "n_pairs": 100,
                                 **judge_metrics(0.71875, 0.8125, sorted(DEMO_CLASSES), skip=("dermatofibroma",))},
                                digest=digest,
                                tags={TAG_COMPARISON: REAL_VS_SYNTH,
                                      TAG_EXTRACTOR: "fallback:inception-random-he-seed0",
                                      TAG_LPIPS_NET: "fallback:lpips-alex-random-seed0",
                                      TAG_COMPARABLE: "false",
                                      TAG_GENERATE_RUN: ids["generate"],
                                      TAG_FINETUNE_RUN: ids["finetune"]})
    synth = {"synth": f"runs:/{ids['generate']}"}
    syn_tag = {TAG_SYNTH_RUN: ids["generate"]}
    ids["dn_real_old"] = log_run(exp, STAGE_CLASSIFY, {"model": "densenet121", "train_set": "real", "eval_data": ham},
                                 clf_metrics(60.0, ham=True), digest=digest)
    ids["dn_real_new"] = log_run(exp, STAGE_CLASSIFY, {"model": "densenet121", "train_set": "real", "eval_data": ham},
                                 clf_metrics(70.75, ham=True, ci=True), digest=digest)
    ids["dn_hybrid"] = log_run(exp, STAGE_CLASSIFY, {"model": "densenet121", "train_set": "hybrid", "eval_data": ham,
                                                 **synth}, clf_metrics(79.5, ham=True), digest=digest, tags=syn_tag)
    ids["dn_hybrid_failed"] = log_run(exp, STAGE_CLASSIFY, {"model": "densenet121", "train_set": "hybrid",
                                                        "eval_data": ham, **synth},
                                      clf_metrics(99.0, ham=True), digest=digest, tags=syn_tag, fail=True)
    ids["rn_real_noham"] = log_run(exp, STAGE_CLASSIFY, {"model": "resnet34", "train_set": "real", "eval_data": ""},
                                   clf_metrics(72.5), digest=digest)
    ids["sq_synth_failed"] = log_run(exp, STAGE_CLASSIFY, {"model": "squeezenet1_1", "train_set": "synth",
                                                       "eval_data": "", **synth},
                                     clf_metrics(40.0), digest=digest, tags=syn_tag, fail=True)
    ids["unet_real"] = log_run(exp, STAGE_SEGMENT, {"model": "unet", "train_set": "real", "eval_data": ham},
                               {"dice": 78.5, "iou": 64.75, "asd": 3.25, "hd": 12.5, "ham_dice": 31.0,
                                "ham_iou": 18.5, "ham_asd": 9.0, "ham_hd": 40.0, "dice_ci_low": 70.0,
                                "dice_ci_high": 84.0}, digest=digest,
                               tags={TAG_NO_INTERVAL_PREFIX + f"ham_{m}": ONE_UNIT for m in ("dice", "iou")})
    ids["dl_hybrid_nohd"] = log_run(exp, STAGE_SEGMENT, {"model": "deeplabv3plus", "train_set": "hybrid",
                                                     "eval_data": "", **synth},
                                    {"dice": 82.0, "iou": 70.0, "asd": 2.5}, digest=digest, tags=syn_tag)
    # as the explain stage logs them: one run may hold several models' figures, plus figure3.png (all pairs)
    with tracking.stage_run(STAGE_EXPLAIN, {"models": "resnet34,densenet121"}, digest, exp,
                            extra_tags={TAG_EXPLAIN_MODEL: "resnet34,densenet121"}) as run:
        heat = root / "heatmaps"
        heat.mkdir()
        Image.fromarray(np.full((40, 90, 3), (200, 40, 40), np.uint8)).save(heat / "figure3_resnet34.png")
        Image.fromarray(np.full((30, 60, 3), (40, 40, 200), np.uint8)).save(heat / "figure3_densenet121.png")
        Image.fromarray(np.full((70, 90, 3), (0, 0, 0), np.uint8)).save(heat / "figure3.png")
        mlflow.log_artifacts(str(heat), "heatmaps")
        ids["explain"] = run.info.run_id

    experiment_id = mlflow.get_experiment_by_name(exp).experiment_id
    before = stage_counts(experiment_id)
    out_root = root / "reports"
    t0 = time.perf_counter()
    run_id = report(ReportConfig(output_dir=str(out_root)), experiment=exp)
    seconds = time.perf_counter() - t0
    after = stage_counts(experiment_id)
    folder = out_root / exp
    tables = {}
    for key in CELLS:
        with open(folder / f"{key}.csv", newline="", encoding="utf-8") as f:
            tables[key] = list(csv.DictReader(f))
    return {"exp": exp, "experiment_id": experiment_id, "ids": ids, "run_id": run_id, "folder": folder, "root": root,
            "store": mlflow_store,
            "tables": tables, "before": before, "after": after, "real_dir": real_dir, "gen_dir": gen_dir,
            "digest": digest, "md": (folder / "report.md").read_text(encoding="utf-8"),
            "header": json.loads((folder / "report.json").read_text(encoding="utf-8")), "seconds": seconds}


def cell(scenario, table, row, metric):
    return next(c for c in scenario["tables"][table] if c["row"] == row and c["metric"] == metric)


def test_every_cell_equals_the_metric_of_the_run_it_names(scenario):
    for key, n in CELLS.items():
        rows = scenario["tables"][key]
        assert len(rows) == n
        for c in rows:
            if c["status"] != "ok":
                continue
            run = mlflow.get_run(c["run_id"])
            assert float(c["ours"]) == run.data.metrics[c["run_metric"]]
            assert run.info.status == "FINISHED"
            stage = run.data.tags[TAG_STAGE]
            if key == "table1":
                assert stage == STAGE_EVALUATE and run.data.tags[TAG_COMPARISON] == c["row"]
            else:
                assert stage == (STAGE_CLASSIFY if c["section"] == "classification" else STAGE_SEGMENT)
                params = run.data.params
                assert (params["model"], params["train_set"]) == (c["model"], c["train_set"])
                assert c["run_metric"] == ("ham_" if key == "table3" else "") + c["metric"]
                if key == "table3":
                    assert params["eval_data"]
    ok = {(k, c["row"]) for k, rows in scenario["tables"].items() for c in rows if c["status"] == "ok"}
    assert ok == {("table1", REAL_VS_REAL), ("table1", REAL_VS_SYNTH),
                  ("table2", "densenet121/real"), ("table2", "densenet121/hybrid"), ("table2", "resnet34/real"),
                  ("table2", "unet/real"), ("table2", "deeplabv3plus/hybrid"), ("table3", "densenet121/real"),
                  ("table3", "densenet121/hybrid"), ("table3", "unet/real")}
    # Markdown shows the same numbers (3 decimals) and the full run id of the row
    md = (scenario["folder"] / "table2.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("| DenseNet121 | Real only |"))
    assert f"| {70.75:.3f} [{70.75 - 7.5:.1f}, {70.75 + 5.25:.1f}] | 71.257 | {70.75 - 71.257:+.3f} |" in line
    assert scenario["ids"]["dn_real_new"] in line


def test_cells_show_their_logged_interval_or_why_there_is_none(scenario):
    """Every filled cell: the run's <metric>_ci_low/_ci_high, else "no interval n" with note n giving the
    reason (the run's no_interval tag, or that it logged none); never a made-up interval."""
    for key, rows in scenario["tables"].items():
        md = (scenario["folder"] / f"{key}.md").read_text(encoding="utf-8")
        for c in rows:
            if c["status"] != "ok":
                assert c["ci_low"] == c["ci_high"] == c["ci_reason"] == ""
                continue
            run = mlflow.get_run(c["run_id"])
            low = run.data.metrics.get(c["run_metric"] + "_ci_low")
            if low is not None:
                assert float(c["ci_low"]) == low and c["ci_reason"] == ""
                assert float(c["ci_high"]) == run.data.metrics[c["run_metric"] + "_ci_high"]
            else:
                assert c["ci_low"] == c["ci_high"] == ""
                expected = run.data.tags.get(TAG_NO_INTERVAL_PREFIX + c["run_metric"], "the run logged none")
                assert c["ci_reason"] == expected
                assert re.search(r"No interval \d+: " + re.escape(expected) + r"\.", md)
    assert cell(scenario, "table3", "unet/real", "dice")["ci_reason"] == ONE_UNIT
    assert cell(scenario, "table2", "unet/real", "dice")["ci_low"] == "70.0"
    t3 = (scenario["folder"] / "table3.md").read_text(encoding="utf-8")
    notes = dict(re.findall(r"No interval (\d+): (.+)\.", t3))
    unet = next(x for x in t3.splitlines() if x.startswith("| U-Net | Real |"))
    n_one = next(n for n, why in notes.items() if why == ONE_UNIT)
    assert f"| {31.0:.3f} (no interval {n_one}) |" in unet
    dn = next(x for x in t3.splitlines() if x.startswith("| DenseNet121 | Real |"))
    assert f"| {70.75 / 2:.3f} [{70.75 / 2 - 7.5:.1f}, {70.75 / 2 + 5.25:.1f}] |" in dn
    tex = (scenario["folder"] / "table3.tex").read_text(encoding="utf-8")
    assert rf"${70.75 / 2:.3f}$ {{\scriptsize [{70.75 / 2 - 7.5:.1f}, {70.75 / 2 + 5.25:.1f}]}}" in tex


def test_newest_finished_run_wins_and_failed_runs_are_ignored(scenario):
    ids = scenario["ids"]
    assert cell(scenario, "table2", "densenet121/real", "accuracy")["run_id"] == ids["dn_real_new"]
    assert float(cell(scenario, "table2", "densenet121/real", "accuracy")["ours"]) == 70.75
    assert cell(scenario, "table3", "densenet121/real", "f1")["run_id"] == ids["dn_real_new"]
    hybrid = cell(scenario, "table2", "densenet121/hybrid", "accuracy")
    assert hybrid["run_id"] == ids["dn_hybrid"] and float(hybrid["ours"]) == 79.5      # not the newer FAILED 99
    all_ids = {c["run_id"] for rows in scenario["tables"].values() for c in rows}
    assert ids["dn_hybrid_failed"] not in all_ids and ids["sq_synth_failed"] not in all_ids
    assert ids["dn_real_old"] not in all_ids
    ignored = {r["run_id"]: r["status"] for r in scenario["header"]["ignored_runs"]}
    assert ignored == {ids["dn_hybrid_failed"]: "FAILED", ids["sq_synth_failed"]: "FAILED"}
    assert "newest FINISHED run" in scenario["md"] and "FAILED, KILLED and RUNNING runs are ignored" in scenario["md"]


def test_missing_cells_are_dashes_with_their_reason(scenario):
    ids, md = scenario["ids"], scenario["md"]
    reasons = {(m["table"], m["row"], tuple(m["metrics"])): m["reason"] for m in scenario["header"]["missing"]}
    sq = reasons[("table2", "squeezenet1_1/synth", ("Accuracy", "Sensitivity", "Precision", "F1score"))]
    assert "FAILED" in sq and ids["sq_synth_failed"] in sq
    assert reasons[("table2", "swin_tiny/real", ("Accuracy", "Sensitivity", "Precision", "F1score"))] == \
        "no classify run of swin_tiny on real"
    assert reasons[("table2", "deeplabv3plus/hybrid", ("HD",))] == \
        f"metric `hd` absent in run {ids['dl_hybrid_nohd']}"
    assert "eval_data" in reasons[("table3", "resnet34/real", ("Accuracy", "Sensitivity", "Precision", "F1score"))]
    n_missing = sum(c["status"] == "missing" for rows in scenario["tables"].values() for c in rows)
    # filled: Table 1 FID/LPIPS/MS-SSIM x 2 + CAS/consistency/non-empty of the synth row + CAS of the real one
    assert scenario["header"]["cells_missing"] == n_missing == sum(CELLS.values()) - (10 + 4 * 3 + 4 + 3 + 4 * 2 + 2)
    assert f"**Missing cells:** {n_missing} of {sum(CELLS.values())}" in md
    for rows in scenario["tables"].values():
        for c in rows:
            if c["status"] == "missing":
                assert c["ours"] == "" and c["diff"] == "" and c["reason"]
                assert f"{c['reason']}" in md
    hd = cell(scenario, "table2", "deeplabv3plus/hybrid", "hd")
    assert hd["run_id"] == ids["dl_hybrid_nohd"] and hd["ours"] == ""
    table2 = (scenario["folder"] / "table2.md").read_text(encoding="utf-8")
    swin = next(x for x in table2.splitlines() if x.startswith("| Swin Transformer | Synth only |"))
    assert swin.count("| — | 57.143 | — |") == 1 and "0.000" not in swin


def test_paper_values_beside_ours_with_the_differences(scenario):
    paper = paper_values()
    n = 0
    for key, rows in scenario["tables"].items():
        for c in rows:
            if c["in_paper"] == "false":                   # Table 1's columns beyond the paper: no paper value
                assert key == "table1" and c["paper"] == "" and c["diff"] == ""
                continue
            if key == "table1":
                expected = paper["table1"][c["row"]][c["metric"]]
            else:
                stage = STAGE_CLASSIFY if c["section"] == "classification" else STAGE_SEGMENT
                expected = paper[key][stage][c["model"]][c["train_set"]][c["metric"]]
            assert float(c["paper"]) == expected
            if c["status"] == "ok":
                assert abs(float(c["diff"]) - (float(c["ours"]) - expected)) < 1e-9
                n += 1
    assert n == 6 + 12 + 4 + 3 + 8 + 2
    # spot checks of the transcription against the paper's text
    assert paper["table1"][REAL_VS_SYNTH] == {"fid": 68.601, "lpips": 0.524, "ms_ssim": 0.210}
    assert paper["table2"]["segment"]["deeplabv3plus"]["hybrid"] == {"dice": 81.951, "iou": 69.425, "asd": 56.023,
                                                                     "hd": 89.778}
    assert paper["table3"]["classify"]["resnet34"]["hybrid"]["accuracy"] == 34.333
    t1 = (scenario["folder"] / "table1.md").read_text(encoding="utf-8")
    assert f"| Real Train vs Synth Train | 73.500 (no interval 1) | 68.601 | {73.5 - 68.601:+.3f} |" in t1


JUDGE = ("cas", "mask_consistency", "mask_nonempty")


def test_table1_cas_and_consistency_columns_are_beyond_the_paper(scenario):
    ids, h = scenario["ids"], scenario["header"]
    runs = {REAL_VS_REAL: mlflow.get_run(ids["eval_real"]),
            REAL_VS_SYNTH: mlflow.get_run(ids["eval_synth"])}
    seen = 0
    for row, run in runs.items():
        for metric in JUDGE:
            c = cell(scenario, "table1", row, metric)
            assert c["in_paper"] == "false" and c["paper"] == "" and c["diff"] == ""
            assert c["run_id"] == run.info.run_id and c["run_metric"] == metric
            if metric in run.data.metrics:
                assert c["status"] == "ok" and float(c["ours"]) == run.data.metrics[metric]
                seen += 1
            else:
                assert c["status"] == "missing" and c["reason"] == f"metric `{metric}` absent in run {run.info.run_id}"
    assert seen == 4                                     # CAS of both rows, consistency + non-empty of the synth row
    assert {c["in_paper"] for k in ("table2", "table3") for c in scenario["tables"][k]} == {"true"}
    # missing only where our value is absent: the real row's consistency and non-empty, nothing of the synth row
    t1_missing = [m for m in h["missing"] if m["table"] == "table1"]
    assert [(m["row"], m["metrics"], m["reason"]) for m in t1_missing] == [
        (REAL_VS_REAL, [label], f"metric `{metric}` absent in run {ids['eval_real']}")
        for label, metric in (("Mask consistency†", "mask_consistency"), ("Mask non-empty†", "mask_nonempty"))]
    md = (scenario["folder"] / "table1.md").read_text(encoding="utf-8")
    header = next(x for x in md.splitlines() if x.startswith("| Data for calculations"))
    assert "| CAS† | paper | Δ | Mask consistency† | paper | Δ | Mask non-empty† | paper | Δ | run |" in header
    synth = next(x for x in md.splitlines() if x.startswith("| Real Train vs Synth Train |"))
    na = "(no interval 1)"
    assert f"| {0.71875:.3f} {na} | — | — | {0.8125:.3f} {na} | — | — | {0.96875:.3f} {na} | — | — |" in synth
    real = next(x for x in md.splitlines() if x.startswith("| Real Train vs Real Test |"))
    assert f"| {0.9375:.3f} {na} | — | — | — | — | — | — | — | — |" in real
    assert "† not in the paper" in md and "† not in the paper" in scenario["md"]
    tex = (scenario["folder"] / "table1.tex").read_text(encoding="utf-8")
    assert r"CAS\dag{}" in tex and r"\dag{} not in the paper" in tex and "†" not in tex


def test_per_class_table_under_table1(scenario):
    ids, folder = scenario["ids"], scenario["folder"]
    rows = list(csv.DictReader(open(folder / "table1_per_class.csv", newline="", encoding="utf-8")))
    runs = {REAL_VS_SYNTH: mlflow.get_run(ids["eval_synth"]),
            REAL_VS_REAL: mlflow.get_run(ids["eval_real"])}
    classes = sorted({k.split("/", 1)[1] for r in runs.values() for k in r.data.metrics
                      if k.startswith((METRIC_CAS + "/", METRIC_MASK_CONSISTENCY + "/"))})
    assert classes == sorted(DEMO_CLASSES)
    expected = [(name, comparison, metric) for name in classes for comparison in runs
                for metric in ("cas", "mask_consistency")]
    assert [(r["row"], r["section"], r["metric"]) for r in rows] == expected
    n_ok = 0
    for r in rows:
        run = runs[r["section"]]
        assert r["run_id"] == run.info.run_id and r["in_paper"] == "false" and r["paper"] == ""
        key = f"{r['metric']}/{r['row']}"
        assert r["run_metric"] == key
        if key in run.data.metrics:
            assert r["status"] == "ok" and float(r["ours"]) == run.data.metrics[key]
            n_ok += 1
        else:
            assert r["status"] == "missing" and r["reason"] == f"metric `{key}` absent in run {run.info.run_id}"
    assert n_ok == 2 * (len(classes) - 1) + len(classes)      # synth lacks dermatofibroma; real test: CAS only
    # the Markdown table sits under Table 1 in the report, one row per class, synthetic columns first
    md = scenario["md"]
    assert md.index("## Table 1") < md.index("### Per-class CAS and mask consistency (not in the paper)") < \
        md.index("## Table 2")
    per_class = (folder / "table1_per_class.md").read_text(encoding="utf-8")
    assert per_class in md
    assert "| Class | CAS (synth) | Mask consistency (synth) | CAS (real test) | Mask consistency (real test) |" \
        in per_class
    m = runs[REAL_VS_SYNTH].data.metrics
    r = runs[REAL_VS_REAL].data.metrics
    assert (f"| melanoma | {m['cas/melanoma']:.3f} | {m['mask_consistency/melanoma']:.3f} | "
            f"{r['cas/melanoma']:.3f} | — |") in per_class
    assert f"| dermatofibroma | — | — | {r['cas/dermatofibroma']:.3f} | — |" in per_class
    tex = (folder / "table1_per_class.tex").read_text(encoding="utf-8")
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    assert spec == "lrrrr" and all(tex_width(x) == 5 for x in tex.splitlines() if x.endswith(r"\\"))
    record = scenario["header"]["table1_per_class"]
    assert record["classes"] == classes and [c["ours"] for c in record["cells"]] == [r["ours"] for r in rows]
    assert scenario["header"]["cells"] == sum(CELLS.values())          # per-class cells are not counted


def tex_width(line: str) -> int:
    """Columns a LaTeX table line spans: its cells, a \\multicolumn{n} counting n."""
    cells = re.split(r"(?<!\\)&", line.removesuffix(r"\\"))
    return sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)


def test_files_exist_and_parse(scenario):
    folder = scenario["folder"]
    for key in CELLS:
        with open(folder / f"{key}.csv", newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
        assert {"ours", "paper", "diff", "run_id", "run_url", "status", "reason"} <= set(header)
        tex = (folder / f"{key}.tex").read_text(encoding="utf-8")
        for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
            assert rule in tex
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
        body = [x for x in tex.splitlines() if x.endswith(r"\\")]
        assert body and all(tex_width(x) == len(spec) for x in body)
        assert "_" not in tex.replace(r"\_", "").split(r"\begin{tabular}")[1]      # escaped
        md = (folder / f"{key}.md").read_text(encoding="utf-8")
        tables = [x for x in md.splitlines() if x.startswith("|")]
        widths = {x.count(" | ") for x in tables if not x.startswith("|:")}
        assert len(widths) <= 2 and tables
    assert r"\texttt{" + scenario["ids"]["unet_real"][:8] + "}" in (folder / "table2.tex").read_text()


def test_figure2_one_row_per_class(scenario):
    from harness.data.layouts import load_dataset
    info = json.loads((scenario["folder"] / "figure2.json").read_text())
    classes = sorted(DEMO_CLASSES)
    assert [r["class"] for r in info["rows"]] == classes
    cell_px = ReportConfig().figure_cell
    with Image.open(scenario["folder"] / "figure2.png") as im:
        fig = np.asarray(im.convert("RGB"))
    assert (fig.shape[1], fig.shape[0]) == figure2_size(len(classes), cell_px)
    gen = {s.id: s for s in load_dataset(scenario["gen_dir"]).samples}
    prepared = load_prepared(str(scenario["real_dir"]), "auto", 0.176, 42, progress=False)
    real = {s.id: s for s in prepared.dataset.samples}
    for r, row in enumerate(info["rows"]):
        assert real[row["real_id"]].label == gen[row["generated_id"]].label == row["class"]
        assert real[row["real_id"]].split == "train"
        expected = [panel_image(real[row["real_id"]].image, cell_px), panel_mask(real[row["real_id"]].mask, cell_px),
                    panel_image(gen[row["generated_id"]].image, cell_px),
                    panel_mask(gen[row["generated_id"]].mask, cell_px)]
        for c, panel in enumerate(expected):
            x0, y0, x1, y1 = cell_box(r, c, cell_px)
            assert np.array_equal(fig[y0:y1, x0:x1], np.asarray(panel))
    assert f"generate run {scenario['ids']['generate']}" in scenario["md"]


def test_figure3_stacks_the_explain_figures(scenario):
    with Image.open(scenario["folder"] / "figure3.png") as im:
        im = im.convert("RGB")
        assert im.size == (90, LABEL_H + 30 + LABEL_H + 40)          # paper's model order: DenseNet121 first
        assert im.getpixel((30, LABEL_H + 15)) == (40, 40, 200)
        assert im.getpixel((45, 2 * LABEL_H + 30 + 20)) == (200, 40, 40)
    rows = scenario["header"]["figure3"]["rows"]
    assert [r["model"] for r in rows] == ["densenet121", "resnet34"]
    assert {r["run_id"] for r in rows} == {scenario["ids"]["explain"]}


def test_header_names_versions_base_model_digests_and_the_fallback(scenario):
    md, h = scenario["md"], scenario["header"]
    assert "NOT comparable with published numbers" in md
    assert "fallback:inception-random-he-seed0" in md and "standard:inception-v3-compat" in md
    assert "`stabilityai/stable-diffusion-2-base` @ `1e128c8891e52218b74cde8f26dbfc701cb99d79`" in md
    assert h["base_models"][0]["finetune_run_id"] == scenario["ids"]["finetune"]
    assert list(h["dataset_digests"]) == [scenario["digest"]]
    assert f"`{tracking.code_version()}`" in md
    assert "in %; ASD and HD in pixels" in md


def test_report_run_is_finished_with_the_files_and_creates_no_other_run(scenario):
    run = mlflow.get_run(scenario["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STAGE] == STAGE_REPORT
    assert run.data.tags[TAG_DIGEST] == scenario["digest"]
    assert run.data.tags[TAG_COMPARABLE] == "false"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(scenario["run_id"])}
    assert artifacts == set(REPORT_FILES) == {p.name for p in scenario["folder"].iterdir()}
    before, after = scenario["before"], scenario["after"]
    assert after == {**before, STAGE_REPORT: before[STAGE_REPORT] + 1, "all": before["all"] + 1}
    assert run.data.metrics["cells_missing"] == scenario["header"]["cells_missing"]


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------
# Runs with per-image artifacts, as classify and segment write them: N test images in pairs of a
# lesion (group), 3 classes, 2 fold models per classify run. A run "correct on the first k images"
# makes the paired differences of nested runs one-signed, so some verdicts are certain whatever the
# resample: ResNet34 hybrid ⊂ real (every check fails), synth ⊃ real (synth < real fails).

N_TEST, CLASSES = 100, ("bcc", "mel", "nv")
CLF = {"densenet121": {"real": 70, "hybrid": 79, "synth": 60},       # nested: hybrid +9, synth −10
       "resnet34": {"real": 71, "hybrid": 60, "synth": 75},          # hybrid below real, synth above it
       "squeezenet1_1": {"real": 64, "hybrid": 72},                  # its hybrid run has no artifact
       "swin_tiny": {"real": 74, "hybrid": 90}}
NO_ARTIFACT = ("squeezenet1_1", "hybrid")
FID = {REAL_VS_REAL: 40.0, REAL_VS_SYNTH: 55.5}


def image_ids():
    return [f"img{i:03d}" for i in range(N_TEST)], [f"lesion{i // 2:03d}" for i in range(N_TEST)]


def fold_predictions(k: int) -> np.ndarray:
    """(2 folds, N) predicted class indices: correct on the first k images (fold 1 swaps image k−1 for k)."""
    y = np.arange(N_TEST) % len(CLASSES)
    pred = np.stack([(y + 1) % len(CLASSES)] * 2)
    pred[0, :k] = y[:k]
    pred[1, :k - 1], pred[1, k] = y[:k - 1], y[k]
    return pred


def seg_scores(model, train_set) -> np.ndarray:
    """(N, 4) dice, iou, asd, hd per image: U-Net real around 78/64/5/20; hybrid +0.75 Dice, +0.6 IoU,
    −0.5 ASD, −2 HD per image (± a little); DeepLabV3+ real: U-Net real + 2 Dice, +2 IoU, +1 ASD, −5 HD."""
    i = np.arange(N_TEST)
    base = np.stack([78 + (i % 5) - 2, 64 + (i % 7) - 3, 5 + 0.25 * (i % 3), 20 + (i % 4)], axis=1).astype(float)
    wiggle = ((i % 3) - 1)[:, None] * np.array([0.05, 0.03, 0.05, 0.2])
    shift = {("unet", "real"): (0, 0, 0, 0), ("unet", "hybrid"): (0.75, 0.6, -0.5, -2.0),
             ("deeplabv3plus", "real"): (2.0, 2.0, 1.0, -5.0)}[(model, train_set)]
    return base + np.array(shift) + (wiggle if shift != (0, 0, 0, 0) else 0)


def log_with_artifact(exp, stage, params, metrics, folder, name, rows, tmp):
    path = tmp / f"{params['model']}-{params['train_set']}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    time.sleep(0.005)
    with tracking.stage_run(stage, params, "d" * 16, exp) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(path), folder)
    return run.info.run_id


def log_classify(exp, model, train_set, k, tmp):
    from harness.downstream.metrics import classification_metrics
    ids, groups = image_ids()
    y, pred = np.arange(N_TEST) % len(CLASSES), fold_predictions(k)
    per_fold = [classification_metrics(y, p, list(CLASSES)) for p in pred]
    metrics = {m: float(np.mean([f[m] for f in per_fold])) for m in ("accuracy", "sensitivity", "precision", "f1")}
    params = {"model": model, "train_set": train_set, "eval_data": ""}
    if (model, train_set) == NO_ARTIFACT:
        return log_run(exp, STAGE_CLASSIFY, params, metrics)
    rows = [{"fold": m, "id": ids[i], "group": groups[i], "true_label": CLASSES[y[i]],
             "predicted_label": CLASSES[pred[m, i]], **{f"prob_{c}": f"{float(c == CLASSES[pred[m, i]]):.6f}"
                                                       for c in CLASSES}}
            for m in range(2) for i in range(N_TEST)]
    return log_with_artifact(exp, STAGE_CLASSIFY, params, metrics, "predictions", "test.csv", rows, tmp)


def log_segment(exp, model, train_set, tmp):
    ids, groups = image_ids()
    scores = seg_scores(model, train_set)
    rows = [{"id": ids[i], "label": CLASSES[i % 3], "group": groups[i],
             **{m: repr(float(v)) for m, v in zip(("dice", "iou", "asd", "hd"), scores[i])},
             "empty_pred": 0, "empty_gt": 0, "pred_mask": f"pred_masks/test/{ids[i]}.png"}
            for i in range(N_TEST)][::-1]                          # another image order than the classify runs
    metrics = dict(zip(("dice", "iou", "asd", "hd"), map(float, scores.mean(axis=0))))
    return log_with_artifact(exp, STAGE_SEGMENT, {"model": model, "train_set": train_set, "eval_data": ""},
                             metrics, "segmentation", "test.csv", rows, tmp)


@pytest.fixture(scope="module")
def claims_report(mlflow_store, tmp_path_factory):
    """An experiment whose runs make a claim hold, some fail, one inconclusive, one unmeasured."""
    mlflow.set_tracking_uri(mlflow_store)
    exp = f"test-claims-{os.getpid()}"
    tmp = tmp_path_factory.mktemp("claims-artifacts")
    for model, sets in CLF.items():
        for train_set, k in sets.items():
            log_classify(exp, model, train_set, k, tmp)
    for model, train_set in (("unet", "real"), ("unet", "hybrid"), ("deeplabv3plus", "real")):
        log_segment(exp, model, train_set, tmp)
    for comparison, fid in FID.items():
        log_run(exp, STAGE_EVALUATE, {}, {"fid": fid, "lpips": 0.5, "ms_ssim": 0.2},
                tags={TAG_COMPARISON: comparison, TAG_EXTRACTOR: "standard:inception-v3-compat"})
    out = tmp_path_factory.mktemp("claims")
    run_id = report(ReportConfig(output_dir=str(out)), experiment=exp)
    folder = out / exp
    record = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {"run_id": run_id, "md": (folder / "report.md").read_text(encoding="utf-8"), "folder": folder,
            "claims": {c["key"]: c for c in record["claims"]}, "summary": record["claims_summary"]}


def expected_result(test: str, low, high) -> str:
    """The three-way rule, written out again for the tests used: > 0, < 0, in [a, b]."""
    if low is None:
        return "inconclusive"
    if test == "> 0":
        ok = [low > 0, high > 0]
    elif test == "< 0":
        ok = [low < 0, high < 0]
    else:
        a, b = map(float, re.match(r"in \[(.+), (.+)\]", test).groups())
        if a <= low and high <= b:
            return "passes"
        return "fails" if high < a or low > b else "inconclusive"
    return "passes" if all(ok) else "fails" if not any(ok) else "inconclusive"


def expected_verdict(results) -> str:
    measured = [r for r in results if r != "not measured"]
    if not measured:
        return "not measured"
    if "fails" in measured:
        return "does not hold"
    return "holds" if all(r == "passes" for r in measured) else "inconclusive"


def numpy_paired(per_a, per_b, groups, n=4000, seed=3):
    """An independent paired bootstrap of mean(a) − mean(b): the same drawn lesions for both runs, each
    run's models drawn on their own with the small-M weight spread; per_a (Ma, N), per_b (Mb, N)."""
    units = {}
    for i, g in enumerate(groups):
        units.setdefault(g, []).append(i)
    units = list(units.values())
    rng, out = np.random.default_rng(seed), []

    def model_mean(per, images):
        means = per[:, images].mean(axis=1)
        k = len(means)
        if k == 1:
            return means[0]
        w = np.bincount(rng.integers(0, k, k), minlength=k) / k
        return np.sum((1 / k + np.sqrt(k / (k - 1)) * (w - 1 / k)) * means)

    for _ in range(n):
        images = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        out.append(model_mean(per_a, images) - model_mean(per_b, images))
    return np.percentile(out, [2.5, 97.5])


def test_claim_definitions_quote_a_section_and_state_a_rule():
    assert [c.key for c in CLAIMS] == ["hybrid_gain_classification", "synth_below_real", "hybrid_gain_segmentation",
                                       "deeplab_beats_unet", "ham_hybrid_gain", "fid_synth_above_real"]
    for c in CLAIMS:
        assert c.quotes and all(section and len(quote) > 40 for section, quote in c.quotes) and c.readings


def test_every_check_is_decided_on_its_paired_interval(claims_report):
    """Each measured check: ours = a − b of the logged metrics, its paired interval holds it, the result
    follows the three-way rule on that interval; the paper's is a point comparison."""
    seen = set()
    for claim in claims_report["claims"].values():
        for i, reading in enumerate(claim["readings"]):
            results = [chk["results"][i]["ours"] for chk in claim["checks"]]
            assert reading["verdict"] == expected_verdict(results)
        for chk in claim["checks"]:
            if chk["ours"] is None:
                assert [r["ours"] for r in chk["results"]] == ["not measured"] * len(chk["results"])
                continue
            ma = mlflow.get_run(chk["a"]["run_id"]).data.metrics[chk["a"]["run_metric"]]
            mb = mlflow.get_run(chk["b"]["run_id"]).data.metrics[chk["b"]["run_metric"]]
            assert chk["ours"] == ma - mb
            if chk["ci_low"] is not None:
                assert chk["ci_low"] - 1e-9 <= chk["ours"] <= chk["ci_high"] + 1e-9
                assert chk["half_width"] == pytest.approx((chk["ci_high"] - chk["ci_low"]) / 2)
            else:
                assert chk["ci_reason"]
            for r in chk["results"]:
                assert r["ours"] == expected_result(r["test"], chk["ci_low"], chk["ci_high"])
                point = chk["paper"]
                assert r["paper"] == expected_result(r["test"], point, point).replace("inconclusive", "fails")
                seen.add(r["ours"])
    assert seen == {"passes", "fails", "inconclusive"}


def test_paired_intervals_agree_with_an_independent_bootstrap(claims_report):
    """Accuracy and Dice/ASD differences recomputed from the runs' artifacts in plain numpy (3 points /
    0.2 px tolerance: two Monte Carlo estimates of the same percentiles on 50 lesions)."""
    ids, groups = image_ids()
    y = np.arange(N_TEST) % len(CLASSES)
    checked = 0
    for claim in claims_report["claims"].values():
        for chk in claim["checks"]:
            if chk["ci_low"] is None:
                continue
            (ma, sa), (mb, sb) = (chk[x]["row"].split("/") for x in ("a", "b"))
            metric = chk["a"]["metric"]
            if metric == "accuracy":
                per_a = 100.0 * (fold_predictions(CLF[ma][sa]) == y)
                per_b = 100.0 * (fold_predictions(CLF[mb][sb]) == y)
                tol = 3.0
            elif metric in ("dice", "asd"):
                col = ("dice", "iou", "asd", "hd").index(metric)
                per_a, per_b = seg_scores(ma, sa)[None, :, col], seg_scores(mb, sb)[None, :, col]
                tol = 0.2
            else:
                continue
            low, high = numpy_paired(per_a, per_b, groups)
            assert abs(chk["ci_low"] - low) < tol and abs(chk["ci_high"] - high) < tol, (chk["quantity"], low, high)
            checked += 1
    assert checked == 9                      # 5 accuracy (SqueezeNet has no artifact), 2 Dice, 2 ASD
    # pairing matters: ResNet34's real and hybrid accuracies (71, 60) each have intervals about 18 points
    # wide that overlap; paired, the shared images cancel and the whole interval is below 0
    rn = next(c for c in claims_report["claims"]["hybrid_gain_classification"]["checks"]
              if c["part"] == "ResNet34" and c["a"]["metric"] == "accuracy")
    assert rn["ci_high"] < 0


def test_claims_verdicts_on_the_runs(claims_report):
    claims, md = claims_report["claims"], claims_report["md"]
    # 1. ResNet34's hybrid run is below its real one on every image it differs: fails either reading
    c = claims["hybrid_gain_classification"]
    assert c["verdict"] == "does not hold" and c["readings"][1]["verdict"] == "does not hold"
    rn = [chk for chk in c["checks"] if chk["part"] == "ResNet34"]
    assert [r["ours"] for chk in rn for r in chk["results"]] == ["fails"] * 4
    sq = [chk for chk in c["checks"] if chk["part"] == "SqueezeNet1.1"]
    assert all(chk["ci_low"] is None and "has no predictions/test.csv artifact" in chk["ci_reason"] for chk in sq)
    assert all(r["ours"] == "inconclusive" for chk in sq for r in chk["results"])
    assert "(no interval: run " in md and "has no predictions/test.csv artifact)" in md
    # 2. ResNet34's synth run is above its real one: "< 0" fails
    assert claims["synth_below_real"]["verdict"] == "does not hold"
    # 3. U-Net: Dice +0.75 and IoU +0.6 per image (± a little): inside [0.5, 1]; ASD and HD lower: holds
    c = claims["hybrid_gain_segmentation"]
    assert c["verdict_text"] == "holds (partly measured)"
    assert c["not_measured"] == ["DeepLabV3+ (all checks): no segment run of deeplabv3plus on hybrid"]
    unet = [chk for chk in c["checks"] if chk["part"] == "U-Net"]
    assert all(0.5 <= chk["ci_low"] <= chk["ci_high"] <= 1 for chk in unet[:2])
    # 4. DeepLabV3+ has the higher ASD on every image: fails
    assert claims["deeplab_beats_unet"]["verdict"] == "does not hold"
    # 5. no run with eval_data: not measured
    assert claims["ham_hybrid_gain"]["verdict"] == "not measured"
    # 6. FID is one number per evaluate run: no interval, so +15.5 decides nothing
    c = claims["fid_synth_above_real"]
    assert c["verdict"] == "inconclusive" and c["checks"][0]["ours"] == 55.5 - 40.0
    why = "no interval for one of the two values: the run logged none"
    assert c["checks"][0]["ci_reason"] == why
    assert c["checks"][0]["results"][0]["paper"] == "passes"           # the paper's point comparison
    assert ("| Table 1 | FID: real train vs synth train − real train vs real test | 55.500 − 40.000 = +15.500 "
            f"(no interval: {why}) | — | — |") in md


def test_unpaired_difference_of_two_intervals():
    from harness.intervals import Interval
    from harness.report.evidence import unpaired_difference
    assert unpaired_difference(Interval(50.0, 61.0), Interval(36.0, 44.0)) == Interval(6.0, 25.0)
    assert not unpaired_difference(Interval(50.0, 61.0), Interval(None, None, "x")).ok


def test_claims_counts_precision_and_forest_on_the_report_run(claims_report):
    run = mlflow.get_run(claims_report["run_id"])
    verdicts = [c["verdict"] for c in claims_report["claims"].values()]
    expected = {"claims/holds": 1, "claims/does_not_hold": 3, "claims/inconclusive": 1, "claims/not_measured": 1}
    assert {k: verdicts.count(v) for k, v in (("claims/holds", "holds"), ("claims/does_not_hold", "does not hold"),
                                              ("claims/inconclusive", "inconclusive"),
                                              ("claims/not_measured", "not measured"))} == expected
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("claims/")} == expected
    assert claims_report["summary"] == expected
    md = claims_report["md"]
    assert md.rstrip().endswith(" |") and md.index("## Figure 3") < md.index("## Claims")   # the last section
    assert "Verdicts of the 6 claims: holds 1 · does not hold 3 · inconclusive 1 · not measured 1." in md
    assert "**What this experiment can and cannot tell.**" in md
    for claim in CLAIMS:                       # every quote verbatim, with its section
        for section, quote in claim.quotes:
            assert f"> “{quote}” — *{section}*" in md
    # needed test units: n · (half-width / claimed effect)², the paper's own difference as the effect
    dn = next(c for c in claims_report["claims"]["hybrid_gain_classification"]["checks"]
              if c["part"] == "DenseNet121" and c["a"]["metric"] == "accuracy")
    assert dn["n_units"] == N_TEST // 2
    assert dn["needed_units"] == int(np.ceil(50 * (dn["half_width"] / abs(dn["paper"])) ** 2))
    assert f"| {dn['half_width']:.1f} | {dn['needed_units']} (of 50) |" in md
    assert "- **Precision:** half-widths of the" in md
    # the forest figure: in the report folder, linked from the report and logged with the run
    assert Image.open(claims_report["folder"] / "claims_forest.png").size[1] > 300
    assert "](claims_forest.png)" in md
    assert "claims_forest.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_claims_in_the_main_scenario(scenario):
    claims = {c["key"]: c for c in scenario["header"]["claims"]}
    # the two evaluate runs used different feature extractors: the FID comparison is not measured
    fid = claims["fid_synth_above_real"]
    assert fid["verdict"] == "not measured" and fid["checks"][0]["ours"] is None
    assert "fallback:inception-random-he-seed0" in fid["not_measured"][0]
    assert "standard:inception-v3-compat" in fid["not_measured"][0]
    # only DenseNet121 has both real and hybrid runs: +8.75 points, but the runs have no predictions
    # artifact, so no paired interval: inconclusive, partly measured (a point estimate decides nothing)
    c = claims["hybrid_gain_classification"]
    assert c["verdict_text"] == "inconclusive (partly measured)"
    measured = [chk for chk in c["checks"] if chk["ours"] is not None]
    assert [chk["ours"] for chk in measured] == [79.5 - 70.75, 79.5 - 70.75]
    assert all(chk["ci_low"] is None and "has no predictions/test.csv artifact" in chk["ci_reason"]
               for chk in measured)
    metrics = mlflow.get_run(scenario["run_id"]).data.metrics
    verdicts = [c["verdict"] for c in claims.values()]
    for key, v in (("holds", "holds"), ("does_not_hold", "does not hold"), ("inconclusive", "inconclusive")):
        assert metrics[f"claims/{key}"] == verdicts.count(v)
    assert metrics["claims/not_measured"] == verdicts.count("not measured") >= 1


def test_links_and_credentials(monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert ui_base("sqlite:///x/mlflow.db") == ""
    assert ui_base("https://user:secret@mlflow.example.org/") == "https://mlflow.example.org"
    assert ui_base("sqlite:///x.db", "http://localhost:5000/") == "http://localhost:5000"
    assert run_link("http://h:5000", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    assert run_link("", "3", "abc") == ""
    assert strip_credentials("file:///tmp/a@b") == "file:///tmp/a@b"


def test_paths_shown_relative_to_the_working_directory_or_by_their_last_components(tmp_path):
    cwd = tmp_path / "work"
    assert show_path(cwd / "outputs" / "generate-1", cwd) == "outputs/generate-1"
    assert show_path(cwd, cwd) == "."
    assert show_path("/srv/data/isic-gpt/images", cwd) == "…/isic-gpt/images"
    assert show_path("/mlflow.db", cwd) == "…/mlflow.db"
    assert show_path("outputs/x", cwd) == "outputs/x" and show_path("", cwd) == ""
    assert show_path("/srv/data", "/") == "…/srv/data"                  # never relative to the root
    assert show_uri(f"sqlite:///{cwd}/mlflow.db", cwd) == "sqlite:///mlflow.db"
    assert show_uri("sqlite:////srv/x/mlflow.db", cwd) == "sqlite:///…/x/mlflow.db"
    assert show_uri("sqlite:///mlflow.db", cwd) == "sqlite:///mlflow.db"
    assert show_uri(f"file://{cwd}/mlruns", cwd) == "mlruns" and show_uri("/srv/a/mlruns", cwd) == "…/a/mlruns"
    assert show_uri("https://u:pw@mlflow.example.org/x", cwd) == "https://mlflow.example.org/x"
    text = (f"cannot read /srv/data/x/y.png (see {cwd}/logs/a.txt); runs:/abc/model, https://h/#/x and "
            "DenseNet121 / Real only are left alone")
    assert scrub(text, cwd) == ("cannot read …/x/y.png (see logs/a.txt); runs:/abc/model, https://h/#/x and "
                                "DenseNet121 / Real only are left alone")


REPORT_TEXTS = ("report.md", "report.json", "figure2.json")


def absolute_paths(scenario) -> list[str]:
    store_dir = os.path.dirname(scenario["store"].removeprefix("sqlite:///"))
    return [str(scenario["root"]), str(scenario["root"].parent), store_dir, str(scenario["real_dir"]),
            str(scenario["gen_dir"]), os.getcwd()]


def test_no_absolute_path_in_the_report(scenario):
    texts = {name: (scenario["folder"] / name).read_text(encoding="utf-8") for name in REPORT_TEXTS}
    for name, text in texts.items():
        for path in absolute_paths(scenario):
            assert path not in text, (name, path)
        assert not re.search(r"[\s(`'\"]/[A-Za-z]", text), name          # no "/tmp/...", "/home/..." at all
    store = scenario["store"].removeprefix("sqlite:///")          # outside the working directory: last 2 parts
    shown = f"sqlite:///…/{os.path.basename(os.path.dirname(store))}/mlflow.db"
    assert scenario["header"]["tracking_uri"] == shown and f"tracking store `{shown}`" in scenario["md"]
    gen = scenario["gen_dir"]
    assert f"generated set: …/{gen.parent.name}/{gen.name} (generate run" in scenario["md"]
    assert f"real data: …/{scenario['real_dir'].parent.name}/{scenario['real_dir'].name} (" in scenario["md"]


def test_paths_under_the_working_directory_and_mlflow_ui_url_links(scenario, monkeypatch, tmp_path):
    """The same experiment reported again from inside its data folder, with MLFLOW_UI_URL set (no --ui-url):
    paths are relative to the working directory and every run is a link into that UI."""
    monkeypatch.chdir(scenario["root"])
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:5000/")
    run_id = report(ReportConfig(output_dir=str(tmp_path)), experiment=scenario["exp"])
    folder = tmp_path / scenario["exp"]
    md = (folder / "report.md").read_text(encoding="utf-8")
    for name in REPORT_TEXTS:
        text = (folder / name).read_text(encoding="utf-8")
        assert str(scenario["root"]) not in text and str(tmp_path) not in text
    assert "generated set: generated (generate run" in md and "real data: real (" in md
    exp_id, ids = scenario["experiment_id"], scenario["ids"]
    base = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/"
    assert f"Report run [{run_id}]({base}{run_id})" in md
    assert f"[{ids['dn_real_new']}]({base}{ids['dn_real_new']})" in md
    rows = list(csv.DictReader(open(folder / "table2.csv", newline="", encoding="utf-8")))
    assert {r["run_url"] for r in rows if r["run_id"]} == {base + r["run_id"] for r in rows if r["run_id"]}
    assert json.loads((folder / "report.json").read_text(encoding="utf-8"))["ui_base"] == "http://127.0.0.1:5000"
    assert ui_base("sqlite:///x.db", "http://ui:5000") == "http://ui:5000"       # --ui-url wins over the variable
    assert ui_base("sqlite:///x.db") == "http://127.0.0.1:5000"


def test_empty_experiment_and_cli_with_links_and_digest_filter(experiment, tmp_path):
    """An experiment with no stage runs: every cell missing, no figures, a FINISHED report run. Then the
    CLI with --ui-url and --dataset-digest: only runs of that digest count, cells link into the UI."""
    from entrypoints.report import report as report_cmd
    tracking.setup(experiment)
    run_id = report(ReportConfig(output_dir=str(tmp_path)), experiment=experiment)
    folder = tmp_path / experiment
    h = json.loads((folder / "report.json").read_text())
    assert h["cells_missing"] == h["cells"] == sum(CELLS.values())
    assert h["figure2"]["reason"] == "no generate run" and h["figure3"]["reason"] == "no explain run"
    assert {c["verdict"] for c in h["claims"]} == {"not measured"}
    assert mlflow.get_run(run_id).data.metrics["claims/not_measured"] == len(h["claims"]) == 6
    assert not (folder / "figure2.png").exists() and mlflow.get_run(run_id).info.status == "FINISHED"

    keep = log_run(experiment, STAGE_CLASSIFY, {"model": "resnet34", "train_set": "synth"}, clf_metrics(50.0),
                   digest="a" * 16)
    log_run(experiment, STAGE_CLASSIFY, {"model": "resnet34", "train_set": "synth"}, clf_metrics(55.0), digest="b" * 16)
    result = CliRunner().invoke(report_cmd, ["--experiment", experiment, "--output-dir", str(tmp_path / "cli"),
                                             "--ui-url", "https://user:secret@mlflow.example.org/",
                                             "--dataset-digest", "a" * 16])
    assert result.exit_code == 0, result.output
    assert "cells: 4 of 124 filled" in result.output
    folder = tmp_path / "cli" / experiment
    rows = list(csv.DictReader(open(folder / "table2.csv", newline="", encoding="utf-8")))
    c = next(r for r in rows if r["row"] == "resnet34/synth" and r["metric"] == "accuracy")
    exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
    assert c["run_id"] == keep and float(c["ours"]) == 50.0
    assert c["run_url"] == f"https://mlflow.example.org/#/experiments/{exp_id}/runs/{keep}"
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert f"[{keep}](https://mlflow.example.org/#/experiments/{exp_id}/runs/{keep})" in md
    assert "secret" not in md and "secret" not in (folder / "table2.tex").read_text()
    assert "\\href{https://mlflow.example.org/\\#/experiments/" in (folder / "table2.tex").read_text()
