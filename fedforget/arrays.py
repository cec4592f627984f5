"""Model arrays: the neutral type every part of fedforget exchanges.

A model is a ``dict`` of state-dict names to numpy arrays (:data:`Arrays`).
This module converts them to and from Flower's ``ArrayRecord`` and holds the
small arithmetic that server-side methods share (weighted sums, norms,
float checks), so no method writes its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # the arithmetic needs no Flower; only the record conversions do
    from flwr.app import ArrayRecord

Arrays = dict[str, NDArray[np.generic]]


def is_float_array(array: NDArray[np.generic]) -> bool:
    """True for the arrays unlearning may change (floating-point dtypes)."""
    return bool(np.issubdtype(array.dtype, np.floating))


def to_arrays(record: ArrayRecord) -> Arrays:
    """An ArrayRecord as a dict of numpy arrays (state-dict names kept)."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: Mapping[str, NDArray[np.generic]]) -> ArrayRecord:
    """A dict of numpy arrays as an ArrayRecord."""
    from flwr.app import Array, ArrayRecord

    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them shape (1,))
    return ArrayRecord(
        {name: Array(np.require(value, requirements="C")) for name, value in arrays.items()}
    )


def record_nbytes(records: Iterable[ArrayRecord]) -> int:
    """Bytes of the serialised arrays in ``records`` (what travels on the wire)."""
    return sum(len(array.data) for record in records for array in record.values())


def arrays_nbytes(arrays: Mapping[str, NDArray[np.generic]]) -> int:
    """Bytes held by ``arrays``."""
    return sum(int(value.nbytes) for value in arrays.values())


def copy_arrays(arrays: Mapping[str, NDArray[np.generic]]) -> Arrays:
    """Private copies of ``arrays``."""
    return {name: np.array(value, copy=True) for name, value in arrays.items()}


def weighted_sum(
    base: Mapping[str, NDArray[np.generic]],
    terms: Iterable[tuple[float, Mapping[str, NDArray[np.generic]]]],
    keys: Iterable[str] | None = None,
) -> Arrays:
    """``base + sum(weight * term)`` over the float arrays named in ``keys`` (default: all).

    Computed in float64 and cast back to each array's dtype; arrays outside
    ``keys`` and integer arrays are copied from ``base`` unchanged.
    """
    terms = list(terms)
    chosen = set(base) if keys is None else set(keys)
    result: Arrays = {}
    for name, value in base.items():
        if name not in chosen or not is_float_array(value):
            result[name] = np.array(value, copy=True)
            continue
        total = np.asarray(value, np.float64).copy()
        for weight, term in terms:
            total += weight * np.asarray(term[name], np.float64)
        result[name] = total.astype(value.dtype)
    return result


def difference(
    after: Mapping[str, NDArray[np.generic]], before: Mapping[str, NDArray[np.generic]]
) -> Arrays:
    """``after - before`` over the float arrays of ``before`` (a model update)."""
    return {
        name: (np.asarray(after[name], np.float64) - np.asarray(value, np.float64)).astype(
            value.dtype
        )
        for name, value in before.items()
        if is_float_array(value)
    }


def norm(arrays: Mapping[str, NDArray[np.generic]], keys: Iterable[str] | None = None) -> float:
    """L2 norm over the float arrays of ``arrays`` (or those named in ``keys``)."""
    names = list(arrays) if keys is None else list(keys)
    squared = 0.0
    for name in names:
        value = arrays[name]
        if is_float_array(value):
            flat = np.asarray(value, np.float64)
            squared += float(np.sum(flat * flat))
    return float(np.sqrt(squared))


def update_norm(
    before: Mapping[str, NDArray[np.generic]], after: Mapping[str, NDArray[np.generic]]
) -> float:
    """L2 norm of ``after - before`` over the floating-point arrays."""
    return norm(difference(after, before))


def changes_any(
    before: Mapping[str, NDArray[np.generic]], after: Mapping[str, NDArray[np.generic]]
) -> bool:
    """True if a float array of ``after`` differs from ``before`` in a single value."""
    return any(
        not np.array_equal(after[name], value)
        for name, value in before.items()
        if is_float_array(value)
    )


def same_arrays(a: Mapping[str, NDArray[np.generic]], b: Mapping[str, NDArray[np.generic]]) -> bool:
    """True if ``a`` and ``b`` hold the same names with the same shapes and values."""
    return a.keys() == b.keys() and all(
        a[name].shape == b[name].shape and np.array_equal(a[name], b[name]) for name in a
    )


def all_finite(arrays: Mapping[str, NDArray[np.generic]]) -> bool:
    """True if no float array holds NaN or Inf."""
    return all(np.all(np.isfinite(v)) for v in arrays.values() if is_float_array(v))
