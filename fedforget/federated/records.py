"""What the spine records: one record per round, one event per completed step, a status.

Round records carry the costs the comparison reports (bytes each way, client
epochs, wall time); :class:`FederationStatus` is a frozen snapshot replaced
at each round boundary, the only thing the unlearning API reads from a
running strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fedforget.arrays import Arrays
from fedforget.methods.base import ConfigValue


@dataclass
class RoundRecord:
    """Who took part in a round, what kind of round it was and what it cost."""

    server_round: int
    phase: str  # "train", "unlearn" or "recover"
    participants: list[str]
    method: str = ""  # the unlearning method of an "unlearn" round
    actions: dict[str, str] = field(default_factory=dict)  # client -> action, if not "train"
    contributors: list[str] = field(default_factory=list)
    rejected_replies: int = 0
    bytes_down: int = 0  # model arrays sent to clients
    bytes_up: int = 0  # model arrays received from clients
    client_epochs: float = 0.0  # local epochs run by the clients that answered
    round_s: float = 0.0  # configure_train to aggregate_train: the round without evaluation


@dataclass(frozen=True)
class UnlearningEvent:
    """A completed unlearning step (no client data)."""

    server_round: int  # the round in which the step completed (took effect)
    first_round: int
    method: str
    clients: tuple[str, ...]
    request_ids: tuple[str, ...]
    settings: dict[str, ConfigValue]
    update_norm: float
    applied_at: float
    stored_bytes: int  # what the method kept on the server when the step began
    model_before: Arrays = field(repr=False, compare=False)


def event_state(event: UnlearningEvent) -> dict[str, Any]:
    """An event as JSON values, without ``model_before``.

    The model before the step holds the forgotten clients' contributions: it is
    never written to the state directory (a resumed run has it only if the run
    wrote ``original_model.npz`` to its out-dir).
    """
    return {
        f.name: list(value) if isinstance(value := getattr(event, f.name), tuple) else value
        for f in fields(event)
        if f.name != "model_before"
    }


def event_from_state(state: dict[str, Any], model_before: Arrays | None = None) -> UnlearningEvent:
    """The inverse of :func:`event_state` (``model_before`` empty unless given)."""
    return UnlearningEvent(
        **{
            **state,
            "clients": tuple(state["clients"]),
            "request_ids": tuple(state["request_ids"]),
            "settings": dict(state["settings"]),
        },
        model_before=model_before or {},
    )


@dataclass(frozen=True)
class FederationStatus:
    """The federation at the last round boundary, as the API reports it."""

    current_round: int = 0
    method: str = ""
    methods_kept: tuple[str, ...] = ()
    clients_seen: tuple[str, ...] = ()
    clients_forgotten: tuple[str, ...] = ()
    clients_excluded: tuple[str, ...] = ()
    stored_clients: int = 0
    stored_bytes: int = 0
    test_metric: str = ""  # the server-side evaluation metric of test_scores
    test_scores: tuple[tuple[int, float], ...] = ()  # (round, value) per evaluation, oldest first
