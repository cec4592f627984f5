"""Requests into steps: generic refusals first, then the method's own.

At a round boundary every due request is checked; a refused one is marked
``rejected`` with the reason and changes nothing. The accepted requests that
share the first one's method and settings become one concurrent step; the
others wait for a later boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

from fedforget.federated.clients import ClientDirectory
from fedforget.methods import method_class, method_names
from fedforget.methods.base import ConfigValue, FederatedMethod, UnlearningStep, request_settings
from fedforget.protocol import natural_order
from fedforget.requests import RequestQueue, UnlearningRequest

logger = logging.getLogger(__name__)


class Intake:
    """Turns due requests into at most one :class:`UnlearningStep` per boundary.

    Parameters
    ----------
    queue : RequestQueue
        Where the requests wait.
    methods : Mapping[str, FederatedMethod]
        The method instances of this run, by registry name.
    kept : Collection[str]
        Methods whose history this run keeps (they observed every round).
    default_method : str
        The method of requests that name none.
    run_settings : Callable[[str], Mapping[str, ConfigValue]]
        The run config's settings of a method (its table, with defaults).
    task : str
        The task type ("classification" or "segmentation").

    """

    def __init__(
        self,
        queue: RequestQueue,
        methods: Mapping[str, FederatedMethod],
        kept: Collection[str],
        default_method: str,
        run_settings: Callable[[str], Mapping[str, ConfigValue]],
        task: str,
    ) -> None:
        self.queue = queue
        self.methods = methods
        self.kept = frozenset(kept)
        self.default_method = default_method
        self.run_settings = run_settings
        self.task = task

    def take(
        self, server_round: int, directory: ClientDirectory, online: Collection[str]
    ) -> UnlearningStep | None:
        """The step of this boundary (None if no request is due and valid)."""
        chosen: list[UnlearningRequest] = []
        key: tuple[str, tuple[tuple[str, ConfigValue], ...]] | None = None
        targets: list[str] = []
        for request in self.queue.due(server_round):
            name = request.method or self.default_method
            settings, reason = self._settings(name, request)
            if not reason:
                reason = self._refusal(name, settings, request, directory, online, targets)
            if reason:
                logger.warning("Unlearning request %s rejected: %s", request.request_id, reason)
                self.queue.mark_rejected(request.request_id, reason)
                continue
            request_key = (name, tuple(sorted(settings.items())))
            if key is None:
                key = request_key
            if request_key != key:
                continue  # waits for a later boundary: one method and setting per step
            if chosen and not self.methods[name].needs.concurrent:
                continue  # this method forgets one client per step: the next one waits
            chosen.append(request)
            targets.extend(c for c in request.client_ids if c not in targets)
        if not chosen or key is None:
            return None
        return UnlearningStep(
            requests=tuple(chosen),
            method=key[0],
            targets=tuple(targets),
            settings=dict(key[1]),
            first_round=server_round,
        )

    def _settings(
        self, name: str, request: UnlearningRequest
    ) -> tuple[dict[str, ConfigValue], str]:
        """The request's settings (run settings, then its options), or the reason they fail."""
        if name not in self.methods:
            if name in method_names():  # registered, but this strategy was built without it
                client_step = method_class(name).needs.client_step
                return {}, (
                    f"{name} is not served by this strategy, which serves "
                    f"{', '.join(self.methods)}"
                    + (f": {name} needs a client step ({client_step})" if client_step else "")
                )
            return {}, (
                f"unknown unlearning method {name!r}: registered methods are "
                f"{', '.join(method_names())}"
            )
        try:
            settings = request_settings(
                type(self.methods[name]), self.run_settings(name), request.options
            )
        except ValueError as error:
            return {}, str(error)
        return settings, ""

    def _refusal(
        self,
        name: str,
        settings: Mapping[str, ConfigValue],
        request: UnlearningRequest,
        directory: ClientDirectory,
        online: Collection[str],
        already_chosen: list[str],
    ) -> str:
        """Why a request cannot be applied now ('' if it can)."""
        method = self.methods[name]
        needs = method.needs
        if self.task not in needs.tasks:
            return f"{name} applies to {' and '.join(needs.tasks)} tasks, not {self.task}"
        if needs.history and name not in self.kept:
            kept = ", ".join(sorted(self.kept)) or "no method"
            return (
                f"{name} needs {needs.history} kept from round 1, and this run keeps it for "
                f"{kept}: start the run with method='{name}' or add it to methods"
            )
        if not needs.concurrent and len(request.client_ids) > 1:
            return f"{name} forgets one client per step: submit one request per client"
        known = directory.known()
        must_be_online = method.targets_must_be_online(settings)
        for client_id in request.client_ids:
            if client_id in directory.forgotten:
                return f"client {client_id} has already been forgotten"
            if client_id in directory.excluded:
                return f"client {client_id} is excluded from this federation: it never trained"
            if client_id not in known:
                return (
                    f"unknown client {client_id}: no node has reported this id; known "
                    f"clients are {', '.join(sorted(known, key=natural_order)) or 'none yet'}"
                )
            if must_be_online and client_id not in online:
                return (
                    f"client {client_id} is offline, and {name} needs the targets online "
                    f"({needs.client_step or 'they recompute their update'}): retry when it is "
                    f"connected, or use a method that does not (e.g. puf-special)"
                )
        blocked = directory.forgotten | directory.excluded | set(already_chosen)
        if not known - blocked - set(request.client_ids):
            return "forgetting these clients would leave no client to recover with"
        return method.refusal(request.client_ids, settings)
