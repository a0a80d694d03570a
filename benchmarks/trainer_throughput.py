"""The trainer's training path against a bare hand-written PyTorch loop: same model, same
data in memory, same batch size, optimizer and threads, in the same run.

    python -m benchmarks.trainer_throughput [--model mlp] [--epochs 3] [--device cuda]

"trainer" runs services.trainer.training.fit (per-epoch validation and a checkpoint to a
temporary artifact store included); its samples/s counts the training phase of each epoch,
as the trainer reports it. "bare" is the minimal loop. Runs alternate (bare, trainer, bare,
trainer, ...) so that both see the same machine load. Prints JSON; goal: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model
from libs.storage import open_store
from services.trainer.checkpoints import Checkpointer
from services.trainer.training import Splits, fit, resolve_device


def data(n: int, synthetic: bool, directory: str | None = None) -> Splits:
    if not synthetic:
        try:
            from benchmarks.fashion_mnist import DEFAULT_DIR, load

            t = load(Path(directory) if directory else DEFAULT_DIR)
            return Splits(t["x_train"][:n], t["y_train"][:n], t["x_val"], t["y_val"])
        except FileNotFoundError:
            pass
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n + 5000, 28, 28, generator=g)
    y = torch.randint(0, 10, (n + 5000,), generator=g)
    return Splits(x[:n], y[:n], x[n:], y[n:])


def bare_loop(spec: ModelSpec, d: Splits, hp: Hyperparameters, device: torch.device) -> float:
    """Samples/s of the plainest loop: permutation slicing, forward, backward, step."""
    torch.manual_seed(hp.seed)
    model = build_model(spec, d.feature_shape, 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    x, y = d.x_train.to(device), d.y_train.to(device)
    n, bs = len(y), hp.batch_size
    amp = device.type == "cuda"
    seen, seconds = 0, 0.0
    for _ in range(hp.epochs):
        perm = torch.randperm(n).to(device)
        if amp:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if amp:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        seen += n
    return seen / seconds


def trainer_path(
    spec: ModelSpec, d: Splits, hp: Hyperparameters, device: torch.device
) -> tuple[float, float]:
    """(training-phase samples/s, end-to-end samples/s incl. validation and checkpoints)."""
    torch.manual_seed(hp.seed)
    model = build_model(spec, d.feature_shape, 10).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp).as_uri())
        t0 = time.perf_counter()
        result = fit(model, d, hp, device=device, checkpointer=Checkpointer(store, "bench", "x"))
        wall = time.perf_counter() - t0
    return result.samples_per_sec, len(d.y_train) * hp.epochs / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating bare/trainer rounds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=55_000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (IDX gzip files)")
    p.add_argument("--synthetic", action="store_true", help="random data instead of Fashion-MNIST")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec = ModelSpec(arch=args.model)
    hp = Hyperparameters(
        optimizer="adam", learning_rate=1e-3, batch_size=args.batch_size, epochs=args.epochs
    )
    d = data(args.samples, args.synthetic, args.data)
    bare_loop(
        spec,
        Splits(d.x_train[:4096], d.y_train[:4096], d.x_val, d.y_val),
        hp.model_copy(update={"epochs": 1}),
        device,
    )  # warm-up
    bare, trainer, trainer_e2e = [], [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(spec, d, hp, device))
        sps, e2e = trainer_path(spec, d, hp, device)
        trainer.append(sps)
        trainer_e2e.append(e2e)
    b, t, e = statistics.median(bare), statistics.median(trainer), statistics.median(trainer_e2e)
    print(
        json.dumps(
            {
                "benchmark": "trainer_throughput",
                "model": args.model,
                "device": str(device),
                "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                "machine": f"{platform.machine()}, torch {torch.__version__}",
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "samples": len(d.y_train),
                "epochs_per_round": args.epochs,
                "rounds": args.rounds,
                "bare_samples_per_sec": round(b),
                "trainer_samples_per_sec": round(t),
                "ratio": round(t / b, 4),
                "trainer_end_to_end_samples_per_sec": round(e),
                "ratio_end_to_end": round(e / b, 4),
                "goal": ">= 0.95 (ratio)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
