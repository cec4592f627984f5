"""Reply validation: only finite, well-formed updates reach a method or the aggregate."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable

import numpy as np
from flwr.app import Message

from fedforget.arrays import Arrays, is_float_array, to_arrays
from fedforget.federated.clients import ClientDirectory
from fedforget.methods.base import ClientUpdate
from fedforget.protocol import EVALUATION_KEY, EXAMPLES_KEY, natural_order

logger = logging.getLogger(__name__)


def check_reply(message: Message, sent: Arrays) -> tuple[str, Arrays, Arrays, int]:
    """('' or the reason to reject, returned arrays, update against ``sent``, examples)."""
    content = message.content
    # a train reply may also carry the evaluation of the model it received (EVALUATION_KEY)
    records = [r for k, r in content.metric_records.items() if k != EVALUATION_KEY]
    if len(content.array_records) != 1 or len(records) != 1:
        return "expected exactly one ArrayRecord and one MetricRecord", {}, {}, 0
    metrics = records[0]
    count = metrics.get(EXAMPLES_KEY)
    if not isinstance(count, int | float) or not count > 0 or not math.isfinite(count):
        return f"{EXAMPLES_KEY} must be a positive number, got {count!r}", {}, {}, 0
    arrays = to_arrays(next(iter(content.array_records.values())))
    if set(arrays) != set(sent):
        return "array names differ from the global model's", {}, {}, 0
    delta: Arrays = {}
    for name, reference in sent.items():
        value = arrays[name]
        if value.shape != reference.shape:
            return f"{name} has shape {value.shape}, the model's is {reference.shape}", {}, {}, 0
        if is_float_array(reference):
            if not np.all(np.isfinite(value)):
                return f"{name} contains NaN or Inf", {}, {}, 0
            value = arrays[name] = value.astype(reference.dtype)
            delta[name] = (value - reference).astype(reference.dtype)
    return "", arrays, delta, int(count)


def accept_replies(
    replies: Iterable[Message],
    sent: Arrays,
    directory: ClientDirectory,
    expected: Collection[str],
) -> tuple[list[ClientUpdate], int]:
    """Valid updates from the clients in ``expected``, in client-id order, and the rejected count.

    Replies that are errors, malformed, non-finite, from a forgotten or excluded
    client, or from a client that was not asked are logged and rejected.
    Aggregating in client-id order (not arrival order) keeps float sums, and so
    a seeded run, reproducible.
    """
    accepted: dict[str, ClientUpdate] = {}
    rejected = 0
    for message in replies:
        node = message.metadata.src_node_id
        if message.has_error():
            logger.warning("Reply from node %s is an error: %s", node, message.error.reason)
            rejected += 1
            continue
        client_id = directory.learn(message)
        reason, arrays, delta, count = check_reply(message, sent)
        if not reason and client_id in directory.forgotten | directory.excluded:
            reason = "the client has been forgotten or is excluded"
        if not reason and client_id not in expected:
            reason = "the client was not asked to take part in this round"
        if reason:
            logger.warning("Rejected reply of client %s (node %s): %s", client_id, node, reason)
            rejected += 1
            continue
        accepted[client_id] = ClientUpdate(client_id, arrays, delta, count)
    ordered = sorted(accepted.values(), key=lambda u: natural_order(u.client_id))
    return ordered, rejected
