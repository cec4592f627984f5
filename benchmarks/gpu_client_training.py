"""The paper's CIFAR-10 ResNet-18 (GroupNorm) client training on one GPU: seconds per round.

Runs the configuration ``experiments/cifar10-resnet18-dirichlet0.3.toml`` (the
paper's exact Dirichlet(0.3) split of 10 clients, SGD lr 0.1 x 0.998^(t-1),
weight decay 1e-3, batch 32, one local epoch, rotation / crop / flip
augmentation) through the ClientApp's ``train`` handler, one client after the
other as one GPU serves them, and FedAvg of the replies between rounds.
Reports seconds per round for the 10 clients (round 1 includes CUDA and cuDNN
start-up and is reported apart), per client, per optimiser step, and the same
round without augmentation (to show the share of the CPU-side augmentation).

The machine this runs on may have no CIFAR-10: ``--data-dir`` names a folder
holding ``cifar-10-batches-py``; without it, random images of CIFAR-10's shape
(50,000 + 10,000, uint8) are written in torchvision's pickle format and read
through the real loader (md5 check off, since the files are not the official
ones). Training time does not depend on the pixel values.

    python benchmarks/gpu_client_training.py [--rounds 3] [--data-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from record import report

from fedforget.config import FederationConfig
from fedforget.data.cifar import write_cifar_pickles
from fedforget.task import new_model

CONFIG = Path(__file__).resolve().parent.parent / "experiments/cifar10-resnet18-dirichlet0.3.toml"


def write_random_cifar10(root: Path, seed: int = 0) -> None:
    """Random uint8 images and labels of CIFAR-10's size, in torchvision's on-disk format."""
    rng = np.random.default_rng(seed)
    write_cifar_pickles(
        root,
        "cifar10",
        rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, size=50_000).tolist(),
        rng.integers(0, 256, size=(10_000, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, size=10_000).tolist(),
    )


def client_trainer(config: FederationConfig) -> tuple[str, object]:
    """The ClientApp's ``train`` handler with a real Message, or train_client without flwr."""
    try:
        from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        from clients.client_app import train as client_app_train
    except ImportError as error:  # a machine without flwr: the function that handler calls
        from fedforget.task import train_client

        def train_direct(state: dict[str, torch.Tensor], pid: int, rnd: int) -> tuple:
            model = new_model(config)
            model.load_state_dict(state)
            _, count = train_client(config, pid, model, rnd)
            return model.state_dict(), count

        return f"fedforget.task.train_client (flwr not importable: {error})", train_direct

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


def run_rounds(config: FederationConfig, rounds: int) -> tuple[str, list[dict[str, object]]]:
    """Train ``rounds`` rounds of every client; per-round and per-client wall times."""
    path, trainer = client_trainer(config)
    state = new_model(config).state_dict()
    records = []
    for rnd in range(1, rounds + 1):
        client_s, replies = [], []
        start = time.perf_counter()
        for pid in range(config.num_partitions):
            client_start = time.perf_counter()
            new_state, count = trainer(state, pid, rnd)  # type: ignore[operator]
            torch.cuda.synchronize()
            client_s.append(time.perf_counter() - client_start)
            replies.append((new_state, count))
        state = fedavg(replies)
        round_s = time.perf_counter() - start
        examples = sum(count for _, count in replies)
        steps = sum(-(-count // config.batch_size) for _, count in replies)
        records.append(
            {
                "round": rnd,
                "round_s": round(round_s, 3),
                "client_s": [round(s, 3) for s in client_s],
                "examples": examples,
                "steps": steps,
                "ms_per_step": round(1000 * sum(client_s) / steps, 3),
            }
        )
        print(
            f"round {rnd}: {round_s:.2f} s for {config.num_partitions} clients, "
            f"{records[-1]['ms_per_step']} ms per step",
            flush=True,
        )
    return path, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no GPU visible: this benchmark measures GPU client training")

    data_dir = args.data_dir
    synthetic = not data_dir
    if synthetic:
        data_dir = tempfile.mkdtemp(prefix="cifar10-random-")
        write_random_cifar10(Path(data_dir))
        import torchvision.datasets.cifar as tv_cifar

        tv_cifar.check_integrity = lambda *args, **kwargs: True  # not the official files
    overrides = tomllib.loads(CONFIG.read_text())
    config = FederationConfig.from_run_config(
        {**overrides, "data-dir": data_dir, "device": "cuda", "progress": False}
    )
    path, records = run_rounds(config, args.rounds)
    steady = [r["round_s"] for r in records[1:]] or [records[0]["round_s"]]
    _, no_augment = run_rounds(replace(config, augment=False), 1)
    report(
        "gpu_client_training",
        {
            "config": CONFIG.name,
            "data": "random images of CIFAR-10's size (real loader)" if synthetic else data_dir,
            "training_path": path,
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "clients": config.num_partitions,
            "rounds": records,
            "round_s_median_after_round_1": round(statistics.median(steady), 3),
            "no_augmentation_round_s": no_augment[-1]["round_s"],
            "no_augmentation_ms_per_step": no_augment[-1]["ms_per_step"],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
