"""UnlearningFedAvg: Flower's FedAvg that forgets clients, for a Flower app of your own.

Where a Flower app builds ``FedAvg(fraction_train=0.5)``, it builds::

    strategy = fedforget.UnlearningFedAvg(arrays, method="puf-special", requests=queue,
                                          fraction_train=0.5)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

with the model arrays it already has (``ArrayRecord(model.state_dict())``)
and nothing else of fedforget's: the method, its context (derived from the
arrays), the request intake, the client directory and the queue are wired
here. The strategy runs the same spine as ``fedforget run``
(:class:`~fedforget.federated.strategy.UnlearningStrategy`).

Only methods that need nothing from the clients beyond ordinary training
are served, because a ClientApp of your own runs no unlearning action:
:data:`CLIENT_FREE_METHODS` (retrain, natural, PUF-Special and PUF-Regular,
FedEraser, NoT). Choosing another one is an error that says so.

With ``state_dir`` the queue is the durable SQLite queue in that folder, and
``api=True`` serves the unlearning API (``fedforget unlearn --state-dir DIR``)
while :meth:`UnlearningFedAvg.start` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from fedforget.arrays import Arrays, copy_arrays, is_float_array, to_arrays
from fedforget.config import ConfigValue, FederationConfig
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.intake import Intake
from fedforget.federated.strategy import UnlearningStrategy
from fedforget.methods import method_class, method_names
from fedforget.methods.base import MethodContext
from fedforget.protocol import ARRAYS_KEY, CONFIG_KEY, EXAMPLES_KEY
from fedforget.requests import InMemoryRequestQueue, RequestQueue, forgotten_clients

STATISTIC_SUFFIXES = ("running_mean", "running_var")
"""State-dict names of running statistics (BatchNorm, InstanceNorm), which PUF never negates."""


def client_free_methods() -> list[str]:
    """Registered methods whose step needs no ClientApp action of their own."""
    return [name for name in method_names() if method_class(name).client_step is None]


class UnlearningFedAvg(UnlearningStrategy):
    """FedAvg that applies unlearning requests with a registered method, for any ClientApp.

    Parameters
    ----------
    initial_arrays : ArrayRecord | Mapping[str, NDArray]
        The model the federation starts from (``ArrayRecord(model.state_dict())``);
        ``retrain`` returns to it. :meth:`start` must be given the same arrays.
    method : str (default: "puf-special")
        The method of requests that name none.
    methods : Sequence[str] (default: ())
        Further methods requests may name; those that keep history (PUF,
        FedEraser) keep it from round 1.
    requests : RequestQueue | None (default: None)
        The queue requests arrive in (:class:`fedforget.InMemoryRequestQueue`
        if None); see ``state_dir``.
    settings : Mapping[str, ConfigValue] | None (default: None)
        Method settings as run-config keys, e.g. ``{"puf.eta-special": 1.5}``.
    state_dir : str | Path | None (default: None)
        Keep requests in the durable queue of this folder (instead of
        ``requests``): they and the forgotten clients survive a restart.
    api : bool (default: False)
        Serve the unlearning API on ``state_dir`` while :meth:`start` runs.
    api_host, api_port : str, int (default: "127.0.0.1", 0)
        Where the API listens (port 0: a free one, written to ``state_dir/api.json``).
    local_epochs : int (default: 1)
        The clients' local epochs per round, for the cost records.
    seed : int (default: 0)
        Seed of client sampling.
    statistic_keys : Collection[str] | None (default: None)
        Names of running statistics; None takes the names ending in
        ``running_mean`` / ``running_var``.
    recovery_target : float (default: 0.0)
        End the run once ``evaluate_fn``'s ``recovery_metric`` reaches this
        after a step (0: run every round).
    recovery_metric : str (default: "accuracy")
        The key of ``evaluate_fn``'s MetricRecord that ``recovery_target`` reads.
    **fedavg_kwargs
        Flower's FedAvg arguments (``fraction_train``, ``min_available_nodes``, ...).

    Raises
    ------
    ValueError
        For a method that needs a client step, unknown settings, ``api``
        without ``state_dir``, or both ``requests`` and ``state_dir``.

    """

    def __init__(
        self,
        initial_arrays: ArrayRecord | Mapping[str, np.ndarray],
        *,
        method: str = "puf-special",
        methods: Sequence[str] = (),
        requests: RequestQueue | None = None,
        settings: Mapping[str, ConfigValue] | None = None,
        state_dir: str | Path | None = None,
        api: bool = False,
        api_host: str = "127.0.0.1",
        api_port: int = 0,
        local_epochs: int = 1,
        seed: int = 0,
        statistic_keys: Collection[str] | None = None,
        recovery_target: float = 0.0,
        recovery_metric: str = "accuracy",
        **fedavg_kwargs: Any,
    ) -> None:
        chosen = list(dict.fromkeys((method, *methods)))
        _check_client_free(chosen)
        if api and not state_dir:
            raise ValueError(
                "api=True needs state_dir: the folder where requests are kept and the API's "
                "address and token are written, e.g. state_dir='/var/lib/fedforget'"
            )
        if requests is not None and state_dir:
            raise ValueError(
                "give requests or state_dir, not both: with state_dir the queue is the durable "
                "one in that folder (strategy.requests)"
            )
        self.config = _internal_config(chosen, settings, state_dir, api, api_host, api_port)
        self.initial_arrays = _as_arrays(initial_arrays)
        context = MethodContext(
            initial_arrays=self.initial_arrays,
            statistic_keys=frozenset(
                statistic_keys
                if statistic_keys is not None
                else (k for k in self.initial_arrays if k.endswith(STATISTIC_SUFFIXES))
            ),
            first_conv_key=_first_conv_key(self.initial_arrays),
            head_keys=_head_keys(self.initial_arrays),
            task="classification",
            local_epochs=local_epochs,
            seed=seed,
            random_arrays=_no_reinitialisation,
            settings={
                method_class(name).table: self.config.settings_of(method_class(name).table)
                for name in client_free_methods()
            },
        )
        instances = {name: method_class(name)(context) for name in client_free_methods()}
        if state_dir:
            from fedforget.federated.federation import request_queue

            queue = request_queue(self.config)
        else:
            queue = requests if requests is not None else InMemoryRequestQueue()
        directory = ClientDirectory(seed=seed)
        directory.forgotten.update(forgotten_clients(queue))
        intake = Intake(
            queue,
            instances,
            chosen,
            method,
            lambda name: self.config.settings_of(method_class(name).table),
            context.task,
        )
        super().__init__(
            methods=instances,
            intake=intake,
            kept=chosen,
            directory=directory,
            local_epochs=local_epochs,
            recovery_target=recovery_target,
            recovery_metric=recovery_metric,
            **fedavg_kwargs,
        )
        fixed = {
            "arrayrecord_key": (self.arrayrecord_key, ARRAYS_KEY),
            "configrecord_key": (self.configrecord_key, CONFIG_KEY),
            "weighted_by_key": (self.weighted_by_key, EXAMPLES_KEY),
        }
        for key, (given, expected) in fixed.items():
            if given != expected:
                raise ValueError(
                    f"UnlearningFedAvg uses {key}={expected!r} (Flower's default), got {given!r}: "
                    f"let the ClientApp read and write {expected!r}"
                )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop with unlearning (see :meth:`UnlearningStrategy.start`).

        With ``api=True`` the unlearning API answers while the rounds run.

        Raises
        ------
        ValueError
            If ``initial_arrays`` differ in names or shapes from the arrays
            the strategy was built with.

        """
        given = to_arrays(initial_arrays)
        shapes = {k: v.shape for k, v in given.items()}
        if shapes != {k: v.shape for k, v in self.initial_arrays.items()}:
            raise ValueError(
                "start() got initial_arrays whose names or shapes differ from those "
                "UnlearningFedAvg was built with: pass the same ArrayRecord to both"
            )
        with self._api(grid, num_rounds):
            return super().start(
                grid,
                initial_arrays,
                num_rounds,
                timeout,
                train_config,
                evaluate_config,
                evaluate_fn,
                first_round,
            )

    def _api(self, grid: Grid, num_rounds: int) -> AbstractContextManager[object]:
        """The live API of ``state_dir`` for this run (nothing without ``api``).

        The API accepts requests for the partition ids of the nodes connected
        now (0..N-1) and for every client seen since.
        """
        if not self.config.api_enabled:
            return nullcontext()
        from fedforget.api.server import live_api

        nodes = max(len(list(grid.get_node_ids())), 1)
        self.config = self.config.replace(num_server_rounds=num_rounds, num_partitions=nodes)
        return live_api(self.config, self)


