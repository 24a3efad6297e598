"""The `main` pipeline's step graph (harness.pipeline.pipeline_nodes): what waits for what."""
from harness.pipeline import PAPER_MODELS, PipelineConfig, pipeline_nodes
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
    assert ancestors(g, "evaluate.real_test") == {"prepare"}
    assert {"finetune", "generate"} <= ancestors(g, "evaluate.synth")
    assert {"evaluate.real_test", "evaluate.synth"} <= g["register"]


def test_trainings_need_the_generated_set_and_the_report_needs_everything():
    g = graph()
    trainings = {f"{stage}.{model}.{s}" for stage, models in PAPER_MODELS.items() for model in models for s in TRAIN_SETS}
    assert len(trainings) == 18 and trainings <= set(g)
    assert all(g[t] == {"generate"} for t in trainings)
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
    explain = nodes["explain"].make(runs)
    assert explain.cfg.real_run.split(",") == [f"id-classify.{m}.real" for m in PAPER_MODELS[STAGE_CLASSIFY]]
