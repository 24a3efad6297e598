"""`prepare` end to end on the demo data and on each layout: manifest, split, MLflow run."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from PIL import Image

from entrypoints.cli import cli
from harness.config import PrepareConfig
from harness.data.prepare import load_prepared, prepare
from harness.data.records import sha256_file
from harness.schema import STAGE_PREPARE, TAG_DIGEST, TAG_STAGE


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from harness.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", seed=0)


def runs_of(experiment):
    exp = mlflow.get_experiment_by_name(experiment)
    return [] if exp is None else mlflow.search_runs([exp.experiment_id], output_format="list")


def test_prepare_demo_logs_dataset_input_digest_and_counts(demo_dir, experiment, tmp_path):
    cfg = PrepareConfig(data_dir=str(demo_dir), output_dir=str(tmp_path / "prepared"))
    prepared, manifest = prepare(cfg, experiment=experiment, progress=False)
    assert manifest == (tmp_path / "prepared" / "demo" / "manifest.csv").resolve()
    [run] = runs_of(experiment)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_DIGEST] == prepared.digest
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.digest == prepared.digest and inp.dataset.name == "demo"
    assert run.data.metrics["n_samples"] == 140 and run.data.metrics["class_count/melanocytic nevus"] == 50
    assert run.data.metrics["n_train"] + run.data.metrics["n_test"] == 140
    for label, n in prepared.dataset.class_counts().items():
        test_n = run.data.metrics[f"test_count/{label}"]
        assert abs(test_n - 0.176 * n) <= 1 and test_n >= 1
    # manifest: one row per sample, hashes match the files, paths relative to the CSV
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 140
    for row in rows[:10]:
        assert sha256_file(manifest.parent / row["image"]) == row["image_sha256"]
        assert sha256_file(manifest.parent / row["mask"]) == row["mask_sha256"]
    # the prepared manifest loads back to the same split and digest without re-hashing
    again = load_prepared(str(manifest), progress=False)
    assert again.digest == prepared.digest
    assert {s.id: s.split for s in again.dataset} == {s.id: s.split for s in prepared.dataset}


def test_digest_is_stable_across_runs_and_copies(demo_dir, tmp_path):
    import shutil
    a = load_prepared(str(demo_dir), progress=False).digest
    shutil.copytree(demo_dir, tmp_path / "copy")
    assert load_prepared(str(tmp_path / "copy"), progress=False).digest == a
    assert load_prepared(str(demo_dir), seed=1, progress=False).digest != a   # another split


@pytest.mark.parametrize("fixture,expected", [
    ("isic_dir", {"melanocytic nevus": 6, "melanoma": 6, "vascular lesion": 6}),
    ("ham_dir", {"benign keratosis": 6, "melanocytic nevus": 12, "melanoma": 8, "vascular lesion": 4}),
    ("manifest_csv", {"melanoma": 6, "nevus": 6}),
])
def test_cli_prepare_each_layout(fixture, expected, request, experiment, tmp_path):
    data = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["prepare", "--data-dir", str(data), "--layout", "auto",
                                   "--output-dir", str(out), "--experiment", experiment])
    assert res.exit_code == 0, res.output
    [manifest] = out.glob("*/manifest.csv")
    rows = list(csv.DictReader(open(manifest)))
    counts = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    assert counts == expected
    assert {r["split"] for r in rows} == {"train", "test"}
    [run] = runs_of(experiment)
    assert run.info.status == "FINISHED"


def test_cli_prepare_bad_data_fails_cleanly(isic_dir, experiment, tmp_path):
    bad = isic_dir / "masks" / "melanoma" / "ISIC_000000.png"
    Image.new("L", (7, 7)).save(bad)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["prepare", "--data-dir", str(isic_dir), "--output-dir", str(out),
                                   "--experiment", experiment])
    assert res.exit_code == 2
    assert "ISIC_000000.png: mask size 7x7 differs" in res.output
    assert not list(out.rglob("*.csv"))
    assert [r.info.status for r in runs_of(experiment)] == ["FAILED"]


@pytest.mark.slow
def test_mlflow_run_prepare_entry_point(tmp_path, demo_dir):
    """`mlflow run . -e prepare --env-manager local` through the real MLproject file."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
           "MLFLOW_EXPERIMENT_NAME": "e2e-prepare",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # as if activated
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):   # mlflow.set_experiment exports the id
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(repo), "-e", "prepare", "--env-manager",
                           "local", "-P", f"data_dir={demo_dir}", "-P", f"output_dir={tmp_path / 'prep'}"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name("e2e-prepare")
    [run] = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_STAGE] == STAGE_PREPARE
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags[TAG_DIGEST]
    assert run.data.metrics["n_samples"] == 140
    assert (tmp_path / "prep" / "demo" / "manifest.csv").is_file()