def _check_client_free(chosen: Sequence[str]) -> None:
    """Refuse methods that need a ClientApp action (a ClientApp of your own has none)."""
    free = client_free_methods()
    for name in chosen:
        if name not in method_names():
            raise ValueError(
                f"unknown unlearning method {name!r}: with a ClientApp of your own use one of "
                f"{', '.join(free)}"
            )
        if name not in free:
            raise ValueError(
                f"{name} needs a client step ({method_class(name).needs.client_step}), which "
                f"only fedforget's ClientApp runs (the Flower action 'train.{name}'): with a "
                f"ClientApp of your own use one of {', '.join(free)}"
            )


def _internal_config(
    chosen: Sequence[str],
    settings: Mapping[str, ConfigValue] | None,
    state_dir: str | Path | None,
    api: bool,
    api_host: str,
    api_port: int,
) -> FederationConfig:
    """The run configuration the queue, the settings and the API read (validated)."""
    values: dict[str, Any] = {
        "method": chosen[0],
        "methods": ",".join(chosen[1:]),
        "unlearn-at-round": 0,
        "state-dir": str(Path(state_dir).resolve()) if state_dir else "",
        "api-enabled": api,
        "api-host": api_host,
        "api-port": api_port,
    }
    for key, value in (settings or {}).items():
        if "." not in key:
            raise ValueError(
                f"settings take method settings as '<table>.<key>' (e.g. 'puf.eta-special'), "
                f"got {key!r}"
            )
        values[key] = value
    return FederationConfig.from_run_config(values)  # ConfigError (a ValueError) names the key


def _as_arrays(initial: ArrayRecord | Mapping[str, np.ndarray]) -> Arrays:
    if isinstance(initial, ArrayRecord):
        return to_arrays(initial)
    return copy_arrays(initial)


def _first_conv_key(arrays: Arrays) -> str:
    """The first convolution's weight: the first float ``*.weight`` of 3 to 5 dimensions."""
    for key, value in arrays.items():
        if key.endswith("weight") and is_float_array(value) and 3 <= value.ndim <= 5:
            return key
    return ""


def _head_keys(arrays: Arrays) -> tuple[str, ...]:
    """The last linear layer's arrays: the last 2-D ``*.weight`` and its bias."""
    weights = [k for k, v in arrays.items() if k.endswith("weight") and v.ndim == 2]
    if not weights:
        return ()
    prefix = weights[-1].removesuffix("weight")
    return tuple(prefix + name for name in ("weight", "bias") if prefix + name in arrays)


def _no_reinitialisation(seed: int) -> Arrays:
    """Only methods with a client step re-initialise the model, and none is served here."""
    raise ValueError(
        f"UnlearningFedAvg holds model arrays, not a model to initialise anew (seed {seed})"
    )
