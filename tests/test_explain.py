"""`explain` end to end: two quick classify runs (squeezenet1_1, 64 px, 1 epoch, 2 folds; real and
hybrid) on a small demo set, then GradCAM / Saliency / Occlusion maps, the Figure 3 layout, Saliency
against torch.autograd, determinism, run picking and its errors; GradCAM layers of all four models."""
import csv
import itertools
import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from entrypoints.stages import COMMANDS
from harness.config import ClassifyConfig, ExplainConfig
from harness.data.augment import load_pair
from harness.data.layouts import load_dataset
from harness.data.prepare import load_prepared
from harness.downstream import classify as classify_mod
from harness.downstream import explain as explain_mod
from harness.downstream import runtime
from harness.downstream.sets import DownstreamError
from harness.schema import STAGE_EXPLAIN, TAG_DIGEST, TAG_EXPLAIN_MODEL, TAG_HYBRID_RUN, TAG_REAL_RUN, TAG_STAGE

SIZE = 64          # squeezenet1_1's last stage is 3x3 at 64 px (1x1 at 32 px: a flat GradCAM)
_names = itertools.count()


def artifact(run_id, path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_store, small):
    """A demo set (7 classes x 5), a synthetic stand-in (another demo draw), and one real and one
    hybrid classify run in their own experiment."""
    from harness.data.demo import make_demo_dataset
    root = tmp_path_factory.mktemp("explain")
    real = make_demo_dataset(root / "real", seed=0, per_class=5, min_size=48, max_size=64)
    synth = make_demo_dataset(root / "synth", seed=1, per_class=3, min_size=48, max_size=64)
    synth_csv = root / "synth.csv"
    with open(synth_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "label", "description", "split"])
        for s in load_dataset(synth).samples:
            writer.writerow([s.image, s.mask, s.label, s.description, "train"])
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(key, raising=False)
        mlflow.set_tracking_uri(mlflow_store)
        experiment = f"explain-{os.getpid()}-{next(_names)}"
        runs = {ts: classify_mod.classify(small(ClassifyConfig, data_dir=str(real), train_set=ts, synth=str(synth_csv),
                                                model="squeezenet1_1", image_size=SIZE),
                                          experiment=experiment, progress=False)
                for ts in ("real", "hybrid")}
        yield {"data": real, "experiment": experiment, **runs}


def test_explain_cli_figure_maps_and_saliency(trained):
    result = CliRunner().invoke(COMMANDS["explain"], ["--experiment", trained["experiment"], "--profile", "demo"])
    assert result.exit_code == 0, result.output
    exp = mlflow.get_experiment_by_name(trained["experiment"])
    [run] = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{STAGE_EXPLAIN}'",
                               output_format="list")
    rid, tags, params = run.info.run_id, run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert tags[TAG_REAL_RUN] == trained["real"] and tags[TAG_HYBRID_RUN] == trained["hybrid"]
    assert tags[TAG_EXPLAIN_MODEL] == "squeezenet1_1"
    assert tags[TAG_DIGEST] == mlflow.get_run(trained["real"]).data.tags[TAG_DIGEST]
    assert params["gradcam_layer.squeezenet1_1"] == "features"

    # default images: 2 seeded test images of 2 different classes
    prepared = load_prepared(str(trained["data"]), progress=False)
    test = {s.id: s for s in prepared.dataset.split("test").samples}
    ids = params["image_ids"].split(",")
    assert len(ids) == 2 and all(i in test for i in ids) and len({test[i].label for i in ids}) == 2

    # the figure: rows x 8 panels of the stated pixel size
    with Image.open(artifact(rid, "heatmaps/figure3_squeezenet1_1.png")) as im:
        assert im.format == "PNG"
        assert im.size == (8 * explain_mod.PANEL_PX, explain_mod.TITLE_PX + 2 * explain_mod.ROW_PX)
    with Image.open(artifact(rid, "heatmaps/figure3.png")) as im:
        assert im.size == (8 * explain_mod.PANEL_PX, explain_mod.TITLE_PX + 2 * explain_mod.ROW_PX)

    summary = json.loads(artifact(rid, "heatmaps/summary.json").read_text())
    [pair] = summary["pairs"]
    assert [i["id"] for i in pair["images"]] == ids
    for item in pair["images"]:
        for train_set in ("real", "hybrid"):
            assert item[train_set]["occlusion_window"] == 8 and item[train_set]["occlusion_stride"] == 4
            for method in explain_mod.METHODS:
                h = np.load(artifact(rid, f"heatmaps/squeezenet1_1/{train_set}/{item['id']}/{method}.npy"))
                assert h.shape == (SIZE, SIZE) and h.dtype == np.float32
                assert h.min() >= 0 and h.max() == pytest.approx(1.0) and h.std() > 0, (train_set, method)
    for key in ("heat_in_lesion/squeezenet1_1/real/gradcam", "heat_in_lesion/squeezenet1_1/hybrid/occlusion",
                "lesion_area/squeezenet1_1"):
        assert 0 <= run.data.metrics[key] <= 1

    # Saliency = |d logit_pred / d input|, recomputed with torch.autograd from the loaded model
    device = runtime.pick_device()             # the device explain used (CPU here; exact_cuda on a GPU)
    model, info = classify_mod.load_classifier(trained["hybrid"])
    image, _mask = load_pair(test[ids[0]], SIZE)
    x = classify_mod.ImageSet(np.array(image[None]), np.zeros(1, np.int64))[0][0][None]
    x = x.to(device).requires_grad_(True)
    with explain_mod.exact_cuda():
        logits = model.to(device)(x)
        pred = int(logits.argmax(1))
        logits[0, pred].backward()
    assert info["classes"][pred] == pair["images"][0]["hybrid"]["predicted"]
    grad = x.grad[0].abs().cpu().numpy()
    folder = f"heatmaps/squeezenet1_1/hybrid/{ids[0]}"
    raw = np.load(artifact(rid, f"{folder}/saliency_raw.npy"))
    np.testing.assert_allclose(raw, grad, rtol=1e-5, atol=1e-6 * grad.max())
    panel = np.load(artifact(rid, f"{folder}/saliency.npy"))
    np.testing.assert_allclose(panel, grad.max(0) / grad.max(), rtol=1e-5, atol=1e-6)

    # deterministic: the same runs and images through the API give identical maps and figure
    again = explain_mod.explain(ExplainConfig(real_run=trained["real"], hybrid_run=trained["hybrid"],
                                              images=",".join(ids)), experiment=trained["experiment"], progress=False)
    for method in explain_mod.METHODS:
        for name in (f"{method}.npy", f"{method}_raw.npy"):
            a = np.load(artifact(rid, f"{folder}/{name}"))
            b = np.load(artifact(again, f"{folder}/{name}"))
            assert np.array_equal(a, b), name
    assert (artifact(rid, "heatmaps/figure3_squeezenet1_1.png").read_bytes()
            == artifact(again, "heatmaps/figure3_squeezenet1_1.png").read_bytes())


