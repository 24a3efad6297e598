"""The install contract: conda.yaml carries pyproject's pins; README's commands; .ci/run runs them."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_has_the_same_pins_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(deps)
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```(?:bash|sh)\n(.*?)\n```", readme, flags=re.S | re.M)
    main_cmd, test_cmd = commands[0].strip(), commands[1].strip()
    assert "mlflow run ." in main_cmd and "pip install" in main_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_mlproject_entry_points_match_cli_commands():
    from entrypoints.cli import cli
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml"
    for name, ep in project["entry_points"].items():
        command = ep["command"]
        sub = "main" if name == "main" else name
        assert command.startswith(f"skindualgen {sub.replace('_', '-')} ") or command == f"skindualgen {sub}"
        click_cmd = cli.commands[sub.replace("_", "-")]
        options = {o for p in click_cmd.params for o in p.opts}
        for param in ep.get("parameters", {}):
            flag = "--" + param.replace("_", "-")
            assert flag in options, f"{name}: {flag} missing from the CLI"
            assert f"{flag} {{{param}}}" in command, f"{name}: {param} not passed on"
            [option] = [p for p in click_cmd.params if flag in p.opts]
            default = ep["parameters"][param].get("default")
            assert option.default is None or str(option.default) == str(default), \
                f"{name}: -P {param} defaults to {default!r}, the CLI's {flag} to {option.default!r}"


def test_profile_auto_is_demo_on_the_demo_data_and_paper_on_yours_and_the_run_says_why(experiment, tmp_path):
    """The one profile rule (CLI and MLproject alike): with a user's own data and no --profile, the
    paper's settings, never the demo recipe silently; the run tags the profile and the rule."""
    import mlflow

    from harness import tracking
    from harness.config import ClassifyConfig, EvaluateConfig, GenerateConfig, choose_profile, with_profile
    from harness.schema import (STAGE_CLASSIFY, STAGE_EVALUATE, STAGE_GENERATE, STAGE_MAIN, TAG_PROFILE,
                                TAG_PROFILE_RULE)
    mine = with_profile(ClassifyConfig, STAGE_CLASSIFY, "auto", {"data_dir": "/data/isic"})
    demo = with_profile(ClassifyConfig, STAGE_CLASSIFY, "auto", {"data_dir": None})
    assert (mine.image_size, mine.folds, mine.profile_choice[0]) == (224, 5, "paper")
    assert (demo.image_size, demo.folds, demo.profile_choice[0]) == (32, 2, "demo")
    assert with_profile(ClassifyConfig, STAGE_CLASSIFY, "demo", {"data_dir": "/data/isic"}).image_size == 32
    assert choose_profile(STAGE_EVALUATE, "auto", {"real": "/data/isic"})[0] == "paper"
    assert with_profile(EvaluateConfig, STAGE_EVALUATE, "auto", {}).profile_choice[0] == "demo"
    assert choose_profile(STAGE_MAIN, "auto", {"data_dir": "/data/isic"})[0] == "paper"
    assert with_profile(GenerateConfig, STAGE_GENERATE, "auto", {}, "demo").resolution == 64
    assert with_profile(GenerateConfig, STAGE_GENERATE, "auto", {}, "").resolution == 512
    with tracking.stage_run(STAGE_CLASSIFY, mine, experiment=experiment) as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags[TAG_PROFILE] == "paper" and tags[TAG_PROFILE_RULE] == \
        "auto: --data-dir given -> paper (the paper's protocol on your data)"


def test_mlproject_option_lists_name_every_config_field():
    """Each `# Options (-P name=value): ...` comment above an entry point lists exactly the fields of
    that stage's config that are not declared as parameters (the ones users pass as extra -P)."""
    import dataclasses

    from harness.stages import STAGES
    stages = {name: stage.config for name, stage in STAGES.items() if stage.run}
    text = (ROOT / "MLproject").read_text()
    declared = {name: set(ep.get("parameters", {})) for name, ep in yaml.safe_load(text)["entry_points"].items()}
    blocks = re.findall(r"# Options \(-P name=value\): (.*?)\n  ([a-z_]+):\n", text, flags=re.S)
    listed = {name: {o.strip() for o in re.sub(r"\n\s*#", " ", body).split(",")} for body, name in blocks}
    assert set(listed) == set(stages)
    for name, cfg_cls in stages.items():
        fields = {f.name for f in dataclasses.fields(cfg_cls)} - declared[name]
        assert listed[name] == fields, f"MLproject {name}: listed {sorted(listed[name] ^ fields)} differ from the config"


def test_the_stage_table_makes_the_commands_the_descriptions_and_main_s_step_configs():
    """harness/stages.py is the one place a config-driven stage is declared: its command's options are
    its config's fields, it is an MLproject entry point with a --profile section, its description is
    its runs' MLflow description, and main's steps take their config class from it."""
    import dataclasses

    from entrypoints.cli import cli
    from harness.config import PROFILES
    from harness.pipeline import STEP_CONFIGS
    from harness.stages import STAGES
    from harness.tracking import STAGE_DESCRIPTIONS
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for name, stage in STAGES.items():
        assert name in entry_points and name in cli.commands, name
        assert STAGE_DESCRIPTIONS[name] == stage.description
        if not stage.run:
            continue
        options = {p.name for p in cli.commands[name].params}
        assert options == {f.name for f in dataclasses.fields(stage.config)} | {"profile", "experiment"}, name
        assert name in PROFILES and cli.commands[name].help == stage.description
    assert all(STEP_CONFIGS[name] is STAGES[name].config for name in STEP_CONFIGS)
