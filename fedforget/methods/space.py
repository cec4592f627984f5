"""Search spaces: what ``fedforget tune`` may vary of a method's settings, as class data.

Every method (federated or centralised) declares ``space`` beside its
``defaults``: a mapping from a setting's key to one of

* :class:`LogUniform` (a float drawn uniformly in log scale: learning rates),
* :class:`Uniform` (a float drawn uniformly: fractions, mixing weights),
* :class:`IntRange` (an integer in ``[low, high]``: epochs, steps),
* :class:`Categorical` (one of a few values of the setting's type).

A method with nothing to tune declares an empty space (the default). The keys
are the method's own settings, and every value a space can produce is one the
method accepts: :func:`space_problem` checks both ends of each range (and
every choice) against the method's ``limits`` and its ``check_settings``,
with the other settings at their defaults, before any trial runs. A space also
contains the method's default value of each key, so the paper's setting is
always the first trial (the "paper default" score of the report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedforget.methods.base import Configurable, ConfigValue, is_number, settings_problem

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class LogUniform:
    """A float in ``[low, high]``, uniform in log scale (``low > 0``)."""

    low: float
    high: float

    def describe(self) -> str:
        """The range in words, for tables."""
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform:
    """A float in ``[low, high]``, uniform."""

    low: float
    high: float

    def describe(self) -> str:
        """The range in words, for tables."""
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` (``log``: uniform in log scale)."""

    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        """The range in words, for tables."""
        return f"integer [{self.low}, {self.high}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (values of the setting's type)."""

    choices: tuple[ConfigValue, ...]

    def describe(self) -> str:
        """The choices in words, for tables."""
        return "one of " + ", ".join(str(c) for c in self.choices)


Param = LogUniform | Uniform | IntRange | Categorical
"""One dimension of a search space."""
SearchSpace = Mapping[str, Param]


def _candidates(key: str, param: Param, default: ConfigValue) -> tuple[str, list[Any]]:
    """Why ``param`` cannot describe a setting whose default is ``default``, or its extremes."""
    if isinstance(param, Categorical):
        if not param.choices:
            return "has no choices", []
        return "", list(param.choices)
    if isinstance(param, IntRange):
        if not isinstance(default, int) or isinstance(default, bool):
            return f"is an integer range, but the setting is a {type(default).__name__}", []
        if not (isinstance(param.low, int) and isinstance(param.high, int)):
            return "needs integer bounds", []
    elif not isinstance(default, float):
        return f"is a float range, but the setting is a {type(default).__name__}", []
    if not (math.isfinite(param.low) and math.isfinite(param.high)):
        return "needs finite bounds", []
    if param.low > param.high:
        return f"has low {param.low:g} > high {param.high:g}", []
    log = isinstance(param, LogUniform) or (isinstance(param, IntRange) and param.log)
    if log and param.low <= 0:
        return f"is log-scaled, so its low must be > 0, got {param.low:g}", []
    return "", [param.low, param.high]


def space_problem(method: type[Configurable], space: SearchSpace | None = None) -> str:
    """Why ``space`` (default: the method's own) does not fit ``method`` ('' if it fits).

    The message names the method and the key: an unknown key, a range of the
    wrong type, low > high, a value the method's limits or its own check
    refuse (the other settings at their defaults), or a range that leaves out
    the default (the first trial runs the defaults).
    """
    space = getattr(method, "space", {}) if space is None else space
    for key, param in space.items():
        where = f"the search space of {method.name}: {method.table}.{key}"
        if key not in method.defaults:
            valid = ", ".join(sorted(method.defaults)) or "none"
            return f"{where} is not a setting of {method.name} (its settings: {valid})"
        if not isinstance(param, LogUniform | Uniform | IntRange | Categorical):
            return f"{where} must be LogUniform, Uniform, IntRange or Categorical, got {param!r}"
        default = method.defaults[key]
        problem, values = _candidates(key, param, default)
        if problem:
            return f"{where} {problem}"
        for value in values:
            if type(value) is not type(default) and not (
                isinstance(default, float) and is_number(value)
            ):
                return f"{where} offers {value!r}, not a {type(default).__name__} like its default"
            problem = settings_problem(method, {**method.defaults, key: value})
            if problem:
                return f"{where} reaches {value!r}, which {method.name} refuses: {problem}"
        if not contains(param, default):
            return (
                f"{where} leaves out the default {default!r}: widen it (the first trial of a "
                "tuning runs the paper's defaults)"
            )
    return ""


def contains(param: Param, value: ConfigValue) -> bool:
    """Whether ``value`` is one ``param`` can take."""
    if isinstance(param, Categorical):
        return value in param.choices
    return is_number(value) and param.low <= float(value) <= param.high  # type: ignore[arg-type]


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, ConfigValue]:
    """One value per key of ``space``, drawn by ``trial`` (its sampler)."""
    settings: dict[str, ConfigValue] = {}
    for key, param in space.items():
        if isinstance(param, LogUniform | Uniform):
            settings[key] = trial.suggest_float(
                key, param.low, param.high, log=isinstance(param, LogUniform)
            )
        elif isinstance(param, IntRange):
            settings[key] = trial.suggest_int(key, param.low, param.high, log=param.log)
        else:
            settings[key] = trial.suggest_categorical(key, list(param.choices))  # type: ignore[arg-type]
    return settings


def describe_space(space: SearchSpace) -> dict[str, str]:
    """Each key's range in words (``{"lr": "log-uniform [0.001, 0.1]"}``)."""
    return {key: param.describe() for key, param in space.items()}
