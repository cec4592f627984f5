"""fedforget: federated learning with the right to be forgotten (PUF on Flower).

The PUF arithmetic is importable without Flower::

    from fedforget import Contribution, puf_update

A Flower app of your own forgets clients with :class:`UnlearningFedAvg` in
place of Flower's ``FedAvg`` (and, optionally, ``answer_identity_queries(app)``
in its ClientApp, so that clients are forgotten by partition id).

Names are loaded on first use (PEP 562): ``import fedforget.config`` in a
ClientApp process imports the config module alone, not the stores, queues and
methods exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ConfigError": "fedforget.config",
    "Contribution": "fedforget.methods.puf",
    "FederationConfig": "fedforget.config",
    "InMemoryPseudoGradientStore": "fedforget.state.store",
    "InMemoryRequestQueue": "fedforget.requests",
    "PseudoGradientStore": "fedforget.state.store",
    "RequestQueue": "fedforget.requests",
    "StoredPseudoGradient": "fedforget.state.store",
    "UnlearningFedAvg": "fedforget.federated.fedavg",
    "UnlearningRequest": "fedforget.requests",
    "answer_identity_queries": "fedforget.client_identity",
    "puf_update": "fedforget.methods.puf",
    "update_norm": "fedforget.arrays",
}

if TYPE_CHECKING:
    from fedforget.arrays import update_norm
    from fedforget.client_identity import answer_identity_queries
    from fedforget.config import ConfigError, FederationConfig
    from fedforget.federated.fedavg import UnlearningFedAvg
    from fedforget.methods.puf import Contribution, puf_update
    from fedforget.requests import InMemoryRequestQueue, RequestQueue, UnlearningRequest
    from fedforget.state.store import (
        InMemoryPseudoGradientStore,
        PseudoGradientStore,
        StoredPseudoGradient,
    )


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first access."""
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fedforget' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ConfigError",
    "Contribution",
    "FederationConfig",
    "InMemoryPseudoGradientStore",
    "InMemoryRequestQueue",
    "PseudoGradientStore",
    "RequestQueue",
    "StoredPseudoGradient",
    "UnlearningFedAvg",
    "UnlearningRequest",
    "answer_identity_queries",
    "puf_update",
    "update_norm",
]
