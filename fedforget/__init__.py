"""fedforget: federated learning with the right to be forgotten (PUF on Flower).

The PUF arithmetic is importable without Flower::

    from fedforget import Contribution, puf_update
"""

from fedforget.arrays import update_norm
from fedforget.config import ConfigError, FederationConfig
from fedforget.methods.puf import Contribution, puf_update
from fedforget.requests import InMemoryRequestQueue, RequestQueue, UnlearningRequest
from fedforget.store import (
    InMemoryPseudoGradientStore,
    PseudoGradientStore,
    StoredPseudoGradient,
)

__all__ = [
    "ConfigError",
    "Contribution",
    "FederationConfig",
    "InMemoryPseudoGradientStore",
    "InMemoryRequestQueue",
    "PseudoGradientStore",
    "RequestQueue",
    "StoredPseudoGradient",
    "UnlearningRequest",
    "puf_update",
    "update_norm",
]
