"""The run configuration: one typed, validated record shared by server and clients.

Keys are Flower run-config keys (hyphenated), exactly as they appear in
``[tool.flwr.app.config]`` of ``pyproject.toml`` and in ``--run-config``. The
dataclass defaults are the source of truth; a test keeps ``pyproject.toml``
identical to them (``flwr.simulation.run_simulation`` passes no run config, so
the defaults must live in Python too).

Each unlearning method's own settings live in its table (``puf.eta-special``,
``pga.lr``; ``[tool.flwr.app.config.puf]`` in ``pyproject.toml``, which Flower
flattens to dotted keys). The method classes declare them and their defaults
(:mod:`fedforget.methods`); a config keeps only the values that differ.

The vocabulary (value sets, :class:`ConfigError`) lives in
:mod:`fedforget.constants`, which imports nothing. This module imports the
method registry only where method tables are read: a config without method
settings (what a ClientApp builds from its section, :meth:`FederationConfig.client_section`)
imports no method's module, and no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

from fedforget.constants import (
    BACKDOOR_POSITIONS,
    CLIENT_SCENARIOS,
    DEVICES,
    FORGET_SCENARIOS,
    OPTIMIZERS,
    PARTITIONERS,
    SERVER_KEYS,
    STORE_DTYPES,
    STORE_KINDS,
    ConfigError,
    ConfigValue,
)
from fedforget.registry import DATASET_REGISTRY, MODEL_REGISTRY

__all__ = [  # the vocabulary lives in fedforget.constants; importers of fedforget.config see it
    "BACKDOOR_POSITIONS",
    "CLIENT_SCENARIOS",
    "DEVICES",
    "FORGET_SCENARIOS",
    "KEY_HELP",
    "OPTIMIZERS",
    "PARTITIONERS",
    "SERVER_KEYS",
    "STORE_DTYPES",
    "STORE_KINDS",
    "ConfigError",
    "ConfigValue",
    "FederationConfig",
    "import_plugins",
    "parse_client_ids",
]


def parse_client_ids(text: str) -> tuple[str, ...]:
    """Parse ``"0,3"`` into ``("0", "3")``; whitespace and empty items are ignored."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class FederationConfig:
    """Everything a federation run needs, with the embedded default setting.

    The defaults put the digits federation in a regime where the model memorises
    its clients' data (10 local epochs, 40 rounds: the original model's forget
    accuracy and Yeom MIA exceed the retrained model's), so that there is
    something to forget.
    """

    # --- data ---------------------------------------------------------------
    dataset: str = "digits"
    data_dir: str = ""
    num_partitions: int = 10
    partitioner: str = "dirichlet"
    alpha: float = 0.3
    min_partition_size: int = 10
    test_fraction: float = 0.2
    seed: int = 0
    data_seed: int = -1
    """Draws the train/test split, the partition and the data of a scenario (-1: ``seed``)."""
    # --- model and local training ------------------------------------------
    model: str = "cnn"
    local_epochs: int = 10
    local_epochs_fraction: float = 1.0
    batch_size: int = 32
    lr: float = 0.05
    lr_decay: float = 1.0
    # --- federation ---------------------------------------------------------
    num_server_rounds: int = 70
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available_clients: int = 2
    round_timeout: float = 3600.0
    exclude_clients: str = ""
    # --- unlearning ---------------------------------------------------------
    method: str = "puf-special"
    methods: str = ""
    unlearn_at_round: int = 40
    unlearn_clients: str = "0"
    recovery_target_acc: float = 0.0
    forget_scenario: str = "client"
    forget_class: int = 0
    forget_fraction: float = 0.1
    drop_forget_set: bool = False
    # --- backdoor scenario (fedforget.data.backdoor) -------------------------
    backdoor_target_class: int = 0
    backdoor_patch_size: int = 3
    backdoor_patch_value: float = 3.0
    backdoor_position: str = "bottom-right"
    backdoor_poison_fraction: float = 0.5
    # --- output -------------------------------------------------------------
    out_dir: str = ""
    progress: bool = True
    # --- live unlearning API (fedforget.api) ---------------------------------
    api_enabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 0
    api_token_file: str = ""
    api_token_env: str = "FEDFORGET_API_TOKEN"
    state_dir: str = ""
    # --- server state (fedforget.state): PUF's pseudo-gradient store --------
    store: str = "memory"
    store_dtype: str = "float32"
    # --- workloads (CIFAR, ProstateMRI; docs/puf-reference) -----------------
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    augment: bool = False
    image_size: int = 0
    pretrained_weights: str = ""
    partition_file: str = ""
    download: bool = False
    device: str = "auto"
    # --- plug-ins: modules that register datasets, models or methods in every process
    plugins: str = ""
    mixed_precision: bool = True
    """bf16 autocast of the forward pass on a CUDA device that supports it (no effect on CPUs)."""
    # --- per-method settings: ("table.key", value) pairs that differ from the defaults
    method_settings: tuple[tuple[str, ConfigValue], ...] = ()

    @staticmethod
    def key(attribute: str) -> str:
        """Return the run-config key of a dataclass attribute."""
        return attribute.replace("_", "-")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        """Build and validate a config from a Flower run config (hyphenated keys).

        Missing keys take their defaults; unknown keys and values of the wrong
        type raise :class:`ConfigError` naming the key. Method settings
        (dotted keys) are checked against the method tables, which imports
        the methods' modules; a run config without any imports none.
        """
        plugins = run_config.get(cls.key("plugins"), "")
        import_plugins(plugins if isinstance(plugins, str) else "")  # before any name is read
        known = {cls.key(f.name): f for f in fields(cls) if f.name != "method_settings"}
        dotted = {k: v for k, v in run_config.items() if "." in k}
        unknown = sorted(set(run_config) - set(known) - set(dotted) - {"server-round"})
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s) {', '.join(unknown)}; "
                f"valid keys are: {', '.join(known)} and the method tables' keys "
                f"({', '.join(sorted(_method_defaults()))})"
            )
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            if key not in known:
                continue
            f = known[key]
            values[f.name] = _coerce(key, value, type(f.default))
        values["method_settings"] = _method_overrides(dotted) if dotted else ()
        config = cls(**values)
        config.validate()
        return config

    def to_run_config(self) -> dict[str, ConfigValue]:
        """Return the config as a flat Flower run config (hyphenated and dotted keys)."""
        flat = {
            self.key(f.name): cast(ConfigValue, getattr(self, f.name))
            for f in fields(self)
            if f.name != "method_settings"
        }
        return {**flat, **_method_defaults(), **dict(self.method_settings)}

    def client_section(self) -> dict[str, ConfigValue]:
        """What a ClientApp message carries: the run config less the server's keys.

        No method settings (a step's message adds its own table's, see
        :meth:`fedforget.federated.UnlearningStrategy.configure_train`) and none of
        :data:`~fedforget.constants.SERVER_KEYS`; a ClientApp builds its config
        from it (:meth:`from_run_config`) without importing any method.
        """
        return {
            self.key(f.name): cast(ConfigValue, getattr(self, f.name))
            for f in fields(self)
            if f.name != "method_settings" and self.key(f.name) not in SERVER_KEYS
        }

    def settings_of(self, table: str) -> dict[str, ConfigValue]:
        """The run's values of a method table's keys (``"puf"`` -> ``{"eta-special": ...}``)."""
        prefix = f"{table}."
        return {
            key.removeprefix(prefix): value
            for key, value in {**_method_defaults(), **dict(self.method_settings)}.items()
            if key.startswith(prefix)
        }

    def replace(self, **changes: Any) -> FederationConfig:
        """Return a validated copy with some attributes changed."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    # --- derived values -----------------------------------------------------
    @property
    def targets(self) -> tuple[str, ...]:
        """Client ids of the configured unlearning request (empty if none)."""
        return parse_client_ids(self.unlearn_clients) if self.unlearn_at_round else ()

    @property
    def split_seed(self) -> int:
        """The seed of the data: ``data-seed``, or ``seed`` when it is unset (-1)."""
        return self.data_seed if self.data_seed >= 0 else self.seed

    @property
    def backdoor_clients(self) -> tuple[str, ...]:
        """Clients whose data carries the trigger (``unlearn-clients``; backdoor scenario only)."""
        if self.forget_scenario != "backdoor":
            return ()
        return parse_client_ids(self.unlearn_clients)

    @property
    def kept_methods(self) -> tuple[str, ...]:
        """Methods whose history the run keeps: ``method`` and those listed in ``methods``."""
        return tuple(dict.fromkeys((self.method, *parse_client_ids(self.methods))))

    @property
    def excluded(self) -> tuple[str, ...]:
        """Client ids that never take part (used for the retrained reference)."""
        return parse_client_ids(self.exclude_clients)

    def lr_at(self, server_round: int) -> float:
        """Client learning rate in a round: ``lr * lr_decay ** (round - 1)``."""
        return self.lr * self.lr_decay ** max(server_round - 1, 0)

    # --- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid key.

        Every value that names something (dataset, model, partitioner, method,
        optimizer, scenario, store, device, plug-in) is checked against what is
        registered, so that a mistyped name fails here, before any training.
        """
        import_plugins(self.plugins)
        _one_of("dataset", self.dataset, tuple(DATASET_REGISTRY.names()))
        _one_of("model", self.model, tuple(MODEL_REGISTRY.names()))
        _one_of("partitioner", self.partitioner, PARTITIONERS)
        self._validate_methods()
        _one_of("forget-scenario", self.forget_scenario, FORGET_SCENARIOS)
        if not 0.0 < self.forget_fraction < 1.0:
            raise ConfigError(
                f"forget-fraction must be in (0, 1), the share of training examples to "
                f"forget, got {self.forget_fraction}"
            )
        if self.forget_class < 0:
            raise ConfigError(f"forget-class must be a class label >= 0, got {self.forget_class}")
        if self.data_seed < -1:
            raise ConfigError(
                f"data-seed must be >= 0, or -1 to draw the data with seed; got {self.data_seed}"
            )
        self._validate_backdoor()
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"device must be one of {', '.join(DEVICES)} or cuda:<index>; got {self.device!r}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if self.image_size < 0:
            raise ConfigError(
                f"image-size must be >= 0 (0 = the dataset's default), got {self.image_size}"
            )
        if self.partitioner == "file" and not self.partition_file:
            raise ConfigError(
                "partitioner='file' needs partition-file: a packaged split such as "
                "'cifar10_dirichlet0.3_clients10' or the path of a JSON file "
                '{"<client id>": [train index, ...]}'
            )
        _positive("alpha", self.alpha)
        _positive("lr", self.lr)
        _positive("lr-decay", self.lr_decay)
        _positive("round-timeout", self.round_timeout)
        for key, value in (
            ("num-partitions", self.num_partitions),
            ("num-server-rounds", self.num_server_rounds),
            ("local-epochs", self.local_epochs),
            ("batch-size", self.batch_size),
            ("min-partition-size", self.min_partition_size),
            ("min-available-clients", self.min_available_clients),
        ):
            _positive(key, value)
        if not 0.0 < self.local_epochs_fraction <= 1.0:
            raise ConfigError(
                f"local-epochs-fraction must be in (0, 1], the share of the local-epochs "
                f"schedule's mini-batches a client trains, got {self.local_epochs_fraction}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        for key, value in (
            ("fraction-train", self.fraction_train),
            ("fraction-evaluate", self.fraction_evaluate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")
        if self.fraction_train == 0.0:
            raise ConfigError("fraction-train must be > 0: a federation must train")
        if not 0.0 <= self.recovery_target_acc <= 1.0:
            raise ConfigError(
                f"recovery-target-acc must be a fraction in [0, 1] (0 = off), "
                f"got {self.recovery_target_acc}"
            )
        if self.unlearn_at_round < 0:
            raise ConfigError(
                f"unlearn-at-round must be >= 0 (0 = no request), got {self.unlearn_at_round}"
            )
        if self.unlearn_at_round >= self.num_server_rounds:
            raise ConfigError(
                f"unlearn-at-round={self.unlearn_at_round} leaves no round for unlearning: "
                f"the request takes effect in round unlearn-at-round + 1, which must be "
                f"<= num-server-rounds={self.num_server_rounds}"
            )
        if self.unlearn_at_round and not self.targets:
            raise ConfigError(
                "unlearn-clients is empty but unlearn-at-round is set: name the client "
                'ids to forget, e.g. unlearn-clients="0,3", or set unlearn-at-round=0'
            )
        for key, ids in (("unlearn-clients", self.targets), ("exclude-clients", self.excluded)):
            for client_id in ids:
                if not client_id.isdigit() or int(client_id) >= self.num_partitions:
                    raise ConfigError(
                        f"{key} names unknown client {client_id!r}: client ids are the "
                        f"partition ids 0..{self.num_partitions - 1}"
                    )
        if set(self.targets) & set(self.excluded):
            raise ConfigError(
                "unlearn-clients and exclude-clients overlap: an excluded client never "
                "trains, so there is nothing of it to forget"
            )
        remaining = self.num_partitions - len(set(self.targets) | set(self.excluded))
        if remaining < 1:
            raise ConfigError("unlearn-clients and exclude-clients leave no client to recover with")
        self._validate_api()
        self._validate_store()

    def _validate_methods(self) -> None:
        """Check ``method``, ``methods`` and the method tables' settings (if the run sets any).

        The method tables are read (their modules imported) only for a config
        with method settings: a table's defaults are valid (a test holds each
        method to it).
        """
        from fedforget.methods import method_class, method_names

        for key, names in (("method", (self.method,)), ("methods", self.kept_methods)):
            for name in names:
                if name not in method_names():
                    raise ConfigError(
                        f"{key} names unknown unlearning method {name!r}; registered methods "
                        f"are {', '.join(method_names())}"
                    )
        if not self.method_settings:
            return
        from fedforget.methods.base import settings_problem
        from fedforget.methods.centralised import centralised_class, centralised_names

        classes = [
            *(method_class(name) for name in method_names()),
            *(centralised_class(name) for name in centralised_names()),
        ]
        for cls in classes:
            problem = settings_problem(cls, self.settings_of(cls.table)) if cls.defaults else ""
            if problem:
                raise ConfigError(problem)

    def _validate_backdoor(self) -> None:
        """Check the backdoor keys that need no data (the trigger's fit is checked on the data)."""
        if self.backdoor_target_class < 0:
            raise ConfigError(
                f"backdoor-target-class must be a class label >= 0, got "
                f"{self.backdoor_target_class}"
            )
        if self.backdoor_patch_size < 1:
            raise ConfigError(
                f"backdoor-patch-size must be >= 1 pixel a side, got {self.backdoor_patch_size}"
            )
        if not 0.0 <= self.backdoor_patch_value < math.inf:
            raise ConfigError(
                f"backdoor-patch-value must be a number >= 0 (0 = the darkest training pixel, "
                f"1 = the brightest, above 1 brighter than any), got {self.backdoor_patch_value}"
            )
        _one_of("backdoor-position", self.backdoor_position, BACKDOOR_POSITIONS)
        if not 0.0 < self.backdoor_poison_fraction <= 1.0:
            raise ConfigError(
                f"backdoor-poison-fraction must be in (0, 1], the share of each target "
                f"client's examples that carry the trigger, got {self.backdoor_poison_fraction}"
            )

    def _validate_store(self) -> None:
        """Check ``store`` and ``store-dtype`` (see :mod:`fedforget.state`)."""
        _one_of("store", self.store, STORE_KINDS)
        _one_of("store-dtype", self.store_dtype, STORE_DTYPES)
        if self.store == "disk" and not self.state_dir:
            raise ConfigError(
                'store="disk" needs state-dir: name the folder that keeps the pseudo-gradient '
                'files (state-dir/pseudo-gradients), e.g. state-dir="/var/lib/fedforget"'
            )

    def _validate_api(self) -> None:
        """Check the keys of the live unlearning API (see :mod:`fedforget.api`)."""
        if not 0 <= self.api_port <= 65535:
            raise ConfigError(
                f"api-port must be in 0..65535 (0 = pick a free port), got {self.api_port}"
            )
        if not self.api_host.strip():
            raise ConfigError('api-host must not be empty: use "127.0.0.1" for local access')
        if self.api_token_env and not self.api_token_env.replace("_", "").isalnum():
            raise ConfigError(
                f"api-token-env must name an environment variable (letters, digits, _), "
                f"got {self.api_token_env!r}"
            )
        if self.api_enabled and not self.state_dir:
            raise ConfigError(
                "api-enabled=true needs state-dir: name a folder where unlearning requests "
                'are kept across restarts, e.g. state-dir="/var/lib/fedforget"'
            )


def import_plugins(plugins: str) -> None:
    """Import the modules ``plugins`` names (comma-separated); their ``register`` calls run.

    Raises
    ------
    ConfigError
        If a module cannot be imported; the message names it and the fix.

    """
    for module in parse_client_ids(plugins):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"plugins names module {module!r}, which cannot be imported ({error}): put it "
                f"on the PYTHONPATH of the server and of every SuperNode"
            ) from error


def _coerce(key: str, value: Any, expected: type) -> Any:
    """Convert a run-config value to the attribute's type or raise naming the key."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # unlearn-clients=3 arrives as an int
    raise ConfigError(
        f"{key} must be of type {expected.__name__}, got {value!r} ({type(value).__name__})"
    )


def _method_defaults() -> dict[str, ConfigValue]:
    """Every method table's keys with their defaults, as dotted run-config keys."""
    from fedforget.methods import method_tables

    return {
        f"{table}.{key}": cast(ConfigValue, value)
        for table, settings in method_tables().items()
        for key, value in settings.items()
    }


def _method_overrides(dotted: Mapping[str, Any]) -> tuple[tuple[str, ConfigValue], ...]:
    """The dotted keys whose values differ from the defaults, type-checked, sorted."""
    defaults = _method_defaults()
    overrides: dict[str, ConfigValue] = {}
    for key, value in dotted.items():
        if key not in defaults:
            raise ConfigError(
                f"unknown method setting {key}; method settings are: {', '.join(sorted(defaults))}"
            )
        coerced = _coerce(key, value, type(defaults[key]))
        if coerced != defaults[key]:
            overrides[key] = coerced
    return tuple(sorted(overrides.items()))


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


KEY_HELP: dict[str, str] = {
    "dataset": "The data; `digits` is embedded, the others are read from `data-dir`.",
    "data-dir": (
        "Folder of the dataset's files; empty: the dataset's default place "
        "(`fashion-mnist`: `/usr/share/datasets/fashion-mnist`; stand-ins: written to "
        "`$FEDFORGET_CACHE`)."
    ),
    "num-partitions": "Clients: the training data is split into this many partitions.",
    "partitioner": (
        "How the training data is split: flwr-datasets' Dirichlet or iid partitioner, a "
        "split file (`partition-file`), or one client per site (`natural`, ProstateMRI)."
    ),
    "alpha": "Dirichlet concentration of the label skew (`partitioner=dirichlet`).",
    "min-partition-size": "Smallest partition the Dirichlet partitioner accepts.",
    "test-fraction": "Share of the data held out as the server's test set (in (0, 1)).",
    "seed": (
        "Seeds the initial model, client training and client sampling, and the test split "
        "and the partition while `data-seed` is -1."
    ),
    "model": "The model the clients train.",
    "data-seed": (
        "Seeds the test split and the partition alone (-1: `seed` does); retrained "
        "references with other training seeds then share the data."
    ),
    "backdoor-target-class": "The label the trigger carries in the `backdoor` scenario.",
    "backdoor-patch-size": ("Side of the square trigger in pixels (it must fit the images)."),
    "backdoor-patch-value": (
        "Pixel value of the trigger in units of the training inputs' range above the "
        "darkest pixel (0: the darkest, 1: the brightest; 3 is brighter than any clean image)."
    ),
    "backdoor-position": "Corner of the image the trigger sits in.",
    "backdoor-poison-fraction": (
        "Share of each target client's examples that carry the trigger (in (0, 1])."
    ),
    "local-epochs": "Local epochs of each client in a round.",
    "local-epochs-fraction": (
        "Train only this share of the local epochs' mini-batches (1: all; FedEraser's "
        "calibration rounds use it for half an epoch)."
    ),
    "batch-size": "Client mini-batch size.",
    "lr": "Client learning rate in round 1.",
    "lr-decay": "The learning rate in round t is `lr * lr-decay^(t-1)`.",
    "num-server-rounds": (
        "All rounds of the run (training, unlearning, recovery); the cap when a recovery "
        "target ends the run earlier."
    ),
    "fraction-train": "Share of the eligible clients that train in a round (> 0).",
    "fraction-evaluate": "Share of the clients that evaluate the global model (0: none).",
    "min-available-clients": "Nodes to wait for before a round starts.",
    "round-timeout": "Seconds a round waits for replies.",
    "exclude-clients": (
        "Clients that never take part, comma-separated (how the retrained reference is trained)."
    ),
    "method": "The unlearning method of requests that name none ([Methods](methods.md)).",
    "methods": (
        "Further methods, comma-separated, whose history the run keeps from round 1, so "
        "that requests may name them too."
    ),
    "unlearn-at-round": (
        "The configured request arrives after this round and takes effect in the next "
        "(0: no configured request)."
    ),
    "unlearn-clients": "Clients the configured request forgets, comma-separated.",
    "recovery-target-acc": (
        "End the run once test accuracy reaches this after a step (0: off; `fedforget run` "
        "sets the retrained model's)."
    ),
    "forget-scenario": (
        "What is forgotten: the clients' data, a random `forget-fraction` of every "
        "client's examples, or the class `forget-class`."
    ),
    "forget-class": "The class forgotten in the `class` scenario.",
    "forget-fraction": "Share of the training examples forgotten in the `random` scenario.",
    "drop-forget-set": (
        "Train without the scenario's forget set (the retrained reference of the `random` "
        "and `class` scenarios)."
    ),
    "out-dir": (
        "Where a run writes `history.json`, `events.json`, `requests.json` and its models "
        "(empty: nowhere)."
    ),
    "progress": "Print one line per round.",
    "api-enabled": (
        "Serve the unlearning API while rounds run ([The unlearning API](api.md)); needs "
        "`state-dir`."
    ),
    "api-host": "Address the API listens on; any non-loopback address needs a token.",
    "api-port": "Port of the API (0: a free one, written to `state-dir/api.json`).",
    "api-token-file": "File holding the API's bearer token (mode 0600).",
    "api-token-env": "Environment variable holding the API's token, read if no token file is set.",
    "plugins": (
        "Modules, comma-separated, imported in every process before any name is read; their "
        "`register()` calls add datasets, models, methods or metrics."
    ),
    "mixed-precision": (
        "bf16 autocast of the forward pass on a CUDA device that supports it (no effect on CPUs)."
    ),
    "state-dir": (
        "What survives a crash: the request queue, the checkpoint, the disk store, the API's "
        "address and token. Give it as an absolute path."
    ),
    "store": "Where PUF keeps each client's latest pseudo-gradient (`disk` needs `state-dir`).",
    "store-dtype": "Dtype of the stored pseudo-gradients (`float16` halves the bytes).",
    "optimizer": "The clients' optimiser.",
    "weight-decay": "The optimiser's weight decay.",
    "augment": "Augment the clients' training images (the CIFAR recipe).",
    "image-size": "Resize images to this size (0: the dataset's own).",
    "pretrained-weights": (
        "A local state-dict file loaded into the initial model where names and shapes fit."
    ),
    "partition-file": (
        "A packaged split (e.g. `cifar10_dirichlet0.3_clients10`) or a JSON file "
        '`{"<client id>": [train index, ...]}` (`partitioner=file`).'
    ),
    "download": "Download CIFAR into `data-dir` when it is missing (needs a network).",
    "device": "Where clients train (`auto`: the GPU when one is visible).",
}
"""What each run-config key means (the docs' key table is made from this and the defaults)."""
