"""The ``fedforget`` command line.

``fedforget run`` runs the main job (original vs the run's unlearning method vs
the retrained reference) and ``fedforget compare`` every registered method on
the same original model, on Flower's Ray simulation backend. Configuration
uses Flower's run-config syntax: ``--run-config "unlearn-clients='0,3'
num-server-rounds=50"`` or a TOML file of the same keys
(``--run-config experiments/digits.toml``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from fedforget.api.auth import ApiStartError
from fedforget.api.cli import add_unlearn_parser, command_unlearn
from fedforget.api.state_dir import InsecureFileError
from fedforget.config import FORGET_SCENARIOS, ConfigError, FederationConfig
from fedforget.deploy_cli import add_deploy_parser, command_deploy
from fedforget.requests import RequestNotApplied

DEFAULT_OUT = "runs/latest"


def parse_run_config(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--run-config`` values exactly as ``flwr run`` does."""
    import click
    from flwr.common.config import parse_config_args

    try:
        return parse_config_args(items)
    except (click.ClickException, ValueError) as error:
        message = error.format_message() if isinstance(error, click.ClickException) else str(error)
        raise ConfigError(f"--run-config: {message}") from error


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedforget`` command."""
    parser = argparse.ArgumentParser(
        prog="fedforget", description="Federated unlearning with PUF on Flower."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="train, forget with the run's method, recover, and compare with the retrained "
        "reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare = commands.add_parser(
        "compare",
        help="apply every unlearning method to the same original model and compare them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "--methods",
        help="comma-separated federated method names (default: every registered one)",
    )
    compare.add_argument(
        "--centralised",
        help="comma-separated centralised method names (default: every registered one; "
        "'none' for none)",
    )
    compare.add_argument(
        "--scenario",
        choices=FORGET_SCENARIOS,
        help="what to forget: the unlearn-clients' data (client, the default), a random "
        "--forget-fraction of training examples, the class --forget-class, or the "
        "unlearn-clients' data carrying a backdoor trigger (backdoor; backdoor-* keys)",
    )
    compare.add_argument("--forget-class", type=int, help="the class to forget (--scenario class)")
    compare.add_argument(
        "--forget-fraction",
        type=float,
        help="the share of training examples to forget (--scenario random, default 0.1)",
    )
    for sub in (run, compare):
        _add_run_options(sub)
    experiment = commands.add_parser(
        "experiment",
        help="run an experiment file's cells (method x target set x seed); resumable",
    )
    experiment.add_argument(
        "file", type=Path, help="experiment file, e.g. experiments/digits-each.toml"
    )
    experiment.add_argument("--out", type=Path, required=True, help="results folder")
    experiment.add_argument("--num-cpus", type=int, help="CPUs for Ray (default: all)")
    experiment.add_argument(
        "--no-report", action="store_true", help="do not write the report after the cells"
    )
    tune = commands.add_parser(
        "tune",
        help="choose each method's settings on an experiment's validation cells (its [tune] "
        "table; Optuna, resumable)",
    )
    tune.add_argument("file", type=Path, help="experiment file with a [tune] table")
    tune.add_argument(
        "--out", type=Path, required=True, help="tuning folder (optuna.db, cells, tuned.toml)"
    )
    tune.add_argument(
        "--num-cpus",
        type=int,
        help="CPUs for Ray, and worker processes for the centralised studies (default: all)",
    )
    report = commands.add_parser(
        "report", help="write DIR/report.md, report.html and figures from an experiment's results"
    )
    report.add_argument("dir", type=Path, help="an experiment's --out folder")
    from fedforget.analyses import ANALYSES, DEFAULT_OUT_ROOT

    analyse = commands.add_parser(
        "analyse",
        help="run a stand-alone analysis (ascent-fails, dual-influence): a figure and a JSON",
    )
    analyse.add_argument("name", choices=tuple(ANALYSES), help="which analysis")
    analyse.add_argument(
        "--out", type=Path, help=f"output folder (default: {DEFAULT_OUT_ROOT}/NAME)"
    )
    analyse.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_unlearn_parser(commands)
    add_deploy_parser(commands)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``compare``."""
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--run-config",
        action="append",
        metavar="CONFIG",
        help="key=value pairs (\"num-server-rounds=50 unlearn-clients='0,3'\") or a .toml file",
    )
    parser.add_argument("--dataset", help="shortcut for --run-config dataset=NAME")
    parser.add_argument(
        "--data-dir",
        help="shortcut for --run-config data-dir=PATH (also next to a .toml file, which "
        "flwr's syntax does not combine with key=value pairs)",
    )
    parser.add_argument(
        "--recovery-stop",
        choices=("retrain-acc", "budget"),
        default="retrain-acc",
        help="stop recovery once test accuracy reaches the retrained model's "
        "(default), or run the whole num-server-rounds budget",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        help="CPUs of the private Ray instance (default: all; not with --ray-address)",
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        help="GPU share of each virtual client, e.g. 0.25 = four clients per GPU "
        "(default with a visible GPU: 1/k for the k clients its memory holds, at most 16; "
        "else 0)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="attach to the Ray cluster whose head is at ADDRESS (host:port, as printed by "
        "`ray start --head`) instead of starting a private Ray instance; default: $RAY_ADDRESS",
    )
    parser.add_argument(
        "--references",
        type=int,
        default=1,
        help="retrained references on the same data, each with its own training seed "
        "(default: 1); K >= 2 marks the gaps inside the retraining noise floor",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's logs")


def _config(args: argparse.Namespace) -> FederationConfig:
    overrides = parse_run_config(args.run_config)
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.data_dir:
        overrides["data-dir"] = args.data_dir
    for option in ("scenario", "forget_class", "forget_fraction"):
        value = getattr(args, option, None)
        if value is not None:
            key = "forget-scenario" if option == "scenario" else option.replace("_", "-")
            overrides[key] = value
    return FederationConfig.from_run_config(overrides)


def command_run(args: argparse.Namespace) -> int:
    """``fedforget run`` and ``fedforget compare``."""
    from fedforget.experiment.commands import (
        resolve_centralised,
        resolve_methods,
        run_comparison,
        run_main_job,
    )
    from fedforget.experiment.tables import format_table

    config = _config(args)
    if args.ray_address:
        from fedforget.simulation import select_ray_cluster

        select_ray_cluster(args.ray_address)
    out_dir = Path(args.out)
    centralised: list[str] = []
    if args.command == "compare":
        methods = resolve_methods(args.methods.split(",") if args.methods else None)
        centralised = resolve_centralised(
            None
            if args.centralised is None
            else [n.strip() for n in args.centralised.split(",") if n.strip() not in ("", "none")]
        )
        what = f"compare {', '.join([*methods, *centralised])}"
    else:
        methods = [config.method]
        what = config.method
    forgets = (
        f"client(s) {', '.join(config.targets)}"
        if config.forget_scenario == "client"
        else f"backdoored client(s) {', '.join(config.targets)}"
        if config.forget_scenario == "backdoor"
        else f"class {config.forget_class}"
        if config.forget_scenario == "class"
        else f"a random {config.forget_fraction:g} of the training examples"
    )
    print(
        f"fedforget: {config.dataset}, {config.num_partitions} clients, forget {forgets} after "
        f"round {config.unlearn_at_round} ({what}); output in {out_dir}",
        flush=True,
    )
    options = (args.recovery_stop, args.num_cpus, args.num_gpus)
    results = (
        run_comparison(
            config, out_dir, methods, *options, centralised=centralised, references=args.references
        )
        if args.command == "compare"
        else run_main_job(config, out_dir, *options, references=args.references)
    )
    print()
    print(format_table(results))
    print(f"\nresults: {out_dir / 'results.json'} ({results['timing']['total_s']:.0f} s)")
    return 0


def command_experiment(args: argparse.Namespace) -> int:
    """``fedforget experiment FILE --out DIR``: the missing cells, the results, the report."""
    from fedforget.experiment.report import write_report
    from fedforget.experiment.runner import run_experiment

    computed = run_experiment(
        args.file, args.out, args.num_cpus, after=None if args.no_report else write_report
    )
    print(f"experiment: {len(computed)} cell(s) computed; results in {args.out}")
    return 0


def tuning_lines(entries: list[dict[str, Any]]) -> list[str]:
    """One terminal line per tuned method: its choice and scores, or why it has none."""
    lines = []
    for entry in entries:
        if math.isnan(entry["score"]):  # no trial finished: the first reason says why
            reasons = entry.get("failed") or ["no trial ran"]
            lines.append(f"tune: {entry['kind']} {entry['method']}: no result ({reasons[0]})")
            continue
        verdict = "" if entry["feasible"] else " (no trial kept test accuracy)"
        lines.append(
            f"tune: {entry['kind']} {entry['method']}: {entry['settings']} scores "
            f"{entry['score']:.4f} (paper defaults {entry['default-score']:.4f}){verdict}"
        )
    return lines


def command_tune(args: argparse.Namespace) -> int:
    """``fedforget tune FILE --out DIR``: every method's trials, then DIR/tuned.toml."""
    from fedforget.experiment.tune import TUNED_FILE, run_tuning

    for line in tuning_lines(run_tuning(args.file, args.out, args.num_cpus)):
        print(line)
    print(f"tune: chosen settings in {args.out / TUNED_FILE}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    """``fedforget report DIR``."""
    from fedforget.experiment.report import write_report

    for path in write_report(args.dir):
        print(path)
    return 0


def command_analyse(args: argparse.Namespace) -> int:
    """``fedforget analyse NAME [--out DIR] [--seed N]``: write NAME.png and NAME.json."""
    from fedforget.analyses import run_analysis

    png, json_path, summary = run_analysis(args.name, args.out, args.seed)
    print(summary)
    print(f"{args.name}: {png} and {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedforget`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in ("run", "compare"):
            return command_run(args)
        if args.command == "experiment":
            return command_experiment(args)
        if args.command == "tune":
            return command_tune(args)
        if args.command == "report":
            return command_report(args)
        if args.command == "analyse":
            return command_analyse(args)
        if args.command == "unlearn":
            return command_unlearn(args)
        if args.command == "deploy":
            return command_deploy(args)
    except (ConfigError, FileNotFoundError, ApiStartError, InsecureFileError) as error:
        print(f"fedforget: error: {error}", file=sys.stderr)
        return 2
    except RequestNotApplied as error:  # the run went through; its request was refused
        print(f"fedforget: error: {error}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
