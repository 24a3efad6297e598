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
    TAG_SYNTH_RUN,
)

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


def clf_metrics(base, ham=False):
    m = {"accuracy": base, "sensitivity": base + 0.5, "precision": base + 2.25, "f1": base - 0.125,
         "accuracy_std": 1.0}
    if ham:
        m.update({"ham_accuracy": base / 2, "ham_sensitivity": base / 2 + 20, "ham_precision": base / 2 + 3,
                  "ham_f1": base / 2 + 1, "ham_n_excluded": 0})
    return m


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
                                 clf_metrics(70.75, ham=True), digest=digest)
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
                                "ham_iou": 18.5, "ham_asd": 9.0, "ham_hd": 40.0}, digest=digest)
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
    assert f"| {70.75:.3f} | 71.257 | {70.75 - 71.257:+.3f} |" in line
    assert scenario["ids"]["dn_real_new"] in line


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
    assert f"| Real Train vs Synth Train | 73.500 | 68.601 | {73.5 - 68.601:+.3f} |" in t1


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
    assert f"| {0.71875:.3f} | — | — | {0.8125:.3f} | — | — | {0.96875:.3f} | — | — |" in synth
    real = next(x for x in md.splitlines() if x.startswith("| Real Train vs Real Test |"))
    assert f"| {0.9375:.3f} | — | — | — | — | — | — | — | — |" in real
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

CLF = {"densenet121": {"real": 70.0, "hybrid": 79.0, "synth": 60.0},      # +9: in [8, 15]; synth below
       "resnet34": {"real": 71.0, "hybrid": 80.5, "synth": 75.0},         # +9.5; synth ABOVE real
       "squeezenet1_1": {"real": 64.0, "hybrid": 72.5},                   # +8.5; no synth run
       "swin_tiny": {"real": 74.0, "hybrid": 90.0}}                       # +16: above 15, still > 0
SEG = {("unet", "real"): {"dice": 78.0, "iou": 64.0, "asd": 5.0, "hd": 20.0},
       ("unet", "hybrid"): {"dice": 78.75, "iou": 64.5, "asd": 4.5, "hd": 18.0},
       ("deeplabv3plus", "real"): {"dice": 80.0, "iou": 66.0, "asd": 6.0, "hd": 15.0}}   # ASD worse than U-Net
FID = {REAL_VS_REAL: 40.0, REAL_VS_SYNTH: 55.5}


@pytest.fixture(scope="module")
def claims_report(mlflow_store, tmp_path_factory):
    """An experiment whose runs make some claims hold, some fail and one unmeasured; one report of it."""
    mlflow.set_tracking_uri(mlflow_store)
    exp = f"test-claims-{os.getpid()}"
    for model, sets in CLF.items():
        for train_set, base in sets.items():
            log_run(exp, STAGE_CLASSIFY, {"model": model, "train_set": train_set, "eval_data": ""}, clf_metrics(base))
    for (model, train_set), m in SEG.items():
        log_run(exp, STAGE_SEGMENT, {"model": model, "train_set": train_set, "eval_data": ""}, m)
    for comparison, fid in FID.items():
        log_run(exp, STAGE_EVALUATE, {}, {"fid": fid, "lpips": 0.5, "ms_ssim": 0.2},
                tags={TAG_COMPARISON: comparison, TAG_EXTRACTOR: "standard:inception-v3-compat"})
    out = tmp_path_factory.mktemp("claims")
    run_id = report(ReportConfig(output_dir=str(out)), experiment=exp)
    folder = out / exp
    record = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {"run_id": run_id, "md": (folder / "report.md").read_text(encoding="utf-8"),
            "claims": {c["key"]: c for c in record["claims"]}, "summary": record["claims_summary"]}


def verdict(results):
    """The rule, written out again: holds if every measured result holds and one was measured."""
    measured = [r for r in results if r is not None]
    return "not measured" if not measured else "holds" if all(measured) else "does not hold"


