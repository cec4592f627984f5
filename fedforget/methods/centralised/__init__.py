"""The registry of centralised unlearning methods: one file each, one line here.

``CENTRALISED_METHODS`` maps a registry name to ``"module:Class"``; classes
are imported when first asked for. Their settings live in the run-config
tables ``centralised.<name>``.
"""

from __future__ import annotations

import importlib

from fedforget.methods.centralised.base import (
    ALL_SCENARIOS,
    CentralisedMethod,
    CentralisedOutcome,
    UnlearningData,
)

CENTRALISED_METHODS: dict[str, str] = {
    "retrain": "fedforget.methods.centralised.retrain:Retrain",
    "ft": "fedforget.methods.centralised.finetune:FineTune",
    "ga": "fedforget.methods.centralised.gradient_ascent:GradientAscent",
    "neggrad-plus": "fedforget.methods.centralised.neggrad_plus:NegGradPlus",
    "rl": "fedforget.methods.centralised.random_labels:RandomLabels",
    "salun": "fedforget.methods.centralised.salun:SalUn",
    "l1-sparse": "fedforget.methods.centralised.l1_sparse:L1Sparse",
    "iu": "fedforget.methods.centralised.influence:InfluenceUnlearning",
    "scrub": "fedforget.methods.centralised.scrub:SCRUB",
    "trw": "fedforget.methods.centralised.trw:TiltedReweighting",
    "output-filter": "fedforget.methods.centralised.output_filter:OutputFilterUnlearning",
}
_loaded: dict[str, type[CentralisedMethod]] = {}


def centralised_names() -> list[str]:
    """Every centralised method name, in registry order."""
    return list(CENTRALISED_METHODS)


def centralised_class(name: str) -> type[CentralisedMethod]:
    """The class registered as ``name``; a KeyError lists the registered ones."""
    if name not in CENTRALISED_METHODS:
        raise KeyError(
            f"unknown centralised unlearning method {name!r}: registered methods are "
            f"{', '.join(centralised_names())}"
        )
    if name not in _loaded:
        module, _, attribute = CENTRALISED_METHODS[name].partition(":")
        _loaded[name] = getattr(importlib.import_module(module), attribute)
    return _loaded[name]


__all__ = [
    "ALL_SCENARIOS",
    "CENTRALISED_METHODS",
    "CentralisedMethod",
    "CentralisedOutcome",
    "UnlearningData",
    "centralised_class",
    "centralised_names",
]
