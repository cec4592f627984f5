"""What the protocol's phases produce, as typed records (the bottom layer of ``experiment``).

A :class:`PhaseRecord` is one trained model with its round records, its
evaluation history and its wall time: a retrained reference, the original
federation, or a method's run after the request (:meth:`PhaseRecord.from_run`).
The history's raw keys (``round``, ``elapsed_s``, the ``test_*`` scores) are
read here and nowhere else in the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedforget.arrays import Arrays
from fedforget.federated.records import RoundRecord

if TYPE_CHECKING:
    from fedforget.federated.federation import RunRecord


@dataclass
class PhaseRecord:
    """A phase that trained a model: its model, rounds, history and wall time."""

    arrays: Arrays
    rounds: list[RoundRecord]
    history: list[dict[str, Any]]
    wall_s: float

    @classmethod
    def from_run(cls, record: RunRecord) -> PhaseRecord:
        """The phase of a whole federation run (its final model)."""
        return cls(record.final_arrays, record.rounds, record.history, record.wall_s)

    def cost(self, first_round: int = 1) -> dict[str, float | int]:
        """Rounds, client-epochs and bytes from ``first_round`` on, and the wall time."""
        chosen = [r for r in self.rounds if r.server_round >= first_round]
        return {
            "rounds": len(chosen),
            "client_epochs": round(sum(r.client_epochs for r in chosen), 3),
            "bytes_up": sum(r.bytes_up for r in chosen),
            "bytes_down": sum(r.bytes_down for r in chosen),
            "server_storage_bytes": 0,
            "wall_s": round(self.wall_s, 2),
        }

    def elapsed_at(self, server_round: int) -> float:
        """Seconds the phase had run when round ``server_round`` was evaluated (0: not run)."""
        return max((h["elapsed_s"] for h in self.history if h["round"] == server_round), default=0)

    def until(self, server_round: int, arrays: Arrays) -> PhaseRecord:
        """The part of the phase up to ``server_round``, whose model was ``arrays``."""
        history = [h for h in self.history if h["round"] <= server_round]
        return PhaseRecord(
            arrays,
            [r for r in self.rounds if r.server_round <= server_round],
            history,
            history[-1]["elapsed_s"] if history else 0.0,
        )

    def after(self, server_round: int) -> PhaseRecord:
        """The phase without the time it spent up to ``server_round`` (its costs from there)."""
        return PhaseRecord(
            self.arrays, self.rounds, self.history, self.wall_s - self.elapsed_at(server_round)
        )

    def curve(self, request_round: int) -> list[dict[str, Any]]:
        """The test scores from ``request_round`` on: ``after`` (rounds after it), ``test_*``."""
        return [
            {
                "after": h["round"] - request_round,
                **{k: v for k, v in h.items() if k.startswith("test_")},
            }
            for h in self.history
            if h["round"] >= request_round
        ]

    def tagged(self, run: str) -> list[dict[str, Any]]:
        """The history with each entry naming its ``run`` (``history.csv``)."""
        return [{"run": run, **entry} for entry in self.history]


@dataclass
class Cell:
    """One federated method applied to the original model: its run, or why it was refused."""

    method: str
    record: RunRecord | None = None
    reason: str = ""
