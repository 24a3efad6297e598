"""tune: 4 trials -> 4 nested trial runs and the best settings on the parent; generate takes them;
an interrupted study resumes with only the missing trials."""
import mlflow

from harness import tracking
from harness.config import FinetuneConfig, GenerateConfig, TuneConfig
from harness.dualgen.generate import generate
from harness.dualgen.train import finetune
from harness.schema import STAGE_TUNE_TRIAL, TAG_MLFLOW_PARENT_RUN, TAG_STAGE
from harness.tune import tune


def test_tune_trials_best_settings_and_resume(tiny_folder, demo_small, experiment, tmp_path, small):
    ft = finetune(small(FinetuneConfig, data_dir=str(demo_small), base_model=str(tiny_folder),
                        output_dir=str(tmp_path / "ft"), test_fraction=0.25), experiment=experiment, progress=False)
    cfg = small(TuneConfig, model_uri=f"runs:/{ft}/model", data_dir=str(demo_small), trials=2, steps_min=2,
                steps_max=5, storage=f"sqlite:///{tmp_path / 'optuna.db'}", cache_dir=str(tmp_path / "cache"),
                test_fraction=0.25)
    first = tune(cfg, experiment=experiment, progress=False)          # "interrupted" after 2 trials
    cfg.trials = 4
    parent = tune(cfg, experiment=experiment, progress=False)         # resumes: 2 more
    run = mlflow.get_run(parent)
    assert run.data.metrics["n_trials"] == 4 and run.data.metrics["n_trials_this_run"] == 2
    trials = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                filter_string=f"tags.`{TAG_STAGE}` = '{STAGE_TUNE_TRIAL}'")
    assert len(trials) == 4
    assert {t.data.tags[TAG_MLFLOW_PARENT_RUN] for t in trials} == {first, parent}
    # the resumed run suggests new settings, not its first run's again
    assert len({(t.data.params["num_inference_steps"], t.data.params["guidance_scale"]) for t in trials}) == 4
    best = min(trials, key=lambda t: t.data.metrics["fid"])
    assert run.data.params["best_num_inference_steps"] == best.data.params["num_inference_steps"]
    assert float(run.data.params["best_guidance_scale"]) == float(best.data.params["guidance_scale"])
    assert run.data.metrics["best_fid"] == best.data.metrics["fid"]
    assert all(2 <= int(t.data.params["num_inference_steps"]) <= 5 for t in trials)
    gen, _ = generate(small(GenerateConfig, model_uri=f"runs:/{ft}/model", classes="melanoma",
                            num_inference_steps=45,            # outside 2-5: the tune run's best must replace it
                            settings_from_run=parent, output_dir=str(tmp_path / "g")),
                      experiment=experiment, progress=False)
    params = tracking.effective_params(mlflow.get_run(gen))
    assert params["num_inference_steps"] == run.data.params["best_num_inference_steps"]
