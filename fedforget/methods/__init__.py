"""The registry of federated unlearning methods: one file each, one line here.

``FEDERATED_METHODS`` maps a registry name to ``"module:Class"``; classes are
imported when first asked for, so a ClientApp that never runs a method never
imports it. :func:`register` adds a class at run time (a plug-in outside this
package, or a test's toy method).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from fedforget.methods.base import (
    ClientStep,
    ClientUpdate,
    FederatedMethod,
    MethodContext,
    Needs,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
)

FEDERATED_METHODS: dict[str, str] = {
    "retrain": "fedforget.methods.retrain:Retrain",
    "natural": "fedforget.methods.natural:Natural",
    "puf-special": "fedforget.methods.puf:PufSpecial",
    "puf-regular": "fedforget.methods.puf:PufRegular",
    "federaser": "fedforget.methods.federaser:FedEraser",
    "fedau": "fedforget.methods.fedau:FedAU",
    "mode": "fedforget.methods.mode:MoDe",
    "not": "fedforget.methods.negation:NoT",
    "pga": "fedforget.methods.pga:PGA",
    "fedquit": "fedforget.methods.fedquit:FedQUIT",
}
_registered: dict[str, type[FederatedMethod]] = {}


def register(method: type[FederatedMethod]) -> type[FederatedMethod]:
    """Add a method class to the registry under its ``name`` (usable as a decorator)."""
    if method.name in FEDERATED_METHODS and method.name not in _registered:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _registered[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added by :func:`register` (built-in methods stay)."""
    if name in FEDERATED_METHODS:
        raise ValueError(f"{name!r} is a built-in method: it cannot be unregistered")
    _registered.pop(name, None)


def method_names() -> list[str]:
    """Every registered method name, built-in ones in registry order."""
    return [*FEDERATED_METHODS, *(n for n in _registered if n not in FEDERATED_METHODS)]


def method_class(name: str) -> type[FederatedMethod]:
    """The class registered as ``name``.

    Raises
    ------
    KeyError
        For an unknown name; the message lists the registered ones.

    """
    if name in _registered:
        return _registered[name]
    if name not in FEDERATED_METHODS:
        raise KeyError(
            f"unknown unlearning method {name!r}: registered methods are "
            f"{', '.join(method_names())}"
        )
    module, _, attribute = FEDERATED_METHODS[name].partition(":")
    cls: type[FederatedMethod] = getattr(importlib.import_module(module), attribute)
    _registered[name] = cls
    return cls


def method_tables() -> dict[str, dict[str, object]]:
    """Each config table with its keys' defaults (``puf``, ``centralised.ft``, ...).

    Federated methods may share a table (PUF-Special and PUF-Regular share
    ``puf``); each centralised method has its own, ``centralised.<name>``.
    """
    from fedforget.methods.centralised import centralised_class, centralised_names

    tables: dict[str, dict[str, object]] = {}
    classes = [
        *(method_class(name) for name in method_names()),
        *(centralised_class(name) for name in centralised_names()),
    ]
    for cls in classes:
        if cls.defaults:
            tables.setdefault(cls.table, {}).update(cls.defaults)
    return tables


def client_steps() -> Mapping[str, ClientStep]:
    """The client step of every method that has one, by method name (ClientApp actions)."""
    steps: dict[str, ClientStep] = {}
    for name in method_names():
        step = method_class(name).client_step
        if step is not None:
            steps[name] = step
    return steps


__all__ = [
    "FEDERATED_METHODS",
    "ClientStep",
    "ClientUpdate",
    "FederatedMethod",
    "MethodContext",
    "Needs",
    "RoundPlan",
    "StepResult",
    "StepState",
    "UnlearningStep",
    "client_steps",
    "method_class",
    "method_names",
    "method_tables",
    "register",
    "unregister",
]
