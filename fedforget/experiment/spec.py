"""An experiment file: the federation, the methods, what to forget, the seeds.

One TOML file per experiment in ``experiments/``::

    [experiment]
    methods = ["puf-special", "federaser"]   # federated methods ("all" for every one)
    centralised = ["ft", "ga"]               # centralised methods ("all"; [] for none)
    targets = "each"                         # every client in turn, or [["0"], ["0", "5"]]
    seeds = [0, 1, 2]
    recovery-stop = "retrain-acc"            # or "budget"
    settings-from = "tuned.toml"             # methods' settings chosen by `fedforget tune`
    scenario = "client"                      # or "backdoor"; "random" / "class" (centralised only)
    references = 3                           # retrained references per cell (>= 2: noise floor)
    metrics = ["svc_mia_prob", "kl_forget"]  # registry metrics besides the headline ("all")

    [config]                                 # run-config keys, as in --run-config
    dataset = "digits"
    num-server-rounds = 70
    [config.puf]
    eta-special = 2.0

Cells are (method, target set, seed): the original federation is trained
once per seed, the ``references`` retrained references once per (target set,
seed), on the same data with their own training seeds.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedforget.config import CLIENT_SCENARIOS, ConfigError, ConfigValue, FederationConfig

RECOVERY_STOPS = ("retrain-acc", "budget")
EXPERIMENT_KEYS = (
    "methods",
    "centralised",
    "targets",
    "seeds",
    "recovery-stop",
    "scenario",
    "references",
    "metrics",
    "settings-from",
)
DEFAULT_REFERENCES = 3
"""Retrained references per (target set, seed) when an experiment file names none."""


@dataclass(frozen=True)
class ExperimentSpec:
    """A parsed experiment file."""

    name: str
    config: FederationConfig
    methods: tuple[str, ...]
    centralised: tuple[str, ...]
    target_sets: tuple[tuple[str, ...], ...]
    seeds: tuple[int, ...]
    recovery_stop: str = "retrain-acc"
    references: int = DEFAULT_REFERENCES
    metrics: tuple[str, ...] | None = None
    """Registry metrics every row carries besides the headline ones (None: all that apply)."""
    settings_from: Path | None = None
    """The ``tuned.toml`` whose chosen settings the experiment runs with (``settings-from``)."""

    def cell_config(self, targets: tuple[str, ...], seed: int) -> FederationConfig:
        """The run config of one (target set, seed)."""
        return self.config.replace(unlearn_clients=",".join(targets), seed=seed)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _names(value: Any, key: str, registered: list[str]) -> tuple[str, ...]:
    if value == "all":
        return tuple(registered)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'[experiment] {key} must be "all" or a list of names, got {value!r}')
    unknown = [v for v in value if v not in registered]
    if unknown:
        what = "metric(s)" if key == "metrics" else "method(s)"
        raise ConfigError(
            f"[experiment] {key} names unknown {what} {', '.join(unknown)}; registered: "
            f"{', '.join(registered)}"
        )
    return tuple(dict.fromkeys(value))


def _target_sets(value: Any, config: FederationConfig) -> tuple[tuple[str, ...], ...]:
    clients = [
        c for c in (str(i) for i in range(config.num_partitions)) if c not in config.excluded
    ]
    if value == "each":
        return tuple((c,) for c in clients)
    if not isinstance(value, list) or not value or not all(isinstance(v, list) for v in value):
        raise ConfigError(
            '[experiment] targets must be "each" (every client in turn) or a list of client-id '
            f'lists such as [["0"], ["0", "5"]], got {value!r}'
        )
    sets = tuple(tuple(str(c) for c in v) for v in value)
    for targets in sets:
        unknown = [c for c in targets if c not in clients]
        if not targets or unknown:
            raise ConfigError(
                f"[experiment] targets {list(targets)} must name clients of 0.."
                f"{config.num_partitions - 1} that are not excluded"
            )
    return sets


def load_experiment(path: Path, settings_from: bool = True) -> ExperimentSpec:
    """Parse and check an experiment file; errors name the key and say what to write.

    ``settings_from`` False leaves out the settings ``[experiment] settings-from``
    names (``fedforget tune`` tunes from the defaults).
    """
    from fedforget.methods import method_names
    from fedforget.methods.centralised import centralised_names

    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    experiment = document.get("experiment")
    if not isinstance(experiment, dict):
        raise ConfigError(f"{path} has no [experiment] table: see experiments/digits-each.toml")
    unknown = sorted(set(experiment) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown [experiment] key(s) {', '.join(unknown)}; valid: {', '.join(EXPERIMENT_KEYS)}"
        )
    settings = _flatten(document.get("config", {}))
    tuned = None
    if "settings-from" in experiment and settings_from:
        tuned = _settings_from(path, experiment["settings-from"], settings)
    scenario = experiment.get("scenario", "client")
    settings["forget-scenario"] = scenario
    config = FederationConfig.from_run_config(settings)
    if not config.unlearn_at_round:
        raise ConfigError("[config] unlearn-at-round must be > 0: the round after which to forget")
    seeds = experiment.get("seeds", [config.seed])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"[experiment] seeds must be a non-empty list of integers, got {seeds!r}")
    recovery_stop = experiment.get("recovery-stop", "retrain-acc")
    if recovery_stop not in RECOVERY_STOPS:
        raise ConfigError(f"[experiment] recovery-stop must be one of {', '.join(RECOVERY_STOPS)}")
    references = experiment.get("references", DEFAULT_REFERENCES)
    if isinstance(references, bool) or not isinstance(references, int) or references < 1:
        raise ConfigError(
            f"[experiment] references must be an integer >= 1 (retrained models per target set "
            f"and seed; >= 2 gives the retraining noise floor), got {references!r}"
        )
    federated = [m for m in method_names() if m != "retrain"]
    methods = _names(experiment.get("methods", "all"), "methods", federated)
    centralised = _names(experiment.get("centralised", "all"), "centralised", centralised_names())
    clients = scenario in CLIENT_SCENARIOS
    # outside the client scenarios the forget set is the scenario's, the same for every cell
    targets = _target_sets(experiment.get("targets", "each"), config) if clients else ((),)
    metrics = _metrics(experiment.get("metrics", "all"))
    return ExperimentSpec(
        name=path.stem,
        config=config,
        methods=methods if clients else (),
        centralised=centralised,
        target_sets=targets,
        seeds=tuple(dict.fromkeys(seeds)),
        recovery_stop=recovery_stop,
        references=references,
        metrics=metrics,
        settings_from=tuned,
    )


def _metrics(value: Any) -> tuple[str, ...] | None:
    """The ``metrics`` key: ``"all"`` (None: every registered metric that applies) or names."""
    from fedforget.metrics.registry import METRICS

    if value == "all":
        return None
    return _names(value, "metrics", list(METRICS))


def _settings_from(path: Path, value: Any, settings: dict[str, Any]) -> Path:
    """Add the chosen settings of the ``tuned.toml`` that ``value`` names to ``settings``.

    The file's path is relative to the experiment file. A key the experiment's
    [config] sets to another value is refused: one place decides each setting.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"[experiment] settings-from must be the path of a tuned.toml, got {value!r}"
        )
    tuned_path = (path.parent / value).resolve()
    for key, chosen in tuned_settings(tuned_path).items():
        if key in settings and settings[key] != chosen:
            raise ConfigError(
                f"[config] sets {key} = {settings[key]!r}, but settings-from {value} chose "
                f"{chosen!r}: remove one of them"
            )
        settings[key] = chosen
    return tuned_path


KINDS = ("federated", "centralised")
"""The kinds of method a ``tuned.toml`` has a table of."""


def tuned_settings(path: Path) -> dict[str, ConfigValue]:
    """The chosen settings of ``tuned.toml`` as run-config keys (``"puf.eta-special": 3.1``).

    Raises
    ------
    ConfigError
        When the file is missing or not a ``fedforget tune`` result, or two
        methods sharing a table chose different values of one key.

    """
    if not path.is_file():
        raise ConfigError(
            f"[experiment] settings-from names {path}, which does not exist: run "
            "`fedforget tune` first (it writes DIR/tuned.toml)"
        )
    document = tomllib.loads(path.read_text())
    merged: dict[str, ConfigValue] = {}
    chosen_by: dict[str, str] = {}
    for kind in KINDS:
        for name, entry in document.get(kind, {}).items():
            for key, value in entry.get("settings", {}).items():
                dotted = f"{entry['table']}.{key}"
                if dotted in merged and merged[dotted] != value:
                    raise ConfigError(
                        f"{path}: {name} and {chosen_by[dotted]} chose different values of "
                        f"{dotted}: tune one of them only"
                    )
                merged[dotted], chosen_by[dotted] = value, name
    return merged
