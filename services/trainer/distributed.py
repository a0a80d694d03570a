"""One job under torch.distributed: ``world_size`` processes on this host (DDP; gloo on
CPU, NCCL on GPU), each training on its own equal shard of the training set.

Every rank loads the dataset from the store itself and restores the latest checkpoint
(rank 0 writes checkpoints and reports progress). Rank 0 hands the trained weights back
to the parent as a safetensors file and its history as JSON; progress travels as JSON
lines over a local queue. Nothing crosses a process boundary as pickle of our own data.
"""

from __future__ import annotations

import json
import queue as queue_mod
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef
from libs.messaging.embedded import free_port
from libs.models import build_model
from libs.storage import open_store
from services.trainer.checkpoints import Checkpointer
from services.trainer.datasets import load_splits
from services.trainer.training import EpochStats, FitResult, Splits, fit, resolve_device


def shard(splits: Splits, rank: int, world_size: int, seed: int) -> Splits:
    """This rank's equal slice of a seeded permutation of the training set."""
    n = len(splits.y_train)
    per = n // world_size
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = perm[rank * per : (rank + 1) * per]
    return Splits(splits.x_train[idx], splits.y_train[idx], splits.x_val, splits.y_val)


def _rank_main(rank: int, world_size: int, port: int, args: dict[str, Any], progress: Any) -> None:
    torch.set_num_threads(max(1, int(args["threads_per_rank"])))
    device = resolve_device(args["device"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        store = open_store(args["store_url"])
        prepared = PreparedDatasetRef.model_validate_json(args["prepared"])
        spec = ModelSpec.model_validate_json(args["spec"])
        hp = Hyperparameters.model_validate_json(args["hp"])
        splits = shard(load_splits(store, prepared), rank, world_size, hp.seed)
        torch.manual_seed(hp.seed)
        net = build_model(spec, splits.feature_shape, prepared.schema_.num_classes).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
        checkpointer = Checkpointer(store, args["run_id"], args["fingerprint"])

        def on_epoch(stats: EpochStats) -> None:
            progress.put(json.dumps(asdict(stats)))

        result = fit(
            net,
            splits,
            hp,
            device=device,
            on_epoch=on_epoch,
            checkpointer=checkpointer,
            forward_model=ddp,
            rank=rank,
            world_size=world_size,
        )
        if rank == 0:
            out = Path(args["result_dir"])
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                out / "model.safetensors",
            )
            summary = {
                "history": result.history,
                "resumed_from_epoch": result.resumed_from_epoch,
                "samples_per_sec": result.samples_per_sec,
                "train_seconds": result.train_seconds,
            }
            (out / "result.json").write_text(json.dumps(summary))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(
    *,
    world_size: int,
    store_url: str,
    prepared: PreparedDatasetRef,
    spec: ModelSpec,
    hp: Hyperparameters,
    run_id: str,
    fingerprint: str,
    device: str = "auto",
    threads: int | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> tuple[FitResult, dict[str, torch.Tensor]]:
    """Train under DDP with ``world_size`` local processes; returns rank 0's result and weights."""
    total_threads = threads or torch.get_num_threads()
    ctx = mp.get_context("spawn")
    progress = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="lmesh-ddp-") as tmp:
        args = {
            "store_url": store_url,
            "prepared": prepared.model_dump_json(by_alias=True),
            "spec": spec.model_dump_json(),
            "hp": hp.model_dump_json(),
            "run_id": run_id,
            "fingerprint": fingerprint,
            "device": device,
            "threads_per_rank": max(1, total_threads // world_size),
            "result_dir": tmp,
        }
        procs = mp.start_processes(
            _rank_main,
            args=(world_size, free_port(), args, progress),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )

        def drain() -> None:
            while not progress.empty():
                try:
                    stats = EpochStats(**json.loads(progress.get()))
                except queue_mod.Empty:  # pragma: no cover
                    return
                if on_epoch is not None:
                    on_epoch(stats)

        while not procs.join(timeout=0.2):
            drain()
        drain()
        summary = json.loads((Path(tmp) / "result.json").read_text())
        state = load_file(str(Path(tmp) / "model.safetensors"))
    history = summary["history"]
    final = None
    if history:
        last = history[-1]
        final = EpochStats(
            epoch=int(last["epoch"]),
            epochs=hp.epochs,
            loss=last["loss"],
            train_accuracy=last["train_accuracy"],
            val_accuracy=last["val_accuracy"],
            samples_per_sec=last["samples_per_sec"],
            elapsed_s=summary["train_seconds"],
        )
    result = FitResult(
        history=history,
        resumed_from_epoch=int(summary["resumed_from_epoch"]),
        samples_per_sec=float(summary["samples_per_sec"]),
        train_seconds=float(summary["train_seconds"]),
        final=final,
    )
    return result, state
