"""The main job (``lmesh demo`` / ``make demo``): the seed's experiment through the whole mesh.

Start the mesh → upload an IDX dataset to ingest → preprocess prepares it → request
training of the seed MLP (live progress) → the registry registers and promotes it → the
predictor hot-loads it → send the whole test split over HTTP → print what was achieved.
Then the auto-retrain path: a changed upload becomes dataset version 2, the registry asks
for a retrain with the same spec, and the predictor answers with the new model.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef, TrainingRequested
from libs.idx import encode_idx, find_idx_files, known_class_names, read_idx

#: The demo's promotion policy: a retrain on new data is promoted unless it is more than one
#: point worse on its own validation split (splits differ between dataset versions).
PROMOTION_MARGIN = -0.01
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
REQUIRED_ROLES = {("train", "images"), ("train", "labels"), ("test", "images"), ("test", "labels")}


class DemoInputError(ValueError):
    """Bad ``--data``: reported as one line, exit code 2, before anything starts."""


def check_data_dir(data: Path) -> dict[tuple[str, str], Path]:
    if not data.exists():
        raise DemoInputError(f"--data {data}: no such directory")
    if not data.is_dir():
        raise DemoInputError(f"--data {data}: not a directory")
    files = find_idx_files(data)
    missing = REQUIRED_ROLES - set(files)
    if missing:
        names = ", ".join(f"{'t10k' if s == 'test' else s}-{k}" for s, k in sorted(missing))
        raise DemoInputError(
            f"--data {data}: not an IDX dataset directory (missing {names} "
            "files such as train-images-idx3-ubyte.gz)"
        )
    for path in files.values():  # cheap header check, so a wrong file fails here, not later
        head = path.read_bytes()[:4] if path.suffix != ".gz" else b""
        if head and (head[:2] != b"\0\0" or head[3] == 0):
            raise DemoInputError(
                f"--data {data}: {path.name} is not an IDX file (bad magic number)"
            )
    return files


@dataclass
class DemoOptions:
    data: Path = DEFAULT_DATA
    name: str = "fashion-mnist"
    epochs: int = 10
    retrain: bool = True
    keep: bool = False
    batch: int = 1000
    timeout_s: float = 900.0


class Demo:
    def __init__(self, mesh: Any, options: DemoOptions, console: Console) -> None:
        self.mesh = mesh
        self.opt = options
        self.console = console
        self.bootstrap: str = mesh.bootstrap
        self.token: str = mesh.tokens["ingest"]
        self.http = httpx.Client(timeout=120.0)
        #: Fashion-MNIST's or MNIST's class names when the data is recognised (libs.idx)
        self.classes = known_class_names(options.data, options.name)

    # ------------------------------------------------------------------ steps
    def upload(self, files: list[Path]) -> dict[str, Any]:
        from lmesh.commands.ingest import upload_files

        return upload_files(
            self.mesh.url("ingest"), self.opt.name, files, token=self.token, classes=self.classes
        )

    def prepared(self, version: int) -> tuple[PreparedDatasetRef, dict[str, str]]:
        """Wait for dataset.prepared.v1 of this version; its Kafka headers carry the trace."""
        return asyncio.run(
            _wait_prepared(self.bootstrap, self.opt.name, version, self.opt.timeout_s)
        )

    def request_training(
        self, ref: PreparedDatasetRef, headers: dict[str, str]
    ) -> TrainingRequested:
        from opentelemetry import propagate

        from libs import telemetry
        from lmesh.commands.train import RECIPE, request_training

        event = TrainingRequested(
            run_id=f"{ref.dataset}-mlp-demo-{uuid.uuid4().hex[:6]}",
            dataset=ref.dataset,
            dataset_version=ref.version,
            prepared=ref,
            model=ModelSpec(arch="mlp", hidden_sizes=[500], dropout=float(RECIPE["dropout"])),
            hyperparameters=Hyperparameters(
                optimizer=str(RECIPE["optimizer"]),
                learning_rate=float(RECIPE["learning_rate"]),
                weight_decay=float(RECIPE["weight_decay"]),
                schedule=str(RECIPE["schedule"]),
                batch_size=int(RECIPE["batch_size"]),
                label_smoothing=float(RECIPE["label_smoothing"]),
                epochs=self.opt.epochs,
            ),
            requested_by="lmesh-demo",
        )
        # Continue the dataset's trace: upload → ingest → preprocess → (this request) → training.
        tracer = telemetry.tracer("lmesh.demo")
        with tracer.start_as_current_span(
            "demo request training", context=propagate.extract(headers)
        ) as span:
            span.set_attribute("lmesh.run_id", event.run_id)
            asyncio.run(request_training(self.bootstrap, event))
        return event

    def follow(self, run_id: str) -> Any:
        from lmesh.commands.train import wait_with_progress

        result = wait_with_progress(self.bootstrap, run_id, self.opt.epochs, self.opt.timeout_s)
        if result.__class__.__name__ == "TrainingFailed":
            raise RuntimeError(f"training {run_id} failed: {result.reason}")
        return result

    def registered(self, model: str, run_id: str) -> dict[str, Any]:
        """Wait until the registry has registered this run; its version (with aliases)."""
        url = f"{self.mesh.url('registry')}/models/{model}/versions"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = self.http.get(url, params={"limit": 100})
            if r.status_code == 200:
                for v in r.json()["items"]:
                    if v["run_id"] == run_id and v["aliases"]:
                        return dict(v)
            time.sleep(0.1)
        raise RuntimeError(f"run {run_id} was not registered as {model} within 60s")

    def production_version(self, model: str, run_id: str) -> int:
        """Wait until the registry's production alias points at this run's version."""
        url = f"{self.mesh.url('registry')}/models/{model}/aliases/production"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = self.http.get(url)
            if r.status_code == 200 and r.json()["run_id"] == run_id:
                return int(r.json()["version"])
            time.sleep(0.1)
        raise RuntimeError(f"run {run_id} did not reach the production alias of {model} within 60s")

    def first_served(self, model: str, version: int, sample: np.ndarray) -> float:
        """Poll the predictor until this version answers; return the time it did."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = self.infer(model, sample, check=False)
            if body and str(body.get("model_version")) == str(version):
                return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"the predictor did not serve {model} version {version} within 60s")

    def examples(self, model: str, x: np.ndarray, y: np.ndarray) -> list[str]:
        """What the served model answers for a few test images, by class name, with the truth."""
        from lmesh.commands.predict import describe

        body = self.infer(model, x, outputs=None)
        assert body is not None
        lines = describe(body, served_by=False)
        return [
            f"test image {i}: {line}; true: {self.classes[t] if self.classes else t}"
            for i, (line, t) in enumerate(zip(lines, y.tolist(), strict=True))
        ]

    def infer(
        self,
        model: str,
        x: np.ndarray,
        *,
        check: bool = True,
        outputs: tuple[str, ...] | None = ("label",),
    ) -> dict[str, Any] | None:
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "inputs": [
                {
                    "name": self.input_name(model),
                    "shape": list(x.shape),
                    "datatype": "UINT8",
                    "data": x.ravel().tolist(),
                }
            ],
        }
        if outputs is not None:
            payload["outputs"] = [{"name": name} for name in outputs]
        r = self.http.post(f"{self.mesh.url('predictor')}/v2/models/{model}/infer", json=payload)
        if r.status_code != 200:
            if check:
                raise RuntimeError(f"predictor answered {r.status_code}: {r.text[:200]}")
            return None
        out: dict[str, Any] = r.json()
        return out

    _input_names: dict[str, str] = {}

    def input_name(self, model: str) -> str:
        if model not in self._input_names:
            r = self.http.get(f"{self.mesh.url('predictor')}/v2/models/{model}")
            self._input_names[model] = (
                r.json()["inputs"][0]["name"] if r.status_code == 200 else "input"
            )
        return self._input_names[model]

    def evaluate(self, model: str, version: int, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Send the whole test split in batches; accuracy of the served model's labels."""
        correct = 0
        for start in range(0, len(y), self.opt.batch):
            body = self.infer(model, x[start : start + self.opt.batch])
            assert body is not None
            if str(body["model_version"]) != str(version):
                raise RuntimeError(
                    f"expected version {version}, the predictor answered with {body['model_version']}"
                )
            labels = next(o for o in body["outputs"] if o["name"] == "label")["data"]
            correct += int(np.sum(np.asarray(labels) == y[start : start + self.opt.batch]))
        return correct / len(y), len(y)


async def _first_event(
    bootstrap: str, topic: str, match: Any, timeout_s: float, what: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The first event on ``topic`` (read from the beginning) for which ``match(body)``;
    returns its body and Kafka headers."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    body = json.loads(record.value)
                    if match(body):
                        return body, {k: v.decode() for k, v in record.headers or []}
        raise TimeoutError(f"{what} within {timeout_s:.0f}s")
    finally:
        await consumer.stop()


async def _wait_prepared(
    bootstrap: str, dataset: str, version: int, timeout_s: float
) -> tuple[PreparedDatasetRef, dict[str, str]]:
    from contracts.events import DatasetPrepared, decode_event

    body, headers = await _first_event(
        bootstrap,
        "dataset.prepared.v1",
        lambda b: b["prepared"]["dataset"] == dataset and b["prepared"]["version"] == version,
        timeout_s,
        f"dataset {dataset} version {version} was not prepared",
    )
    return decode_event(DatasetPrepared, body).prepared, headers


async def _wait_auto_retrain(bootstrap: str, dataset: str, version: int, timeout_s: float) -> str:
    """The run id the registry's auto-retrain policy requested for this dataset version."""
    body, _ = await _first_event(
        bootstrap,
        "training.requested.v1",
        lambda b: b.get("dataset") == dataset and b.get("dataset_version") == version,
        timeout_s,
        f"no retrain was requested for {dataset} version {version}",
    )
    return str(body["run_id"])


def changed_copy(
    files: dict[tuple[str, str], Path], directory: Path, withdraw: int = 3000, seed: int = 1
) -> list[Path]:
    """Version 2 of the data: the same splits with ``withdraw`` training records removed
    (as if an upstream system withdrew them), written as IDX files."""
    x, y = read_idx(files[("train", "images")]), read_idx(files[("train", "labels")])
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[withdraw:])
    out = []
    for name, arr in (("train-images-idx3-ubyte", x[keep]), ("train-labels-idx1-ubyte", y[keep])):
        path = directory / name
        path.write_bytes(encode_idx(arr))
        out.append(path)
    return [*out, files["test", "images"], files["test", "labels"]]


def run(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed as the last line, JSON)."""
    from libs import telemetry
    from lmesh.mesh import Mesh, MeshConfig

    console = console or Console()
    files = check_data_dir(options.data)
    x_test, y_test = read_idx(files[("test", "images")]), read_idx(files[("test", "labels")])
    config = MeshConfig(extra_env={"REGISTRY_PROMOTION_MARGIN": str(PROMOTION_MARGIN)})
    import os

    os.environ.setdefault("LMESH_SPANS_DIR", str(config.home / "spans"))
    telemetry.setup("lmesh-cli")
    console.print(
        f"[bold]starting the mesh[/bold] (embedded broker, SQLite registry, local store in {config.home})"
    )
    mesh = Mesh(config)
    started = time.monotonic()
    mesh.start(detach=options.keep)  # --keep: a background supervisor outlives the demo
    summary: dict[str, Any] = {}
    try:
        console.print(f"mesh up in {time.monotonic() - started:.1f}s: broker {mesh.bootstrap}")
        demo = Demo(mesh, options, console)
        summary = _first_model(demo, files, x_test, y_test)
        if options.retrain:
            summary["retrain"] = _retrain(demo, files, x_test, y_test, summary)
    finally:
        telemetry.shutdown()
        if options.keep:
            console.print("--keep: the mesh is still running; stop it with `lmesh down`")
        else:
            mesh.stop()
            console.print("mesh stopped")
    return summary


def _first_model(
    demo: Demo, files: dict[tuple[str, str], Path], x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, Any]:
    c, opt = demo.console, demo.opt
    t_ingest = time.time()
    up = demo.upload(sorted(files.values()))
    c.print(f"ingested [bold]{up['dataset']}[/bold] version {up['version']}: {up['split_counts']}")
    ref, headers = demo.prepared(int(up["version"]))
    c.print(f"prepared: {ref.counts} — {ref.preprocessing.description or 'scaled'}")
    request = demo.request_training(ref, headers)
    c.print(f"training the seed MLP (784-500-10), run {request.run_id}")
    done = demo.follow(request.run_id)
    version = demo.production_version(done.model_name, request.run_id)
    t_served = demo.first_served(done.model_name, version, x_test[:1])
    accuracy, n = demo.evaluate(done.model_name, version, x_test, y_test)
    trace_id = headers.get("traceparent", "--").split("-")[1] if "traceparent" in headers else None
    c.print(
        f"served {done.model_name} v{version}: test accuracy {accuracy:.4f} on {n} images over HTTP"
    )
    for line in demo.examples(done.model_name, x_test[:3], y_test[:3]):
        c.print(f"  {line}", highlight=False)
    return {
        "dataset": ref.dataset,
        "dataset_version": ref.version,
        "model": done.model_name,
        "model_version": version,
        "run_id": request.run_id,
        "test_accuracy": round(accuracy, 4),
        "trainer_test_accuracy": round(done.metrics.get("test_accuracy", float("nan")), 4),
        "test_images": n,
        "train_samples_per_sec": round(done.metrics.get("samples_per_sec", 0.0), 1),
        "training_seconds": round(done.training_seconds, 2),
        "epochs": opt.epochs,
        "ingest_to_first_prediction_s": round(t_served - t_ingest, 2),
        "trace_id": trace_id,
    }


def _retrain(
    demo: Demo,
    files: dict[tuple[str, str], Path],
    x_test: np.ndarray,
    y_test: np.ndarray,
    first: dict[str, Any],
) -> dict[str, Any]:
    c = demo.console
    # 3,000 records, or a tenth of a smaller training split
    withdraw = min(3000, len(read_idx(files[("train", "labels")])) // 10)
    c.print(
        f"[bold]auto-retrain[/bold]: uploading changed data ({withdraw:,} training records withdrawn)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t_ingest = time.time()
        up = demo.upload(changed_copy(files, Path(tmp), withdraw))
    version = int(up["version"])
    c.print(
        f"ingested version {version}: {up['split_counts']}; waiting for the registry's retrain request"
    )
    run_id = asyncio.run(
        _wait_auto_retrain(demo.bootstrap, demo.opt.name, version, demo.opt.timeout_s)
    )
    c.print(f"registry requested run {run_id} with the last spec")
    done = demo.follow(run_id)
    mine = demo.registered(done.model_name, run_id)
    if "production" not in mine["aliases"]:
        c.print(f"version {mine['version']} went to {mine['aliases']} (it did not beat production)")
        return {
            "dataset_version": version,
            "model_version": mine["version"],
            "promoted": False,
            "aliases": mine["aliases"],
        }
    t_served = demo.first_served(done.model_name, mine["version"], x_test[:1])
    accuracy, _ = demo.evaluate(done.model_name, mine["version"], x_test, y_test)
    c.print(f"served {done.model_name} v{mine['version']}: test accuracy {accuracy:.4f}")
    return {
        "dataset_version": version,
        "model_version": mine["version"],
        "promoted": True,
        "test_accuracy": round(accuracy, 4),
        "ingest_to_first_prediction_s": round(t_served - t_ingest, 2),
    }
