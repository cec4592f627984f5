"""``fedforget unlearn``: talk to the unlearning API of a running federation.

Examples (the federation runs with ``api-enabled=true state-dir=DIR``)::

    fedforget unlearn --state-dir DIR 7            # forget client 7 (202: queued)
    fedforget unlearn --state-dir DIR 7 3 --wait   # forget 7 and 3 together, wait
    fedforget unlearn --state-dir DIR 5 --method puf-regular --option eta-regular=10
    fedforget unlearn --state-dir DIR --request ID # queued / applied / rejected
    fedforget unlearn --state-dir DIR --status     # round, clients, store, pending
    fedforget unlearn --state-dir DIR --audit-log  # applied unlearning

``--method`` names a registered unlearning method (default: the run's
``method``); each ``--option KEY=VALUE`` overrides one of its settings (a key
of its config table, e.g. ``eta-regular`` of ``puf``). VALUE is read as an
integer, a number, ``true``/``false``, or else a string.

The URL comes from ``DIR/api.json`` (or ``--url``), the token from
``--token-file``, ``$FEDFORGET_API_TOKEN`` or ``DIR/api-token``. Answers are
printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fedforget.requests import OptionValue

DEFAULT_STATE_DIR = "state"


def add_unlearn_parser(commands: Any) -> None:
    """Add the ``unlearn`` subcommand to the ``fedforget`` parser's subparsers."""
    unlearn = commands.add_parser(
        "unlearn",
        help="ask a running federation to forget clients; read requests, status, audit log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unlearn.add_argument("clients", nargs="*", metavar="CLIENT", help="client ids to forget")
    action = unlearn.add_mutually_exclusive_group()
    action.add_argument("--request", metavar="ID", help="show one request")
    action.add_argument("--status", action="store_true", help="show the federation's status")
    action.add_argument("--audit-log", action="store_true", help="show applied unlearning")
    unlearn.add_argument(
        "--method", metavar="NAME", help="unlearning method (default: the run's method)"
    )
    unlearn.add_argument(
        "--option",
        dest="options",
        metavar="KEY=VALUE",
        type=parse_option,
        action="append",
        default=[],
        help="override a setting of the method, e.g. eta-regular=10 (repeatable)",
    )
    unlearn.add_argument(
        "--idempotency-key", help="resubmitting with the same key returns the same request"
    )
    unlearn.add_argument(
        "--wait", action="store_true", help="wait until the request is applied or rejected"
    )
    unlearn.add_argument(
        "--timeout", type=float, default=600.0, help="seconds --wait waits (default: 600)"
    )
    unlearn.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"the federation's state-dir (default: {DEFAULT_STATE_DIR})",
    )
    unlearn.add_argument("--url", help="the API's URL (default: from STATE_DIR/api.json)")
    unlearn.add_argument("--token-file", type=Path, help="file holding the API token")
    unlearn.add_argument("-v", "--verbose", action="store_true", help="log HTTP calls")


def command_unlearn(args: argparse.Namespace) -> int:
    """Run ``fedforget unlearn``; 0 on success, 1 if the API refused or rejected."""
    from fedforget.api.client import ApiError, UnlearningClient, read_token_file

    reading = bool(args.request or args.status or args.audit_log)
    if reading == bool(args.clients):
        print(
            "fedforget unlearn: error: name the clients to forget, or one of --request ID, "
            "--status, --audit-log",
            file=sys.stderr,
        )
        return 2
    if reading and (args.method or args.options):
        print(
            "fedforget unlearn: error: --method and --option go with the clients to forget",
            file=sys.stderr,
        )
        return 2
    try:
        options = options_of(args.options)
    except ValueError as error:
        print(f"fedforget unlearn: error: {error}", file=sys.stderr)
        return 2
    try:
        token = read_token_file(args.token_file) if args.token_file else None
        with UnlearningClient.from_state_dir(args.state_dir, token=token, url=args.url) as client:
            result: Any
            if args.status:
                result = client.status()
            elif args.audit_log:
                result = client.audit_log()
            elif args.request:
                result = client.request(args.request)
            else:
                result = client.submit(
                    args.clients,
                    args.method,
                    options,
                    idempotency_key=args.idempotency_key,
                )
                if args.wait:
                    result = client.wait(result["request_id"], timeout=args.timeout)
    except (ApiError, TimeoutError) as error:
        print(f"fedforget unlearn: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 1 if isinstance(result, dict) and result.get("status") == "rejected" else 0


def parse_option(text: str) -> tuple[str, OptionValue]:
    """Parse ``KEY=VALUE``: VALUE as an int, a finite float, true/false, or a string."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE: write e.g. --option eta-regular=10"
        )
    value: OptionValue = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                number = float(raw)
            except ValueError:
                pass
            else:
                if math.isfinite(number):  # "nan", "inf" stay strings: no setting takes them
                    value = number
    return key, value


def options_of(pairs: list[tuple[str, OptionValue]]) -> dict[str, OptionValue]:
    """The ``--option`` pairs as a dict; a key given twice is an error."""
    options: dict[str, OptionValue] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"--option {key} is given twice: give each key once")
        options[key] = value
    return options
