"""The paper's workloads on one GPU, against the device's own limit, in one run.

Five measurements on the same device, one after the other:

* ``limit`` (a): one ResNet-18 (GroupNorm) trained at large batch
  (``--limit-batch``, default 512) on CIFAR-10-sized images resident on the
  device, with the recipe's augmentation on the device and bf16 autocast:
  ``fedforget.training.train`` at its best, in images per second.
* ``simulation`` (b): the paper's CIFAR-10 federation
  (``experiments/cifar10-resnet18-dirichlet0.3.toml``: the paper's split of 10
  clients, batch 32, SGD, augmentation) through the real Ray simulation
  (``fedforget.simulation.simulate``, what ``fedforget run`` runs), its clients
  sharing the GPU as Ray fractional GPUs (the share from
  :mod:`fedforget.gpu_share`), ``--rounds`` rounds without unlearning. Round
  seconds (``configure_train`` to ``aggregate_train``, as ``history.json``
  records them) and the period between rounds (plus the server's test-set
  evaluation), images per second, and (b) as a share of (a).
* ``sequential`` (c): the same clients one after the other in this process
  through the ClientApp's ``train`` handler (the path measured before the
  simulation shared the GPU), FedAvg between rounds.
* ``vit``: the CIFAR-100 ViT federation (``cifar100-vit-dirichlet0.1``) through
  the simulation, on random images of CIFAR-100's size.
* ``unet``: the ProstateMRI UNet federation (``prostate-unet``: 6 sites, UNet
  32..512, 384x384, batch 16, Adam) through the simulation, on synthetic
  volumes in the real layout (``prostate-synthetic``, 128x128 volumes read at
  384x384).

Target (issue 22): a CIFAR-10 ResNet-18 round of the 10 clients in at most
3 s on an H100-class GPU, and at least half of (a)'s images per second. The
record also projects the paper's whole CIFAR-10 evaluation (the original
federation, 10 retrained references and PUF, 200 rounds each) in GPU-hours
from the measured period.

Without real data the images are random uint8 arrays of CIFAR's size written in
torchvision's pickle format and read by the real loader (md5 check off: they
are not the official files; the clients read the prepared data cache the
driver builds first). Training time does not depend on the pixel values.
Each part runs even if an earlier one failed (its error is recorded); the
exit status is 1 if any failed.

    python benchmarks/gpu_client_training.py [--rounds 4] [--out DIR]     # on a GPU
    python benchmarks/gpu_client_training.py --smoke                     # CPU, tiny: a check
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from record import report

from fedforget.config import FederationConfig
from fedforget.data.cifar import write_cifar_pickles
from fedforget.task import new_model

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
CIFAR10 = EXPERIMENTS / "cifar10-resnet18-dirichlet0.3.toml"
VIT = EXPERIMENTS / "cifar100-vit-dirichlet0.1.toml"
UNET = EXPERIMENTS / "prostate-unet.toml"
TARGET_ROUND_S = 3.0
TARGET_SHARE_OF_LIMIT = 0.5
PAPER_FEDERATIONS = 12  # the original, 10 retrained references (one per client), PUF
PAPER_ROUNDS = 200
CIFAR_SIZES = {"full": (50_000, 10_000), "smoke": (240, 60)}
PROSTATE_CASES_PER_SITE = {"full": 12, "smoke": 1}


def write_random_cifar(root: Path, variant: str, train: int, test: int, seed: int = 0) -> None:
    """Random uint8 images and labels of CIFAR's shape, in torchvision's on-disk format."""
    rng = np.random.default_rng(seed)
    classes = 10 if variant == "cifar10" else 100
    write_cifar_pickles(
        root,
        variant,
        rng.integers(0, 256, size=(train, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, classes, size=train).tolist(),
        rng.integers(0, 256, size=(test, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, classes, size=test).tolist(),
    )


def skip_cifar_md5() -> None:
    """Let torchvision read CIFAR pickles that are not the official files (this process)."""
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.check_integrity = lambda *args, **kwargs: True


def workload(path: Path, smoke: bool, **overrides: Any) -> FederationConfig:
    """An experiment's configuration without unlearning; the smoke size draws 3 IID clients."""
    values = {**tomllib.loads(path.read_text()), **overrides}
    values.update({"unlearn-at-round": 0, "progress": False, "out-dir": ""})
    if smoke:
        values.update({"num-partitions": 3, "min-available-clients": 3})
        if values.get("partitioner") == "file":
            values.update({"partitioner": "iid", "partition-file": ""})
    return FederationConfig.from_run_config(values)