def test_run_picking_errors(trained, experiment):
    real, hybrid = trained["real"], trained["hybrid"]
    # a missing run id; a run of the wrong training set; an empty experiment - all before any run starts
    with pytest.raises(DownstreamError, match="--real-run 0123456789abcdef0123456789abcdef: no such run"):
        explain_mod.explain(ExplainConfig(real_run="0123456789abcdef0123456789abcdef"), experiment=experiment,
                            progress=False)
    with pytest.raises(DownstreamError, match="trained on 'real', not 'hybrid'"):
        explain_mod.explain(ExplainConfig(real_run=real, hybrid_run=real), experiment=experiment, progress=False)
    with pytest.raises(DownstreamError, match="no model has both .* it has no FINISHED classify runs"):
        explain_mod.explain(ExplainConfig(), experiment=experiment, progress=False)
    # given only the real run, the hybrid one is looked up in the (empty) experiment: the error names it
    with pytest.raises(DownstreamError, match="no FINISHED classify run of squeezenet1_1 trained on 'hybrid'"):
        explain_mod.explain(ExplainConfig(real_run=real), experiment=experiment, progress=False)
    with pytest.raises(DownstreamError, match=r"--images: \['nope'\] not in"):
        explain_mod.explain(ExplainConfig(real_run=real, hybrid_run=hybrid, images="nope"), experiment=experiment,
                            progress=False)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is None or mlflow.search_runs([exp.experiment_id], output_format="list") == []
    # in the trained experiment, asking for a model without runs lists what is there
    listed = f"no FINISHED classify run of resnet34 .*{real} \\(squeezenet1_1, real\\)"
    with pytest.raises(DownstreamError, match=listed):
        explain_mod.explain(ExplainConfig(model="resnet34"), experiment=trained["experiment"], progress=False)
    result = CliRunner().invoke(COMMANDS["explain"], ["--experiment", experiment, "--real-run", "deadbeef"])
    assert result.exit_code == 2 and "no such run" in result.output


def test_default_images_one_per_class_and_seeded(trained):
    test = load_prepared(str(trained["data"]), progress=False).dataset.samples     # 7 classes x 5
    classes = {s.label for s in test}
    picks = explain_mod.choose_images(test, len(classes), seed=3)
    assert {s.label for s in picks} == classes
    assert [s.id for s in explain_mod.choose_images(test, 2, seed=3)] == [s.id for s in picks[:2]]
    more = explain_mod.choose_images(test, len(classes) + 3, seed=3)
    assert len({s.id for s in more}) == len(classes) + 3 and more[:len(classes)] == picks
    seeds = {tuple(s.id for s in explain_mod.choose_images(test, 2, seed=k)) for k in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize("name", ["densenet121", "resnet34", "squeezenet1_1", "swin_tiny"])
def test_gradcam_layer_of_every_model(name):
    torch.manual_seed(0)
    model = classify_mod.build_model(name, 3, SIZE).eval()
    forward, layer = explain_mod.cam_target(model, name)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(forward(x), model(x), atol=1e-5)       # Swin's reshape wrapper changes nothing
    assert any(m is layer for m in forward.modules())
    out = explain_mod.attributions(model, name, x, window=16, stride=16)
    cam = out["raw"]["gradcam"]
    assert cam.ndim == 2 and 1 <= cam.shape[0] < SIZE and np.isfinite(cam).all() and cam.min() >= 0
    assert out["raw"]["saliency"].shape == out["raw"]["occlusion"].shape == (3, SIZE, SIZE)
    for method in explain_mod.METHODS:
        h = explain_mod.heat(method, out["raw"][method], SIZE)
        assert h.shape == (SIZE, SIZE) and 0 <= h.min() and h.max() <= 1
