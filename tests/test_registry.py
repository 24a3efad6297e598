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
    REAL_VS_SYNTH, STAGE_EVALUATE, STAGE_FINETUNE, STAGE_GENERATE, TAG_ALIAS, TAG_ALIAS_DECISION, TAG_COMPARISON,
    TAG_EXTRACTOR, TAG_FINETUNE_RUN, TAG_MODEL_VERSION, TAG_REGISTERED, TAG_STAGE,
)


def fake_evaluation(experiment, finetune_run, fid, half=5.0):
    """An evaluate run as the stage logs it, with FID `fid` and (half > 0) its interval fid ± half."""
    with tracking.stage_run(STAGE_EVALUATE, {"fake": f"runs:/{finetune_run}"}, experiment=experiment,
                            extra_tags={TAG_COMPARISON: REAL_VS_SYNTH, TAG_EXTRACTOR: "standard:inception-v3-compat",
                                        TAG_FINETUNE_RUN: finetune_run}):
        mlflow.log_metrics({"fid": fid, **({"fid_ci_low": fid - half, "fid_ci_high": fid + half} if half else {})})


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


def fake_finetune(experiment):
    """A finetune-stage run with a (trivial) logged model: the registry mechanics need no training."""
    with tracking.stage_run(STAGE_FINETUNE, {"seed": 42}, "d" * 16, experiment) as run:
        # requirements given: inferring them (importing and scanning the model's code) costs ~10 s a model
        mlflow.pyfunc.log_model(name="model", python_model=NotDualGen(), pip_requirements=["mlflow"])
    return run.info.run_id


def test_the_alias_moves_only_on_evidence_and_every_decision_is_recorded(experiment):
    """One registered model, candidates from separate experiments (each the best of its own): the first
    takes `champion`; a worse one and an equal one (intervals overlapping) do not; a clearly better one
    (interval wholly below) does; one without an interval does not, unless a minimum improvement is
    given. Every decision is in the history, and the CLI prints it."""
    from click.testing import CliRunner

    from entrypoints.register import registry_history
    from harness.registry import history
    name, client = f"gate-{experiment}", mlflow.tracking.MlflowClient()
    steps = [("first", 60.0, 5.0, {}, True), ("worse", 66.0, 5.0, {}, False), ("equal", 58.0, 5.0, {}, False),
             ("better", 40.0, 4.0, {}, True), ("no interval", 30.0, 0.0, {}, False),
             ("no interval, margin 5", 30.0, 0.0, {"min_fid_improvement": 5.0}, True)]
    versions = {}
    for label, fid, half, options, moves in steps:
        exp = f"{experiment}-{label.replace(' ', '-').replace(',', '')}"
        ft = fake_finetune(exp)
        fake_evaluation(exp, ft, fid, half)
        before = str(client.get_model_version_by_alias(name, "champion").version) if versions else None
        version, chosen = register_best(RegisterConfig(name=name, **options), exp)
        versions[label] = version
        assert chosen == ft
        holder = str(client.get_model_version_by_alias(name, "champion").version)
        assert holder == (version if moves else before), label
        run = mlflow.search_runs(experiment_names=[exp], output_format="list",
                                 filter_string="tags.`skindualgen.stage` = 'register'")[0]
        assert run.data.tags[TAG_ALIAS_DECISION] == ("moved" if moves else "kept"), label
        assert run.data.tags[TAG_REGISTERED] == f"{name}/{version}"
        assert run.data.tags[TAG_ALIAS] == ("champion" if moves else "candidate")
        if not moves:
            assert str(client.get_model_version_by_alias(name, "candidate").version) == version
    entries = history(name)
    assert [e["moved"] for e in entries] == [moves for *_, moves in steps]
    assert [e["candidate"]["version"] for e in entries] == list(versions.values())
    assert entries[0]["previous"] is None and entries[1]["previous"]["version"] == versions["first"]
    assert entries[3]["previous"]["version"] == versions["first"] and entries[4]["previous"]["version"] == versions["better"]
    assert entries[1]["candidate"]["low"] == 61.0 and entries[1]["previous"]["high"] == 65.0
    assert "does not lie below" in entries[2]["reason"] and "lies below" in entries[3]["reason"]
    assert "no FID interval" in entries[4]["reason"] and "minimum improvement 5" in entries[5]["reason"]
    assert all(e["rule"] == "interval" and e["register_run_id"] for e in entries)
    out = CliRunner().invoke(registry_history, ["--name", name])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(steps) and "| kept |" in rows[1] and "| moved |" in rows[3]
    bad = CliRunner().invoke(registry_history, ["--name", f"none-{experiment}"])
    assert bad.exit_code == 2 and "no registered model" in bad.output
