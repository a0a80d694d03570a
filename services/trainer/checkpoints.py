"""Per-epoch checkpoints in the artifact store, without pickle.

A checkpoint is two content-addressed artifacts:

- a safetensors file with every tensor: ``model.<name>`` (the model's state_dict),
  ``optim.<param index>.<name>`` (per-parameter optimizer state, e.g. Adam's moments and
  step), ``rng.cpu`` and ``rng.cuda.<i>`` (RNG states);
- a JSON sidecar with everything else: epoch, the optimizer's param groups and its
  non-tensor per-parameter values, the scheduler's state, the training history and a
  fingerprint of the request (a checkpoint of a different request is never resumed).

The pointer ``checkpoints/<run_id>`` names the latest pair; it is rewritten atomically
after each epoch, so a worker killed at any point leaves the previous epoch resumable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from contracts.events import ArtifactRef
from libs.storage import ArtifactStore

CHECKPOINT_FORMAT = "lmesh.trainer-checkpoint/v1"


def pointer_name(run_id: str) -> str:
    return f"checkpoints/{run_id}"


def fingerprint(*parts: str) -> str:
    """A digest of what makes two requests the same training (spec, hyperparameters, data)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass
class TrainingState:
    """Everything needed to continue training after ``epoch`` completed epochs."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng_cpu: torch.Tensor
    rng_cuda: list[torch.Tensor] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    fingerprint: str = ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint sidecar")


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as (tensors, JSON-able metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for idx, values in state["state"].items():
        meta: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                meta[name] = _jsonable(value)
        per_param[str(idx)] = meta
    groups = _jsonable(state["param_groups"])
    return tensors, {"param_groups": groups, "state": per_param}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def encode(ts: TrainingState) -> tuple[bytes, bytes]:
    """A training state as (safetensors bytes, JSON sidecar bytes)."""
    optim_tensors, optim_meta = flatten_optimizer(ts.optimizer)
    tensors: dict[str, torch.Tensor] = {
        **{f"model.{k}": v.detach().cpu().contiguous() for k, v in ts.model.items()},
        **{k: v.detach().cpu().contiguous() for k, v in optim_tensors.items()},
        "rng.cpu": ts.rng_cpu.cpu().contiguous(),
        **{f"rng.cuda.{i}": s.cpu().contiguous() for i, s in enumerate(ts.rng_cuda)},
    }
    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "epoch": ts.epoch,
        "optimizer": optim_meta,
        "scheduler": _jsonable(ts.scheduler),
        "history": ts.history,
        "fingerprint": ts.fingerprint,
        "cuda_rng_count": len(ts.rng_cuda),
    }
    return save_safetensors(tensors), json.dumps(sidecar, sort_keys=True).encode()


def decode(tensor_bytes: bytes, sidecar_bytes: bytes) -> TrainingState:
    tensors = load_safetensors(tensor_bytes)
    meta = json.loads(sidecar_bytes)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a trainer checkpoint: format {meta.get('format')!r}")
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    return TrainingState(
        epoch=int(meta["epoch"]),
        model=model,
        optimizer=unflatten_optimizer(optim, meta["optimizer"]),
        scheduler=meta["scheduler"],
        rng_cpu=tensors["rng.cpu"],
        rng_cuda=[tensors[f"rng.cuda.{i}"] for i in range(int(meta.get("cuda_rng_count", 0)))],
        history=list(meta.get("history", [])),
        fingerprint=str(meta.get("fingerprint", "")),
    )


class Checkpointer:
    """Saves and finds the latest checkpoint of one run in the artifact store."""

    def __init__(self, store: ArtifactStore, run_id: str, request_fingerprint: str) -> None:
        self.store = store
        self.run_id = run_id
        self.fingerprint = request_fingerprint

    def save(self, ts: TrainingState) -> ArtifactRef:
        ts.fingerprint = self.fingerprint
        tensor_bytes, sidecar = encode(ts)
        tensors_ref = self.store.put(tensor_bytes, "application/vnd.safetensors")
        sidecar_ref = self.store.put(sidecar, "application/json")
        pointer = {
            "epoch": ts.epoch,
            "tensors": tensors_ref.model_dump(mode="json"),
            "sidecar": sidecar_ref.model_dump(mode="json"),
        }
        self.store.write_pointer(pointer_name(self.run_id), json.dumps(pointer).encode())
        return tensors_ref

    def load(self) -> TrainingState | None:
        """The latest checkpoint of this run, or None (none yet, or of another request)."""
        raw = self.store.read_pointer(pointer_name(self.run_id))
        if raw is None:
            return None
        pointer = json.loads(raw)
        tensors_ref = ArtifactRef.model_validate(pointer["tensors"])
        sidecar_ref = ArtifactRef.model_validate(pointer["sidecar"])
        ts = decode(self.store.get(tensors_ref), self.store.get(sidecar_ref))
        if ts.fingerprint != self.fingerprint:
            return None
        return ts
