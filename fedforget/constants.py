"""The run configuration's vocabulary: value sets, value type, error; this module imports nothing.

Every layer may read these (the pseudo-gradient stores, the data, the methods,
the ClientApp) without importing :mod:`fedforget.config` or anything heavier,
so that no import cycle runs through the configuration.
"""

PARTITIONERS = ("dirichlet", "iid", "file", "natural")
"""How the training data is split (``partitioner``)."""
FORGET_SCENARIOS = ("client", "random", "class", "backdoor")
"""What is forgotten (``forget-scenario``)."""
CLIENT_SCENARIOS = ("client", "backdoor")
"""Scenarios whose forget set is whole clients' data (what federated methods forget)."""
BACKDOOR_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "centre")
"""Where the backdoor trigger sits (``backdoor-position``)."""
OPTIMIZERS = ("sgd", "adam", "adamw")
"""The clients' optimisers (``optimizer``)."""
DEVICES = ("auto", "cpu", "cuda")
"""Where clients train (``device``; ``cuda:<index>`` too)."""
STORE_KINDS = ("memory", "disk")
"""Where PUF keeps pseudo-gradients (``store``): in memory (and the checkpoint), or on disk."""
STORE_DTYPES = ("float32", "float16")
"""Dtype of stored pseudo-gradients (``store-dtype``)."""

SERVER_KEYS = frozenset(
    {
        "method",
        "methods",
        "fraction-train",
        "fraction-evaluate",
        "min-available-clients",
        "round-timeout",
        "recovery-target-acc",
        "out-dir",
        "progress",
        "api-enabled",
        "api-host",
        "api-port",
        "api-token-file",
        "api-token-env",
        "state-dir",
        "store",
        "store-dtype",
    }
)
"""Run-config keys only the server reads: ClientApp messages leave them out (their section)."""

ConfigValue = int | float | str | bool
"""A run-config value."""


class ConfigError(ValueError):
    """An invalid run configuration; the message names the offending key."""
