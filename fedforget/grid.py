"""A Grid that collects replies as soon as they arrive.

Flower 1.42's deployment Grid (``HttpGrid``, the one a ServerApp gets from a
SuperLink) waits a fixed 3 s between two pulls of replies in
``send_and_receive``, and offers no setting for it. A round whose last reply
lands just after a pull waits up to 3 s more; and since each SuperNode polls
its SuperLink every 3 s, that wait often makes the SuperNodes miss the next
round's messages by one more poll. :class:`PromptGrid` keeps the Grid as it
is and implements ``send_and_receive`` with the Grid's own public
``push_messages`` / ``pull_messages`` and a shorter interval. With
``FEDFORGET_TIMING_LOG`` set (:mod:`fedforget.timing`) it logs when each
batch of messages was pushed, when its replies were all in, and how long each
pull that brought replies took (a deployment's pull downloads the replies'
arrays, and backs off 1 s when a reply's arrays are not all uploaded yet:
Flower's ``PULL_INITIAL_BACKOFF``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedforget import timing
from fedforget.protocol import CONFIG_KEY, ROUND_KEY

REPLY_POLL_INTERVAL_S = 0.2
"""Seconds between pulls of replies (Flower's HttpGrid: 3 s).

A reply waits for the next pull: on average 0.1 s instead of 1.5 s. The price
is five small requests per second from the ServerApp to its SuperLink while a
round's replies are outstanding.
"""

SIMULATION_REPLY_POLL_INTERVAL_S = 0.01
"""Seconds between pulls of replies in a simulation (Flower's InMemoryGrid: 0.1 s).

There a pull is a lookup in the LinkState of the same process, so a hundred a
second cost next to nothing, and a round's last reply waits 5 ms on average
instead of 50 ms. ``benchmarks/flower_overhead.py`` measures the overhead of a
simulated round as a whole.
"""


def message_round(message: Message) -> int:
    """The server round a message belongs to (its config's ``server-round``; 0 if none)."""
    config = message.content.config_records.get(CONFIG_KEY)
    return int(config[ROUND_KEY]) if config is not None and ROUND_KEY in config else 0


class PromptGrid(Grid):
    """``grid`` with ``send_and_receive`` pulling replies every ``reply_poll_interval`` s."""

    def __init__(self, grid: Grid, reply_poll_interval: float = REPLY_POLL_INTERVAL_S) -> None:
        if reply_poll_interval <= 0:
            raise ValueError(f"reply_poll_interval must be > 0 s, got {reply_poll_interval}")
        self.grid = grid
        self.reply_poll_interval = reply_poll_interval

    def set_run(self, run: Run) -> None:
        """Set the run the wrapped grid operates in."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message with the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids of the wrapped grid."""
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages through the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies through the wrapped grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``; pull their replies until all arrived or ``timeout`` s passed.

        The semantics of Flower's Grids: ``timeout=None`` waits for every
        reply; replies that arrive late are not returned.
        """
        messages = list(messages)
        pushed = time.time()
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pulls: list[list[float]] = []  # [start, seconds, replies] of each pull that brought some
        while pending:
            started = time.time()
            arrived = list(self.pull_messages(pending))
            if arrived:
                pulls.append([started, time.time() - started, len(arrived)])
            replies.extend(arrived)
            pending.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            pause = self.reply_poll_interval
            if deadline is not None:
                pause = min(pause, max(deadline - time.monotonic(), 0.0))
            time.sleep(pause)
        if timing.enabled():
            timing.append(
                {
                    "event": "grid",
                    "types": sorted({m.metadata.message_type for m in messages}),
                    "rounds": sorted({message_round(m) for m in messages}),
                    "messages": len(messages),
                    "replies": len(replies),
                    "pushed": pushed,
                    "received": time.time(),
                    "pulls": pulls,
                }
            )
        return replies