def test_claim_definitions_quote_a_section_and_state_a_rule():
    assert [c.key for c in CLAIMS] == ["hybrid_gain_classification", "synth_below_real", "hybrid_gain_segmentation",
                                       "deeplab_beats_unet", "ham_hybrid_gain", "fid_synth_above_real"]
    for c in CLAIMS:
        assert c.quotes and all(section and len(quote) > 40 for section, quote in c.quotes) and c.readings


def test_claims_hold_fail_or_are_not_measured_on_the_runs(claims_report):
    claims, md = claims_report["claims"], claims_report["md"]
    paper = paper_values()
    # 1. hybrid − real in [8, 15] points for accuracy and F1, every classifier: Swin is +16 -> does not hold;
    #    the weaker reading (> 0) holds
    c = claims["hybrid_gain_classification"]
    gains = {m: CLF[m]["hybrid"] - CLF[m]["real"] for m in CLF}
    assert c["verdict"] == verdict([8 <= g <= 15 for g in gains.values()]) == "does not hold"
    assert c["readings"][1]["verdict"] == verdict([g > 0 for g in gains.values()]) == "holds"
    assert not c["partly_measured"] and c["not_measured"] == []
    assert len(c["checks"]) == 8
    for chk in c["checks"]:
        model, metric = chk["a"]["row"].split("/")[0], chk["a"]["metric"]
        assert chk["a"]["row"] == f"{model}/hybrid" and chk["b"]["row"] == f"{model}/real"
        run_a = mlflow.get_run(chk["a"]["run_id"])
        assert run_a.data.params["model"] == model and run_a.data.params["train_set"] == "hybrid"
        assert chk["ours"] == run_a.data.metrics[metric] - mlflow.get_run(chk["b"]["run_id"]).data.metrics[metric]
        assert chk["ours"] == pytest.approx(gains[model])
        p = paper["table2"]["classify"][model]
        assert chk["paper"] == pytest.approx(p["hybrid"][metric] - p["real"][metric])
        assert [r["ours"] for r in chk["results"]] == [
            "holds" if 8 <= gains[model] <= 15 else "does not hold", "holds"]
    p = paper["table2"]["classify"]["densenet121"]
    assert (f"| DenseNet121 | Accuracy: hybrid − real (points) | {79.0:.3f} − {70.0:.3f} = {9.0:+.3f} | "
            f"{p['hybrid']['accuracy']:.3f} − {p['real']['accuracy']:.3f} = "
            f"{p['hybrid']['accuracy'] - p['real']['accuracy']:+.3f} | in [8, 15]: ✓ · ✓ | > 0: ✓ · ✓ |") in md
    assert "| Swin Transformer | Accuracy: hybrid − real (points) | 90.000 − 74.000 = +16.000 |" in md
    # the paper's own Table 2 gives +5.7 to +9.2 points: the strict reading fails on it too
    paper_gains = [p["hybrid"][m] - p["real"][m] for p in paper["table2"]["classify"].values()
                   for m in ("accuracy", "f1")]
    assert c["paper_verdict"] == verdict([8 <= g <= 15 for g in paper_gains])
    # 2. synth below real: ResNet34's synth run is above its real run -> does not hold (partly measured)
    c = claims["synth_below_real"]
    assert c["verdict"] == "does not hold" and c["partly_measured"]
    assert {chk["part"]: chk["ours"] for chk in c["checks"] if chk["ours"] is not None} == \
        {"DenseNet121": pytest.approx(-10.0), "ResNet34": pytest.approx(4.0)}
    assert any(x.startswith("SqueezeNet1.1 (all checks): no classify run of squeezenet1_1 on synth")
               for x in c["not_measured"])
    assert any(x.startswith("U-Net (all checks): no segment run of unet on synth") for x in c["not_measured"])
    # 3. U-Net: Dice +0.75, IoU +0.5 (in [0.5, 1]), ASD and HD lower -> holds; DeepLabV3+ has no hybrid run
    c = claims["hybrid_gain_segmentation"]
    unet = [chk for chk in c["checks"] if chk["part"] == "U-Net"]
    expected = {m: SEG[("unet", "hybrid")][m] - SEG[("unet", "real")][m] for m in ("dice", "iou", "asd", "hd")}
    assert {chk["a"]["metric"]: chk["ours"] for chk in unet} == expected
    assert c["verdict"] == verdict([0.5 <= expected["dice"] <= 1, 0.5 <= expected["iou"] <= 1,
                                    expected["asd"] < 0, expected["hd"] < 0]) == "holds"
    assert c["partly_measured"] and c["verdict_text"] == "holds (partly measured)"
    assert c["not_measured"] == ["DeepLabV3+ (all checks): no segment run of deeplabv3plus on hybrid"]
    assert "— **holds (partly measured)**" in md
    # 4. DeepLabV3+ vs U-Net on real: Dice, IoU, HD better but ASD worse -> does not hold
    c = claims["deeplab_beats_unet"]
    real = [chk for chk in c["checks"] if chk["part"] == "Real only"]
    assert [chk["ours"] for chk in real] == [SEG[("deeplabv3plus", "real")][m] - SEG[("unet", "real")][m]
                                             for m in ("dice", "iou", "asd", "hd")]
    assert [chk["results"][0]["ours"] for chk in real] == ["holds", "holds", "does not hold", "holds"]
    assert c["verdict"] == "does not hold"
    # 5. no run with eval_data: not measured, for every classifier, saying why
    c = claims["ham_hybrid_gain"]
    assert c["verdict"] == "not measured" and all(chk["ours"] is None for chk in c["checks"])
    assert [x.split(" (")[0] for x in c["not_measured"]] == ["DenseNet121", "ResNet34", "SqueezeNet1.1",
                                                             "Swin Transformer"]
    assert all("with eval_data (HAM10000)" in x for x in c["not_measured"])
    # 6. FID 55.5 vs 40.0 with the same extractor -> holds
    c = claims["fid_synth_above_real"]
    assert c["verdict"] == "holds" and c["checks"][0]["ours"] == 55.5 - 40.0
    assert "| Table 1 | FID: real train vs synth train − real train vs real test | 55.500 − 40.000 = +15.500 |" in md


