"""PUF's arithmetic as one pure function: arrays in, arrays out.

Notation (docs: ``puf-reference.md``): ``w`` is the global model the
pseudo-gradients refer to, ``Delta_k = w_k - w`` the pseudo-gradient of client
``k`` with ``n_k`` training examples, ``U`` the clients to forget and ``S`` the
remaining clients that trained in the unlearning round.

* PUF-Special (a dedicated round, only the targets' updates)::

      w' = w - eta * sum_{u in U} (n_u / sum_{v in U} n_v) * Delta_u      (eta = 2)

* PUF-Regular (folded into an ordinary FedAvg round with the remaining clients)::

      w' = w + sum_{k in S} (n_k / N) Delta_k - eta * sum_{u in U} (n_u / N) Delta_u
      N  = sum_{k in S} n_k + sum_{u in U} n_u                           (eta = 20)

Which arrays change:

* floating-point parameters follow the formulas above;
* integer arrays (``num_batches_tracked``) are never touched;
* statistics (floating-point buffers such as BatchNorm ``running_mean`` and
  ``running_var``, named in ``statistic_keys``) are never negated: negating a
  running variance can make it negative. PUF-Special keeps ``w``'s statistics;
  PUF-Regular sets them to the remaining clients' example-weighted average (what
  FedAvg of ``S`` alone would give), or keeps ``w``'s if no client remains.

Computation is in float64; results are cast back to each array's dtype.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedforget.config import UNLEARN_MODES

Arrays = dict[str, NDArray[np.generic]]


@dataclass(frozen=True)
class Contribution:
    """One client's pseudo-gradient and the number of examples behind it."""

    pseudo_gradient: Mapping[str, NDArray[np.generic]]
    num_examples: int


def is_float_array(array: NDArray[np.generic]) -> bool:
    """True for the arrays PUF may change (floating-point dtypes)."""
    return bool(np.issubdtype(array.dtype, np.floating))


def puf_update(
    global_arrays: Mapping[str, NDArray[np.generic]],
    targets: Mapping[str, Contribution],
    *,
    mode: str,
    eta: float,
    remaining: Mapping[str, Contribution] | None = None,
    statistic_keys: Collection[str] = (),
) -> Arrays:
    """Return the global model after forgetting ``targets`` with PUF.

    Parameters
    ----------
    global_arrays : Mapping[str, NDArray]
        The global model ``w`` (state-dict names to arrays) that the
        pseudo-gradients were computed against.
    targets : Mapping[str, Contribution]
        Client id to pseudo-gradient and example count of every client to
        forget (one or several, requested together). Must not be empty.
    mode : str
        ``"special"`` (only the targets' negated updates) or ``"regular"``
        (folded into a FedAvg round of ``remaining``).
    eta : float
        Scale of the negated pseudo-gradients (paper: 2.0 special, 20.0 regular).
    remaining : Mapping[str, Contribution] | None (default: None)
        Regular mode only: the pseudo-gradients of the remaining clients that
        trained in the unlearning round. Must be empty or None in special mode.
    statistic_keys : Collection[str] (default: ())
        Names of floating-point arrays that are running statistics, not
        parameters (BatchNorm ``running_mean``/``running_var``).

    Returns
    -------
    dict[str, NDArray]
        The new global model, same keys, shapes and dtypes as ``global_arrays``.

    Raises
    ------
    ValueError
        On an unknown mode, ``eta <= 0``, no targets, a client both in targets
        and remaining, non-positive example counts, remaining clients in special
        mode, or pseudo-gradients whose keys or shapes differ from the model's.

    """
    remaining = dict(remaining or {})
    _check_arguments(global_arrays, targets, remaining, mode, eta)
    statistics = set(statistic_keys)

    if mode == "special":
        total = sum(c.num_examples for c in targets.values())
        target_weights = {cid: -eta * c.num_examples / total for cid, c in targets.items()}
        remaining_weights: dict[str, float] = {}
    else:
        total = sum(c.num_examples for c in targets.values()) + sum(
            c.num_examples for c in remaining.values()
        )
        target_weights = {cid: -eta * c.num_examples / total for cid, c in targets.items()}
        remaining_weights = {cid: c.num_examples / total for cid, c in remaining.items()}
    remaining_total = sum(c.num_examples for c in remaining.values())

    updated: Arrays = {}
    for name, value in global_arrays.items():
        if not is_float_array(value):
            updated[name] = value.copy()
            continue
        step = np.zeros(value.shape, dtype=np.float64)
        if name in statistics:
            # FedAvg of the remaining clients only; never negated.
            for contribution in remaining.values():
                weight = contribution.num_examples / remaining_total
                step += weight * np.asarray(contribution.pseudo_gradient[name], np.float64)
        else:
            for weights, contributions in (
                (target_weights, targets),
                (remaining_weights, remaining),
            ):
                for cid, weight in weights.items():
                    step += weight * np.asarray(
                        contributions[cid].pseudo_gradient[name], np.float64
                    )
        updated[name] = (np.asarray(value, np.float64) + step).astype(value.dtype)
    return updated


def update_norm(before: Mapping[str, NDArray[np.generic]], after: Arrays) -> float:
    """L2 norm of ``after - before`` over the floating-point arrays."""
    squared = 0.0
    for name, value in before.items():
        if is_float_array(value):
            diff = np.asarray(after[name], np.float64) - np.asarray(value, np.float64)
            squared += float(np.sum(diff * diff))
    return float(np.sqrt(squared))


def _check_arguments(
    global_arrays: Mapping[str, NDArray[np.generic]],
    targets: Mapping[str, Contribution],
    remaining: Mapping[str, Contribution],
    mode: str,
    eta: float,
) -> None:
    if mode not in UNLEARN_MODES:
        raise ValueError(f"mode must be one of {', '.join(UNLEARN_MODES)}, got {mode!r}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if not targets:
        raise ValueError("no clients to forget: targets is empty")
    if mode == "special" and remaining:
        raise ValueError(
            "PUF-Special uses only the targets' updates; pass remaining clients "
            "only with mode='regular'"
        )
    overlap = set(targets) & set(remaining)
    if overlap:
        raise ValueError(f"clients {sorted(overlap)} are both targets and remaining")
    for cid, contribution in {**targets, **remaining}.items():
        if contribution.num_examples <= 0:
            raise ValueError(
                f"client {cid} reports {contribution.num_examples} examples; must be > 0"
            )
        for name, value in global_arrays.items():
            if not is_float_array(value):
                continue
            delta = contribution.pseudo_gradient.get(name)
            if delta is None:
                raise ValueError(f"pseudo-gradient of client {cid} lacks array {name!r}")
            if np.shape(delta) != value.shape:
                raise ValueError(
                    f"pseudo-gradient of client {cid} has shape {np.shape(delta)} for "
                    f"{name!r}; the model's is {value.shape}"
                )
