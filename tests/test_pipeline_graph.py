"""The `main` pipeline's step graph (harness.pipeline.pipeline_nodes): what waits for what, and the
options that shape it (--models, --set)."""
import pytest

from harness.errors import ConfigError
from harness.pipeline import PAPER_MODELS, PipelineConfig, check_nodes, pipeline_nodes
from harness.schema import STAGE_CLASSIFY, TRAIN_SETS


def graph():
    return {n.name: set(n.after) for n in pipeline_nodes(PipelineConfig(), eval_data="ham")}


def ancestors(g, name):
    seen, todo = set(), list(g[name])
    while todo:
        a = todo.pop()
        if a not in seen:
            seen.add(a)
            todo += g[a]
    return seen


def test_every_dependency_is_a_node_and_the_graph_has_no_cycle():
    g = graph()
    assert all(after <= set(g) for after in g.values())
    assert all(name not in ancestors(g, name) for name in g)


def test_real_evaluation_runs_beside_the_finetune_and_register_waits_for_both_evaluations():
    g = graph()
    assert g["judges"] == {"prepare"}                      # the judges train beside the fine-tune
    assert ancestors(g, "evaluate.real_test") == {"prepare", "judges"}
    assert {"finetune", "generate", "judges"} <= ancestors(g, "evaluate.synth")
    assert {"evaluate.real_test", "evaluate.synth"} <= g["register"]


def test_trainings_with_synthetic_images_need_the_generated_set_and_the_report_needs_everything():
    g = graph()
    trainings = {f"{stage}.{model}.{s}" for stage, models in PAPER_MODELS.items() for model in models for s in TRAIN_SETS}
    assert len(trainings) == 18 and trainings <= set(g)
    assert all(g[t] == ({"prepare"} if t.endswith(".real") else {"generate"}) for t in trainings)
    assert g["explain"] == {t for t in trainings if t.startswith("classify.")}
    assert ancestors(g, "report") == set(g) - {"report"}


def test_step_configs_follow_the_runs_they_need():
    class Run:                                        # what a node reads of a finished run: its id
        def __init__(self, run_id):
            self.info = type("Info", (), {"run_id": run_id})()
    nodes = {n.name: n for n in pipeline_nodes(PipelineConfig(), eval_data="ham")}
    runs = {name: Run(f"id-{name}") for name in nodes}
    gen = nodes["generate"].make(runs)
    assert gen.cfg.model_uri == "runs:/id-finetune/model" and gen.cfg.match_real
    seg = nodes["segment.unet.hybrid"].make(runs)
    assert seg.cfg.synth == "runs:/id-generate" and seg.cfg.eval_data == "ham" and seg.cfg.train_set == "hybrid"
    real = nodes["classify.resnet34.real"].make(runs)        # no generated set: its config names none
    assert real.cfg.synth == "" and real.cfg.train_set == "real" and real.cfg.eval_data == "ham"
    explain = nodes["explain"].make(runs)
    assert explain.cfg.real_run.split(",") == [f"id-classify.{m}.real" for m in PAPER_MODELS[STAGE_CLASSIFY]]
    # --seeds: every classify and segment step trains that many repeats; 0 keeps the profile's (demo: 1)
    assert real.cfg.seeds == seg.cfg.seeds == 1 and "seeds" not in real.params
    nodes = {n.name: n for n in pipeline_nodes(PipelineConfig(seeds=3), eval_data="ham")}
    for name in ("classify.resnet34.real", "segment.deeplabv3plus.hybrid"):
        s = nodes[name].make(runs)
        assert s.cfg.seeds == 3 and s.params["seeds"] == "3"
    from harness.config import ClassifyConfig, SegmentConfig, with_profile
    for cls, stage in ((ClassifyConfig, STAGE_CLASSIFY), (SegmentConfig, "segment")):
        assert with_profile(cls, stage, "paper", {}).seeds == 3 and with_profile(cls, stage, "demo", {}).seeds == 1


def test_models_choose_the_trainings_and_explain_follows_the_classifiers():
    g = {n.name: set(n.after) for n in pipeline_nodes(PipelineConfig(models="squeezenet1_1"), eval_data="ham")}
    assert {n for n in g if n.startswith(("classify.", "segment."))} == {f"classify.squeezenet1_1.{s}" for s in TRAIN_SETS}
    assert g["explain"] == {f"classify.squeezenet1_1.{s}" for s in TRAIN_SETS}
    g = {n.name: set(n.after) for n in pipeline_nodes(PipelineConfig(models="unet"), eval_data="ham")}
    assert "explain" not in g and g["report"] == {"register"} | {f"segment.unet.{s}" for s in TRAIN_SETS}
    with pytest.raises(ConfigError, match="resnet"):
        pipeline_nodes(PipelineConfig(models="resnet"), eval_data="ham")


def test_set_overrides_every_step_of_its_stage_typed_as_the_config():
    class Run:
        def __init__(self, run_id):
            self.info = type("Info", (), {"run_id": run_id})()
    cfg = PipelineConfig(overrides=("classify.epochs=3", "classify.pretrained=false", "judges.cas_model=none",
                                    "classify.learning-rate=1e-3"))
    nodes = {n.name: n for n in pipeline_nodes(cfg, eval_data="ham")}
    runs = {name: Run(f"id-{name}") for name in nodes}
    for name in ("classify.resnet34.real", "classify.swin_tiny.hybrid"):
        s = nodes[name].make(runs)
        assert (s.cfg.epochs, s.cfg.pretrained, s.cfg.learning_rate) == (3, False, 1e-3)
        assert s.params["epochs"] == "3" and s.params["pretrained"] == "False"
    assert nodes["judges"].make(runs).cfg.cas_model == "none"
    for name in ("evaluate.synth", "evaluate.real_test"):        # both judged by the judges node's run
        assert nodes[name].make(runs).cfg.judges == "runs:/id-judges" and "judges" in nodes[name].after
    assert nodes["segment.unet.real"].make(runs).cfg.epochs == 6          # the profile's: not classify's


@pytest.mark.parametrize("item, message", [
    ("classify.epochs", "STAGE.OPTION=VALUE"), ("report.output_dir=x", "stage must be"),
    ("classify.nope=1", "no option 'nope'"), ("classify.epochs=many", "not a valid int"),
    ("classify.pretrained=maybe", "not true/false")])
def test_bad_set_items_are_config_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        pipeline_nodes(PipelineConfig(overrides=(item,)), eval_data="ham")


def test_set_may_not_change_what_main_wires_and_check_nodes_says_so_before_anything_runs():
    nodes = pipeline_nodes(PipelineConfig(overrides=("classify.train_set=synth",)), eval_data="ham")
    with pytest.raises(ConfigError, match="main` sets this option"):
        check_nodes(nodes)
    check_nodes(pipeline_nodes(PipelineConfig(overrides=("classify.epochs=1",)), eval_data="ham"))
