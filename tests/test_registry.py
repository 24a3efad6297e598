"""Registry: the lower-FID finetune run becomes champion, no duplicate versions, generation pinned
to an alias or version reproduces the run URI's output, and moving the alias changes it.

The evaluate runs here are made by the test with chosen FID values: this file tests the selection
and registry mechanics; FID itself is tested in test_quality.py."""
import mlflow
import numpy as np
import pytest
from PIL import Image

from harness import tracking
from harness.config import FinetuneConfig, GenerateConfig, RegisterConfig
from harness.dualgen.generate import generate
from harness.dualgen.train import finetune
from harness.registry import RegistryError, register_best
from harness.schema import (
    REAL_VS_SYNTH, STAGE_EVALUATE, STAGE_GENERATE, TAG_COMPARISON, TAG_FINETUNE_RUN, TAG_MODEL_VERSION, TAG_STAGE,
)


def fake_evaluation(experiment, finetune_run, fid):
    with tracking.stage_run(STAGE_EVALUATE, {"fake": f"runs:/{finetune_run}"}, experiment=experiment,
                            extra_tags={TAG_COMPARISON: REAL_VS_SYNTH,
                                        TAG_FINETUNE_RUN: finetune_run}):
        mlflow.log_metric("fid", fid)


def pixels(folder):
    return {p.name.split("_")[-1]: np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_register_picks_lowest_fid_and_pins_generation(tiny_folder, demo_small, experiment, tmp_path, small):
    runs = {}
    for rank in (2, 4):
        cfg = small(FinetuneConfig, data_dir=str(demo_small), base_model=str(tiny_folder), max_train_steps=3,
                    lora_rank=rank, output_dir=str(tmp_path / f"r{rank}"), test_fraction=0.25, learning_rate=1e-2)
        runs[rank] = finetune(cfg, experiment=experiment, progress=False)
    with pytest.raises(RegistryError, match="no FINISHED evaluate run"):
        register_best(RegisterConfig(name=f"m-{experiment}"), experiment)
    fake_evaluation(experiment, runs[2], 80.0)
    fake_evaluation(experiment, runs[4], 60.0)
    name = f"m-{experiment}"
    version, chosen = register_best(RegisterConfig(name=name), experiment)
    assert chosen == runs[4]
    client = mlflow.tracking.MlflowClient()
    mv = client.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == version and mv.run_id == runs[4]
    assert mv.tags["fid"] == "60" and mv.tags["finetune_run_id"] == runs[4]
    assert mv.tags["base_model"] == str(tiny_folder) and len(mv.tags["base_revision"]) == 64
    assert register_best(RegisterConfig(name=name), experiment)[0] == version      # no duplicate
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    def gen(uri, out):
        generate(small(GenerateConfig, model_uri=uri, classes="melanoma,dermatofibroma",
                       output_dir=str(tmp_path / out), seed=9), experiment=experiment, progress=False)
        return pixels(tmp_path / out)

    by_alias, by_run = gen(f"models:/{name}@champion", "a"), gen(f"runs:/{runs[4]}/model", "b")
    assert by_alias.keys() == by_run.keys() and all(np.array_equal(by_alias[k], by_run[k]) for k in by_alias)
    by_version = gen(f"models:/{name}/{version}", "v")
    assert all(np.array_equal(by_alias[k], by_version[k]) for k in by_alias)
    # a better evaluation of the rank-2 model moves the alias, and generation follows it
    fake_evaluation(experiment, runs[2], 40.0)
    version2, chosen2 = register_best(RegisterConfig(name=name), experiment)
    assert chosen2 == runs[2] and version2 != version
    moved = gen(f"models:/{name}@champion", "m")
    assert any(not np.array_equal(moved[k], by_alias[k]) for k in moved)
    gen_runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                  filter_string=f"tags.`{TAG_STAGE}` = '{STAGE_GENERATE}'")
    assert {r.data.tags.get(TAG_MODEL_VERSION) for r in gen_runs} >= {f"{name}/{version}",
                                                                                f"{name}/{version2}"}


class NotDualGen(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_registered_model_that_is_not_dualgen_is_a_clear_error(experiment, tmp_path, small):
    tracking.setup(experiment)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=NotDualGen())
    name = f"other-{experiment}"
    mlflow.register_model(info.model_uri, name)
    with pytest.raises(ValueError, match="is not a SkinDualGen dual-generation model"):
        generate(small(GenerateConfig, model_uri=f"models:/{name}/1", output_dir=str(tmp_path / "g")),
                 experiment=experiment, progress=False)
    assert not (tmp_path / "g").exists()
