"""``fedforget deploy``: a local multi-process deployment on loopback.

fedforget deploy up --run-dir runs/deploy --supernodes 3 [--tls]
fedforget deploy app --run-dir runs/deploy --run-config "num-partitions=3 ..."
fedforget deploy down --run-dir runs/deploy
fedforget deploy certs --out certs
fedforget deploy connect --flwr-home .flwr-compose --superlink 127.0.0.1:9093 \
    [--root-certificates certs/ca.crt]
fedforget deploy token --state-dir /state
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_RUN_DIR = "runs/deploy"


def add_deploy_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedforget deploy`` and its sub-commands."""
    deploy = commands.add_parser(
        "deploy",
        help="run SuperLink + SuperNodes as local processes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = deploy.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start a SuperLink and N SuperNodes on 127.0.0.1")
    up.add_argument("--run-dir", default=DEFAULT_RUN_DIR, type=Path)
    up.add_argument("--supernodes", type=int, default=3, help="one per partition (default: 3)")
    up.add_argument(
        "--tls", action="store_true", help="TLS with certificates made in RUN_DIR/certs"
    )
    app = actions.add_parser("app", help="flwr run the app against the running deployment")
    app.add_argument("--run-dir", default=DEFAULT_RUN_DIR, type=Path)
    app.add_argument("--app", default=".", type=Path, help="the Flower app folder (default: .)")
    app.add_argument("--run-config", default="", help="flwr run --run-config value")
    down = actions.add_parser("down", help="stop exactly the processes `up` started")
    down.add_argument("--run-dir", default=DEFAULT_RUN_DIR, type=Path)
    certs = actions.add_parser("certs", help="write a demo CA and SuperLink certificate")
    certs.add_argument("--out", default="certs", type=Path)
    connect = actions.add_parser(
        "connect",
        help="write FLWR_HOME/config.toml for a SuperLink (e.g. docker-compose's)",
        description="Write a FLWR_HOME whose default connection is the SuperLink at "
        "--superlink (`flwr run . NAME` then uses it): insecure, or TLS verified "
        "with --root-certificates.",
    )
    connect.add_argument("--flwr-home", required=True, type=Path)
    connect.add_argument("--superlink", required=True, metavar="HOST:PORT")
    connect.add_argument("--root-certificates", type=Path, metavar="CA_CERT")
    connect.add_argument("--name", default="compose", help="connection name (default: compose)")
    token = actions.add_parser(
        "token",
        help="print the API token in STATE_DIR/api-token, creating one if none",
        description="Print the unlearning API's token from STATE_DIR/api-token; with no "
        "such file, create one first (a random 43-character token, mode 0600). The "
        "file is read only if it is a regular file of this user that no one else can "
        "read. Use it as the ServerApp's api-token-file.",
    )
    token.add_argument("--state-dir", required=True, type=Path)


def command_deploy(args: argparse.Namespace) -> int:
    """Run one ``fedforget deploy`` action."""
    from fedforget.certs import generate_certificates
    from fedforget.deploy import LocalDeployment

    if args.action == "token":
        return print_token(args.state_dir)
    if args.action == "connect":
        return write_connection(args)
    if args.action == "certs":
        files = generate_certificates(args.out)
        print(f"wrote {files.ca_cert}, {files.server_cert}, {files.server_key}")
        return 0
    if args.action == "up":
        if args.supernodes < 1:
            raise ValueError("--supernodes must be >= 1")
        tls = generate_certificates(args.run_dir.resolve() / "certs") if args.tls else None
        deployment = LocalDeployment.create(args.run_dir, args.supernodes, tls)
        deployment.up()
        print(
            f"SuperLink on {deployment.layout.superlink_address}, {args.supernodes} SuperNodes; "
            f"logs in {deployment.run_dir / 'logs'}; stop with "
            f"`fedforget deploy down --run-dir {args.run_dir}`"
        )
        return 0
    deployment = LocalDeployment.load(args.run_dir)
    if args.action == "down":
        deployment.down()
        print(f"stopped the deployment in {deployment.run_dir}")
        return 0
    # the data split and partitions are built once here, not by round 1's ClientApps
    deployment.prepare_data(args.run_config)
    done = deployment.run_app(args.app.resolve(), args.run_config)
    print(done.stdout, end="")
    print(done.stderr, end="")
    return done.returncode


def print_token(state_dir: Path) -> int:
    """Print the API token of ``state_dir`` (creating it if missing); 2 if it cannot be used."""
    from fedforget.api.auth import ApiStartError, state_dir_token

    try:
        print(state_dir_token(state_dir).value)
    except ApiStartError as error:
        print(f"fedforget deploy token: error: {error}", file=sys.stderr)
        return 2
    return 0


def write_connection(args: argparse.Namespace) -> int:
    """Write ``FLWR_HOME/config.toml`` for the SuperLink at ``args.superlink``."""
    from fedforget.deploy import DeploymentLayout, TlsFiles

    host, separator, port = args.superlink.rpartition(":")
    if not separator or not host or not port.isdigit():
        print(
            f"fedforget deploy connect: error: --superlink {args.superlink!r} is not HOST:PORT "
            "(e.g. 127.0.0.1:9093)",
            file=sys.stderr,
        )
        return 2
    tls = None
    if args.root_certificates is not None:
        if not args.root_certificates.is_file():
            raise FileNotFoundError(
                f"--root-certificates {args.root_certificates} does not exist: copy the CA "
                "certificate the SuperLink's certificate is signed with there"
            )
        # the CLI verifies the SuperLink with the CA certificate alone
        tls = TlsFiles(str(args.root_certificates.resolve()), "", "")
    layout = DeploymentLayout(
        num_supernodes=0, superlink_host=host, superlink_port=int(port), tls=tls
    )
    args.flwr_home.mkdir(parents=True, exist_ok=True)
    path = args.flwr_home / "config.toml"
    path.write_text(layout.connection_toml(args.name))
    print(f"wrote {path}: flwr run . {args.name} (with FLWR_HOME={args.flwr_home.resolve()})")
    return 0