def test_claims_counts_on_the_report_run(claims_report):
    metrics = mlflow.get_run(claims_report["run_id"]).data.metrics
    verdicts = [c["verdict"] for c in claims_report["claims"].values()]
    assert verdicts.count("holds") == 2 and verdicts.count("does not hold") == 3 and verdicts.count("not measured") == 1
    assert {k: v for k, v in metrics.items() if k.startswith("claims/")} == {
        "claims/holds": 2, "claims/does_not_hold": 3, "claims/not_measured": 1}
    assert claims_report["summary"] == {"claims/holds": 2, "claims/does_not_hold": 3, "claims/not_measured": 1}
    md = claims_report["md"]
    assert md.rstrip().endswith(" |") and md.index("## Figure 3") < md.index("## Claims")   # the last section
    assert "Verdicts of the 6 claims: holds 2 · does not hold 3 · not measured 1." in md
    for claim in CLAIMS:                       # every quote verbatim, with its section
        for section, quote in claim.quotes:
            assert f"> “{quote}” — *{section}*" in md


def test_claims_in_the_main_scenario(scenario):
    claims = {c["key"]: c for c in scenario["header"]["claims"]}
    # the two evaluate runs used different feature extractors: the FID comparison is not measured
    fid = claims["fid_synth_above_real"]
    assert fid["verdict"] == "not measured" and fid["checks"][0]["ours"] is None
    assert "fallback:inception-random-he-seed0" in fid["not_measured"][0]
    assert "standard:inception-v3-compat" in fid["not_measured"][0]
    # only DenseNet121 has both real and hybrid runs: +8.75 points -> holds, partly measured
    c = claims["hybrid_gain_classification"]
    assert c["verdict_text"] == "holds (partly measured)"
    assert [chk["ours"] for chk in c["checks"] if chk["ours"] is not None] == [79.5 - 70.75, 79.5 - 70.75]
    metrics = mlflow.get_run(scenario["run_id"]).data.metrics
    verdicts = [c["verdict"] for c in claims.values()]
    assert metrics["claims/holds"] == verdicts.count("holds")
    assert metrics["claims/does_not_hold"] == verdicts.count("does not hold")
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