def examples_per_round(config: FederationConfig) -> int:
    """Training examples of one round of every client (one local epoch each)."""
    from fedforget.task import partition_index

    return config.local_epochs * sum(
        len(partition_index(config, pid)) for pid in range(config.num_partitions)
    )


# ----------------------------------------------------------------- (a) the limit
def measure_limit(config: FederationConfig, batch: int, smoke: bool) -> dict[str, Any]:
    """Images per second of one ResNet-18 at ``batch`` on the resident training set."""
    from fedforget.data import load_federated_data
    from fedforget.data.augment import get_augmentation
    from fedforget.training import resident, resolve_device, train

    data = load_federated_data(config).data
    device = resolve_device(config.device)
    x, y = resident(data.train_x, device), resident(data.train_y, device)
    model = new_model(config)
    settings = {
        "batch_size": batch,
        "lr": config.lr,
        "optimizer": config.optimizer,
        "weight_decay": config.weight_decay,
        "augmentation": get_augmentation(data.augmentation),
        "device": device,
        "mixed_precision": config.mixed_precision,
    }
    warm = min(len(x), 20 * batch)
    train(model, x[:warm], y[:warm], epochs=1, seed=0, **settings)  # cuDNN autotuning, caches
    synchronize(device)
    start = time.perf_counter()
    train(model, x, y, epochs=1, seed=1, **settings)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "model": f"{config.model} (GroupNorm), {config.optimizer}, augmentation on the device",
        "batch": batch,
        "images": len(x),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(x) / seconds, 1),
        "mixed_precision_bf16": config.mixed_precision and bf16(device),
        "channels_last": device.type == "cuda",
        "smoke": smoke,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# ---------------------------------------------- (b), ViT, UNet: the Ray simulation
def measure_simulation(config: FederationConfig, label: str) -> dict[str, Any]:
    """Round seconds of ``config`` through the Ray simulation (round 1 reported apart)."""
    from fedforget.data import load_federated_data
    from fedforget.gpu_share import client_gpu_share
    from fedforget.simulation import simulate

    load_federated_data(config)  # the driver prepares the data cache the clients read
    share = client_gpu_share(config)
    started = time.perf_counter()
    record = simulate(config)
    wall = time.perf_counter() - started
    rounds = [r.round_s for r in record.rounds]
    elapsed = [h["elapsed_s"] for h in record.history if h["round"] >= 1]
    periods = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    steady = rounds[1:] or rounds
    steady_periods = periods[1:] or periods
    images = examples_per_round(config)
    median = statistics.median(steady)
    return {
        "workload": label,
        "clients": config.num_partitions,
        "gpu_share_per_client": share,
        "images_per_round": images,
        "round_s": [round(s, 3) for s in rounds],
        "period_s": [round(s, 3) for s in periods],
        "round_s_median_after_round_1": round(median, 3),
        "period_s_median_after_round_1": round(statistics.median(steady_periods), 3),
        "images_per_s": round(images / median, 1),
        "wall_s_with_start_up": round(wall, 1),
    }


# ------------------------------------------------------- (c) today's sequential path
def client_trainer(config: FederationConfig) -> tuple[str, Callable[..., tuple]]:
    """The ClientApp's ``train`` handler called with a real Message, as a ClientApp process."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from clients.client_app import train as client_app_train

    # What flwr-clientapp sets before it builds messages in a real ClientApp process
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1

    def train_message(state: dict[str, torch.Tensor], pid: int, rnd: int) -> tuple:
        TaskIdentity.node_id = pid + 1
        content = RecordDict(
            {
                "arrays": ArrayRecord(state),
                "config": ConfigRecord({**config.to_run_config(), "server-round": rnd}),
            }
        )
        message = Message(content=content, dst_node_id=pid + 1, message_type=MessageType.TRAIN)
        context = Context(
            run_id=1,
            node_id=pid + 1,
            node_config={"partition-id": pid, "num-partitions": config.num_partitions},
            state=RecordDict(),
            run_config={},
        )
        reply = client_app_train(message, context)
        count = int(reply.content["metrics"]["num-examples"])
        return reply.content["arrays"].to_torch_state_dict(), count

    return "clients.client_app.train (Flower Message API)", train_message


def fedavg(states: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Example-weighted average of client state dicts."""
    total = sum(count for _, count in states)
    return {
        name: sum(state[name].double() * (count / total) for state, count in states).to(
            states[0][0][name].dtype
        )
        for name in states[0][0]
    }


