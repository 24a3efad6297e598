"""Option range checks shared by the stages: each raises ConfigError naming the option (as the CLI
spells it), the value given and what is allowed, before any model or data is loaded."""
from __future__ import annotations

from typing import Iterable

from harness.errors import ConfigError


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def at_least(cfg, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"{option(name)} must be >= {minimum:g}, got {value}")


def within(cfg, low: float, high: float, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not low <= value <= high:
            raise ConfigError(f"{option(name)} must be in [{low:g}, {high:g}], got {value}")


def multiple_of(cfg, k: int, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < k or value % k:
            raise ConfigError(f"{option(name)} must be a positive multiple of {k} (the VAE downsamples {k}x), "
                              f"got {value}")


def one_of(cfg, name: str, choices: Iterable[str] | None = None) -> None:
    """`choices` default to the field's own (harness.config.choice)."""
    from harness.config import choices_of
    choices = tuple(choices if choices is not None else choices_of(type(cfg), name))
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"{option(name)} must be one of {', '.join(choices)}, got {value!r}")


def ordered(cfg, low_name: str, high_name: str) -> None:
    low, high = getattr(cfg, low_name), getattr(cfg, high_name)
    if low > high:
        raise ConfigError(f"{option(low_name)} ({low}) must be <= {option(high_name)} ({high})")


__all__ = ["at_least", "multiple_of", "one_of", "option", "ordered", "within"]
