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


def test_mlproject_option_lists_name_every_config_field():
    """Each `# Options (-P name=value): ...` comment above an entry point lists exactly the fields of
    that stage's config that are not declared as parameters (the ones users pass as extra -P)."""
    import dataclasses

    from harness import config
    stages = {"finetune": config.FinetuneConfig, "generate": config.GenerateConfig, "evaluate": config.EvaluateConfig,
              "judges": config.JudgesConfig, "tune": config.TuneConfig, "classify": config.ClassifyConfig,
              "segment": config.SegmentConfig, "explain": config.ExplainConfig}
    text = (ROOT / "MLproject").read_text()
    declared = {name: set(ep.get("parameters", {})) for name, ep in yaml.safe_load(text)["entry_points"].items()}
    blocks = re.findall(r"# Options \(-P name=value\): (.*?)\n  ([a-z_]+):\n", text, flags=re.S)
    listed = {name: {o.strip() for o in re.sub(r"\n\s*#", " ", body).split(",")} for body, name in blocks}
    assert set(listed) == set(stages)
    for name, cfg_cls in stages.items():
        fields = {f.name for f in dataclasses.fields(cfg_cls)} - declared[name]
        assert listed[name] == fields, f"MLproject {name}: listed {sorted(listed[name] ^ fields)} differ from the config"
