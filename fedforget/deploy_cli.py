"""``fedforget deploy``: a local multi-process deployment on loopback.

fedforget deploy up --run-dir runs/deploy --supernodes 3 [--tls]
fedforget deploy app --run-dir runs/deploy --run-config "num-partitions=3 ..."
fedforget deploy down --run-dir runs/deploy
fedforget deploy certs --out certs
"""

from __future__ import annotations

import argparse
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


def command_deploy(args: argparse.Namespace) -> int:
    """Run one ``fedforget deploy`` action."""
    from fedforget.certs import generate_certificates
    from fedforget.deploy import LocalDeployment

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
