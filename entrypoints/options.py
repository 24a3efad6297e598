"""The options every command shares: a config's fields as `--field-name` options (typed, "" = not given),
--profile, --experiment, and the underscore spellings MLflow passes."""
import dataclasses

import click

from harness.config import PROFILE_CHOICES, parse_bool, shown

profile_option = click.option(
    "--profile", type=click.Choice(PROFILE_CHOICES), default="auto", show_default=True,
    help="paper: the paper's protocol; demo: sizes shrunk for 2 CPU cores; auto: demo on the embedded demo "
         "data, paper on yours (the run's tag skindualgen.profile_rule says which)")

experiment_option = click.option("--experiment", default=None,
                                 help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or skindualgen)")


class GivenOrDefault(click.ParamType):
    """An option of a config field: "" (an MLproject parameter left empty) and no value are None, the
    profile's or the paper's default; anything else is converted to the field's type. --help shows
    the type, or the words a field takes (harness.config.choice), which the stage itself checks."""

    def __init__(self, kind: type, choices: tuple[str, ...] | None = None):
        self.kind, self.choices = kind, choices
        self.name = {int: "integer", float: "float", bool: "boolean"}.get(kind, "text")

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join(self.choices)}]" if self.choices else self.name.upper()

    def convert(self, value, param, ctx):
        if value == "":                          # an MLproject parameter left empty: not given
            return None
        if not isinstance(value, str):           # None (not given), or already converted
            return value
        try:
            return parse_bool(value) if self.kind is bool else self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not " + ("true/false" if self.kind is bool else f"a valid {self.kind.__name__}"),
                      param, ctx)


def config_options(cfg_cls, exclude: tuple[str, ...] = ()):
    """One `--field-name` option per dataclass field, defaulting to None (= profile / paper default;
    "" from an MLproject parameter counts as not given). Booleans take true/false values."""
    def decorate(fn):
        for f in reversed(dataclasses.fields(cfg_cls)):
            if f.name in exclude:
                continue
            kind = {int: int, float: float, bool: bool}.get(type(f.default), str)
            param_type = GivenOrDefault(kind, f.metadata.get("choices"))
            fn = click.option("--" + f.name.replace("_", "-"), f.name, type=param_type, default=None,
                              help="default: " + (shown(f.name, "") if f.default == "" else repr(f.default)))(fn)
        return fn
    return decorate


def accept_underscores(command: click.Command) -> click.Command:
    """MLflow passes an extra `-P learning_rate=1e-4` on as `--learning_rate 1e-4`: every `--dashed-name`
    option also answers to its `--underscored_name` (listed beside it in --help)."""
    for param in command.params:            # idempotent: a module imported twice (as __main__ too) adds none again
        if isinstance(param, click.Option):
            param.opts += [alias for alias in (o.replace("-", "_").replace("__", "--", 1) for o in list(param.opts)
                                               if o.startswith("--") and "-" in o[2:]) if alias not in param.opts]
    return command