def measure_sequential(config: FederationConfig, rounds: int) -> dict[str, Any]:
    """Every client one after the other through the ClientApp's handler, FedAvg between rounds."""
    from fedforget.training import resolve_device

    path, trainer = client_trainer(config)
    device = resolve_device(config.device)
    state = new_model(config).state_dict()
    records = []
    for rnd in range(1, rounds + 1):
        client_s, replies = [], []
        start = time.perf_counter()
        for pid in range(config.num_partitions):
            client_start = time.perf_counter()
            new_state, count = trainer(state, pid, rnd)
            synchronize(device)
            client_s.append(time.perf_counter() - client_start)
            replies.append((new_state, count))
        state = fedavg(replies)
        round_s = time.perf_counter() - start
        steps = sum(-(-count // config.batch_size) for _, count in replies)
        records.append(
            {
                "round": rnd,
                "round_s": round(round_s, 3),
                "client_s": [round(s, 3) for s in client_s],
                "examples": sum(count for _, count in replies),
                "steps": steps,
                "ms_per_step": round(1000 * sum(client_s) / steps, 3),
            }
        )
    steady = [r["round_s"] for r in records[1:]] or [records[0]["round_s"]]
    median = statistics.median(steady)
    return {
        "training_path": path,
        "rounds": records,
        "round_s_median_after_round_1": round(median, 3),
        "images_per_s": round(records[-1]["examples"] / median, 1),
    }


# ------------------------------------------------------------------------- main
def projection(period_s: float, round_s: float) -> dict[str, Any]:
    """GPU-hours of the paper's CIFAR-10 evaluation at a measured round."""
    rounds = PAPER_FEDERATIONS * PAPER_ROUNDS
    return {
        "federations": "original + 10 retrained references + PUF",
        "rounds": rounds,
        "gpu_hours_at_period": round(rounds * period_s / 3600, 2),
        "gpu_hours_at_round_s": round(rounds * round_s / 3600, 2),
        "formula": f"{PAPER_FEDERATIONS} x {PAPER_ROUNDS} rounds x seconds per round / 3600",
    }


def run_part(results: dict[str, Any], name: str, measure: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; record its result or its error, print it either way."""
    print(f"--- {name}", flush=True)
    started = time.perf_counter()
    try:
        results[name] = measure()
    except Exception as error:  # a failed part must not lose the others' numbers
        traceback.print_exc()
        results[name] = {"error": f"{type(error).__name__}: {error}"}
    finally:
        from fedforget import training

        training._resident.clear()  # the next part starts without this part's device copies
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"--- {name}: {time.perf_counter() - started:.1f} s {results[name]}", flush=True)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """(b) as a share of (a), the target, and the projection."""
    limit, simulation = results.get("limit", {}), results.get("simulation", {})
    if "images_per_s" not in limit or "images_per_s" not in simulation:
        return {"target": "not evaluated: (a) or (b) failed"}
    share = simulation["images_per_s"] / limit["images_per_s"]
    round_s = simulation["round_s_median_after_round_1"]
    out: dict[str, Any] = {
        "simulation_share_of_limit": round(share, 3),
        "target": {
            "round_s_at_most": TARGET_ROUND_S,
            "share_of_limit_at_least": TARGET_SHARE_OF_LIMIT,
            "round_s": round_s,
            "share_of_limit": round(share, 3),
            "met": round_s <= TARGET_ROUND_S and share >= TARGET_SHARE_OF_LIMIT,
        },
        "paper_cifar10_evaluation": projection(
            simulation["period_s_median_after_round_1"], round_s
        ),
    }
    sequential = results.get("sequential", {})
    if "round_s_median_after_round_1" in sequential:
        seconds = sequential["round_s_median_after_round_1"]
        out["paper_cifar10_evaluation"]["gpu_hours_sequential"] = round(
            PAPER_FEDERATIONS * PAPER_ROUNDS * seconds / 3600, 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="simulated rounds (round 1 apart)")
    parser.add_argument("--sequential-rounds", type=int, default=2)
    parser.add_argument("--limit-batch", type=int, default=512)
    parser.add_argument("--data-dir", default="", help="a folder with cifar-10-batches-py")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny data on the CPU: checks every part end to end"
    )
    parser.add_argument(
        "--parts",
        default="limit,sequential,simulation,vit,unet",
        help="comma-separated subset of the parts to run",
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 1 (start-up) is reported apart")
    size = "smoke" if args.smoke else "full"
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run on a GPU machine, or check the script with --smoke")
    parts = set(args.parts.split(","))

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as folder:
        work = Path(folder)
        os.environ["FEDFORGET_CACHE"] = str(work / "cache")  # inherited by the Ray workers
        skip_cifar_md5()
        train_n, test_n = CIFAR_SIZES[size]
        cifar10_dir = args.data_dir
        if not cifar10_dir:
            cifar10_dir = str(work / "cifar10")
            write_random_cifar(Path(cifar10_dir), "cifar10", train_n, test_n)
        cifar100_dir = work / "cifar100"
        write_random_cifar(cifar100_dir, "cifar100", train_n, test_n, seed=1)
        common = {"device": device}
        cifar10 = workload(CIFAR10, args.smoke, **common, **{"data-dir": cifar10_dir})
        results: dict[str, Any] = {}
        if "limit" in parts:
            limit_batch = min(args.limit_batch, 64) if args.smoke else args.limit_batch
            run_part(results, "limit", lambda: measure_limit(cifar10, limit_batch, args.smoke))
        if "sequential" in parts:
            run_part(
                results, "sequential", lambda: measure_sequential(cifar10, args.sequential_rounds)
            )
        rounds = {"num-server-rounds": args.rounds}
        if "simulation" in parts:
            config = cifar10.replace(num_server_rounds=args.rounds)
            run_part(results, "simulation", lambda: measure_simulation(config, CIFAR10.stem))
        if "vit" in parts:
            run_part(
                results,
                "vit",
                lambda: measure_simulation(
                    workload(
                        VIT, args.smoke, **common, **rounds, **{"data-dir": str(cifar100_dir)}
                    ),
                    VIT.stem,
                ),
            )
        if "unet" in parts:
            run_part(
                results,
                "unet",
                lambda: measure_simulation(
                    unet_config(work, args.smoke, device, args.rounds), UNET.stem
                ),
            )
        failed = sorted(name for name, value in results.items() if "error" in value)
        report(
            "gpu_client_training",
            {
                "mode": "smoke: tiny data on the CPU, a check of the script, not a measurement"
                if args.smoke
                else "measurement",
                "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
                "torch": torch.__version__,
                "python": platform.python_version(),
                "data": "random images of CIFAR's size (real loader)"
                if not args.data_dir
                else args.data_dir,
                **results,
                **summary(results),
                "failed_parts": failed,
            },
            args.out,
        )
    sys.exit(1 if failed else 0)


def unet_config(work: Path, smoke: bool, device: str, rounds: int) -> FederationConfig:
    """prostate-unet on synthetic volumes in the real layout (128x128 read at the recipe's size)."""
    from fedforget.data.prostate import write_synthetic_prostate

    size = "smoke" if smoke else "full"
    root = work / "prostate"
    volume = 32 if smoke else 128
    write_synthetic_prostate(root, image_size=volume, cases_per_site=PROSTATE_CASES_PER_SITE[size])
    overrides: dict[str, Any] = {
        "dataset": "prostate-synthetic",
        "data-dir": str(root),
        "device": device,
        "num-server-rounds": rounds,
    }
    if smoke:
        overrides["image-size"] = volume
    return workload(UNET, smoke=False, **overrides)


if __name__ == "__main__":
    main()
