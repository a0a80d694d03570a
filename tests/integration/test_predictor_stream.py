"""Stream inference end to end on a real broker: a client that is not aiokafka (librdkafka,
through confluent-kafka) publishes inference.requested.v1 and reads inference.completed.v1
from the predictor's stream worker; a promotion happens mid-stream; bad requests are
dead-lettered with the field while the partition keeps moving."""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from confluent_kafka import Consumer, Producer

from contracts.events import (
    ArtifactRef,
    InferenceCompleted,
    ModelPromoted,
    ModelSpec,
    decode_event,
)
from libs.models import build_model
from libs.storage import open_store
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually, wait_for
from tests.support.predictor_stack import running_stream_worker
from tests.support.registry_stub import RegistryStub, write_model_version
from tests.support.stream_worker import StreamTopics, serves_first_version

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 10_000  # Fashion-MNIST's test split size
SPEC = ModelSpec(arch="mlp", hidden_sizes=[32])


# ---------------------------------------------------------------------- data and models


def fashion_shaped(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-shaped images (uint8 [n, 28, 28], 10 classes): a class template mixed
    with another class's, plus noise - learnable, but not perfectly."""
    templates = np.random.default_rng(1234).integers(0, 256, (10, 784)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    other = rng.integers(0, 10, n)
    mix = rng.uniform(0.0, 0.75, (n, 1)).astype(np.float32)
    x = (1 - mix) * templates[y] + mix * templates[other] + rng.normal(0, 40, (n, 784))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 28, 28), y


def trained(seed: int, epochs: int) -> torch.nn.Module:
    x, y = fashion_shaped(4000, seed=100 + seed)
    torch.manual_seed(seed)
    net = build_model(SPEC, (28, 28), 10)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt = torch.from_numpy(x.reshape(-1, 784).astype(np.float32) / 255)
    yt = torch.from_numpy(y)
    for _ in range(epochs):
        for i in range(0, len(xt), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i : i + 128]), yt[i : i + 128]).backward()
            opt.step()
    return net.eval()


def local_labels(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return (
            net(torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255)).argmax(1).numpy()
        )


def promotion(mv: dict[str, Any], previous: int | None) -> dict[str, Any]:
    return ModelPromoted(
        model_name=mv["model_name"],
        version=mv["version"],
        alias="production",
        previous_version=previous,
        reason="test",
        actor="test",
        weights=ArtifactRef.model_validate(mv["weights"]),
        card=ArtifactRef.model_validate(mv["card"]),
    ).model_dump(mode="json")


def request_value(request_id: str, model: str, image: np.ndarray, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id,
            "model_name": model,
            "inputs": [
                {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": image.tolist()}
            ],
            **extra,
        }
    )


# ---------------------------------------------------------------------- librdkafka client


def librdkafka_produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """Publish (key, value) pairs with librdkafka, as a non-Python-asyncio upstream would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in items:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "librdkafka could not deliver every request"
    assert not errors, errors[:3]


class LibrdkafkaReader:
    """Reads inference.completed.v1 with librdkafka in a thread until told to stop."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic])
        self.messages: list[tuple[bytes | None, bytes]] = []
        self.stop = False

    def run(self) -> None:
        try:
            while not self.stop:
                for msg in self.consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error() is None:
                        self.messages.append((msg.key(), msg.value()))
        finally:
            self.consumer.close()


# ---------------------------------------------------------------------- tests


async def test_librdkafka_client_gets_one_answer_per_request_through_a_promotion(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    name = f"stream-{unique}"
    topics = StreamTopics.named(unique)
    await topics.create(kafka_settings, partitions=4)
    store = open_store(store_url)
    net1, net2 = trained(seed=1, epochs=1), trained(seed=2, epochs=4)
    mv1 = write_model_version(store, name, 1, hidden_sizes=[32], network=net1)
    mv2 = write_model_version(store, name, 2, hidden_sizes=[32], network=net2)
    stub = RegistryStub()
    stub.add(mv1)
    x, y = fashion_shaped(N, seed=7)
    expected = {1: local_labels(net1, x), 2: local_labels(net2, x)}
    assert (expected[1] != expected[2]).any()  # the two versions are distinguishable
    items = [(f"entity-{i % 97}".encode(), request_value(f"req-{i}", name, x[i])) for i in range(N)]

    with running_stream_worker(
        kafka_settings,
        store_url,
        stub,
        models=name,
        **topics.worker_settings(),
    ) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as http:

            async def ready() -> bool:
                return serves_first_version((await http.get("/stream")).json(), name)

            await eventually(ready, timeout=60, what="stream worker serving version 1")
            reader = LibrdkafkaReader(kafka_bootstrap, topics.completed, f"reader-{unique}")
            reading = asyncio.create_task(asyncio.to_thread(reader.run))
            try:
                half = N // 2
                producing = asyncio.create_task(
                    asyncio.to_thread(
                        librdkafka_produce, kafka_bootstrap, topics.requests, items[:half]
                    )
                )
                # The promotion lands while the worker answers the first half ...
                await eventually(
                    lambda: len(reader.messages) >= N // 10, timeout=120, what="first answers"
                )
                stub.add(mv2)
                await produce(
                    kafka_bootstrap, "model.promoted.v1", [promotion(mv2, 1)], key=name.encode()
                )
                await producing

                async def serving_v2() -> bool:
                    return (await http.get("/stream")).json()["serving"].get(name) == 2

                await eventually(serving_v2, timeout=60, what="version 2 served")
                # ... and the second half follows it.
                await asyncio.to_thread(
                    librdkafka_produce, kafka_bootstrap, topics.requests, items[half:]
                )
                await eventually(
                    lambda: len(reader.messages) >= N, timeout=240, what=f"{N} answers"
                )
            finally:
                reader.stop = True
                await reading

    answers = [(key, decode_event(InferenceCompleted, value)) for key, value in reader.messages]
    per_id = Counter(a.request_id for _, a in answers)
    # Every request answered exactly once: none lost, none failed (a dead-lettered request
    # has no answer).
    assert len(per_id) == N and set(per_id.values()) == {1}, "one answer per request_id"
    versions = Counter(a.model_version for _, a in answers)
    assert set(versions) == {1, 2}, versions  # the promotion happened mid-stream
    late = [a.model_version for _, a in answers if int(a.request_id[4:]) >= N // 2]
    assert set(late) == {2}  # requests published after the swap: all version 2
    correct = 0
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for key, a in answers:
        i = int(a.request_id.removeprefix("req-"))
        assert key == items[i][0]  # the answer carries the request's key
        assert a.lineage.run_id == f"run-{name}-{a.model_version}"
        assert (a.lineage.dataset, a.lineage.dataset_version) == ("synthetic", 1)
        assert a.source.topic == topics.requests
        label = {t.name: t for t in a.outputs}["label"].data[0]
        assert label == expected[a.model_version][i], "the stream answers as the model does"
        correct += label == y[i]
        by_partition.setdefault(a.source.partition, []).append((a.source.offset, a.model_version))
    # Per partition (hence per key), no answer by version 1 after one by version 2.
    for seq in by_partition.values():
        in_order = [v for _, v in sorted(seq)]
        assert in_order == sorted(in_order)
    # Accuracy over the stream equals the models' own accuracy on those images, computed here.
    local = sum(
        int(expected[a.model_version][int(a.request_id[4:])] == y[int(a.request_id[4:])])
        for _, a in answers
    )
    assert correct == local
    assert correct / N > 0.5  # and the models learned something


async def test_bad_requests_are_dead_lettered_and_a_stream_waits_for_its_first_version(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    name = f"late-{unique}"
    topics = StreamTopics.named(unique)
    await topics.create(kafka_settings, partitions=1)
    store = open_store(store_url)
    mv1 = write_model_version(store, name, 1, hidden_sizes=[32])
    stub = RegistryStub()  # no version yet: the stream starts before the first promotion
    image = np.random.default_rng(3).integers(0, 256, (28, 28))
    good = request_value("good-1", name, image)
    wrong_shape = orjson.loads(request_value("bad-shape", name, image))
    wrong_shape["inputs"][0]["shape"] = [1, 784, 1]
    wrong_type = orjson.loads(request_value("bad-type", name, image))
    wrong_type["inputs"][0]["datatype"] = "FP32"
    binary = orjson.loads(good)  # the same image as raw bytes: OIP's binary tensor form
    raw = image.astype(np.uint8).tobytes()
    binary["request_id"] = "good-bin"
    binary["inputs"][0]["data"] = [base64.b64encode(raw).decode()]
    binary["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
    wrong_size = orjson.loads(orjson.dumps(binary))
    wrong_size["request_id"] = "bad-bin"
    wrong_size["inputs"][0]["parameters"] = {"binary_data_size": 700}
    values: list[bytes] = [
        b"\x00\x01 not json",
        orjson.dumps(wrong_shape),
        orjson.dumps(wrong_type),
        request_value("no-such-model", "no-such-model", image),
        orjson.dumps({"model_name": name, "inputs": []}),
        request_value("too-big", name, np.zeros((40, 28, 28), np.uint8).reshape(-1, 28)),
        good,
        good,  # redelivered: answered once
        request_value("good-2", name, image),
        orjson.dumps(wrong_size),
        orjson.dumps(binary),
    ]
    with running_stream_worker(
        kafka_settings,
        store_url,
        stub,
        models=name,
        **topics.worker_settings(),
        stream_max_request_bytes=16 * 1024,
        stream_model_wait_s=120,
    ) as s:
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=10) as http,
            TopicReader(kafka_bootstrap, topics.completed) as done,
            TopicReader(kafka_bootstrap, "predictor.dlq.v1") as dlq,
        ):

            async def following() -> bool:
                return (await http.get("/stream")).json()["promotions_followed"]

            await eventually(following, timeout=60, what="promotions followed")
            await produce(kafka_bootstrap, topics.requests, values, key=b"k")
            # The batch waits for the model's first version: nothing answered meanwhile ...

            async def waiting() -> bool:
                return (await http.get("/stream")).json()["waiting_for"] == [name]

            await eventually(waiting, timeout=30, what="the batch waiting for its model")
            assert not done.messages
            stub.add(mv1)
            await produce(
                kafka_bootstrap, "model.promoted.v1", [promotion(mv1, None)], key=name.encode()
            )
            # ... then the partition moves: three answers, seven letters.
            answers = await done.wait_for(count=3, timeout=60)
            letters = await dlq.wait_for(
                lambda m: m.get("source_topic") == topics.requests, count=7, timeout=30
            )

    # One partition, answers in record order: a duplicate answer would come before good-2.
    assert [a["request_id"] for a in answers] == ["good-1", "good-2", "good-bin"]
    assert all(a["model_version"] == 1 and a["_key"] == "k" for a in answers)
    # the binary form of an image is answered as its numbers are
    labels = [{t["name"]: t["data"] for t in a["outputs"]}["label"] for a in answers]
    assert labels[2] == labels[0]
    reasons = [m["reason"] for m in sorted(letters, key=lambda m: m["offset"])]
    assert reasons[0].startswith("value: not valid JSON")
    assert reasons[1].startswith("inputs.0.shape: [1, 784, 1] does not fit")
    assert (
        reasons[2].startswith("inputs.0.datatype: model") and "takes UINT8, got FP32" in reasons[2]
    )
    assert reasons[3].startswith("model_name: unknown model 'no-such-model'")
    assert "request_id" in reasons[4] and "inputs" in reasons[4]
    assert reasons[5].startswith("value: ") and "exceeds the limit of 16384" in reasons[5]
    assert reasons[6].startswith("inputs.0.parameters.binary_data_size: 700 bytes")
    assert all(m["service"] == "predictor" for m in letters)


def published_request(bootstrap: str, request_id: str) -> dict[str, Any]:
    """The inference.requested.v1 record keyed ``request_id``, read from the topic's start
    (librdkafka, a group of its own: nothing to race)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{request_id}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["inference.requested.v1"])
    found: list[dict[str, Any]] = []

    def probe() -> list[dict[str, Any]]:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error() is None and msg.key() == request_id.encode():
                found.append(orjson.loads(msg.value()))
        return found

    try:
        return wait_for(probe, timeout=60, what=f"request {request_id} on the topic")[0]
    finally:
        consumer.close()


def test_cli_predicts_via_kafka_and_tails_the_answers(
    kafka_settings, kafka_bootstrap, store_url, unique, tmp_path, monkeypatch
) -> None:
    import jsonschema
    from PIL import Image
    from typer.testing import CliRunner

    from lmesh.cli import app as cli_app

    name = f"cli-{unique}"
    store = open_store(store_url)
    net = trained(seed=3, epochs=2)
    stub = RegistryStub(store=store)
    stub.add(
        write_model_version(
            store,
            name,
            1,
            hidden_sizes=[32],
            network=net,
            label_names=[f"class-{i}" for i in range(10)],
        )
    )
    x, _ = fashion_shaped(1, seed=11)
    image = tmp_path / "item.png"
    Image.fromarray(x[0]).save(image)
    with running_stream_worker(
        kafka_settings, store_url, stub, models=name, stream_group=f"predictor-stream-{unique}"
    ) as s:
        monkeypatch.setenv("LMESH_REGISTRY_URL", s.registry_url)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
        runner = CliRunner()
        result = runner.invoke(
            cli_app, ["predict", name, "--file", str(image), "--via", "kafka", "--timeout", "60"]
        )
        assert result.exit_code == 0, result.output
        label = int(local_labels(net, x)[0])
        assert f"class {label} (class-{label})" in result.output
        assert f"model {name} version 1" in result.output
        assert f"run run-{name}-1, dataset synthetic v1; request inference.requested.v1[" in (
            result.output
        )
        found = re.search(r"request (cli-[0-9a-f]{12}): ", result.output)
        assert found, result.output
        request_id = found.group(1)
        # It sent the image's bytes in the binary form, valid under the version's schema.
        sent = published_request(kafka_bootstrap, request_id)
        tensor = sent["inputs"][0]
        assert tensor["shape"] == [1, 28, 28] and tensor["datatype"] == "UINT8"
        assert tensor["parameters"] == {"binary_data_size": 784}
        assert base64.b64decode(tensor["data"][0], validate=True) == x[0].tobytes()
        schema = httpx.get(f"{s.registry_url}/models/{name}/versions/1/schema").json()
        jsonschema.validate(sent, schema, cls=jsonschema.Draft202012Validator)
        tail = runner.invoke(
            cli_app, ["stream", "tail", "--from-beginning", "--model", name, "--count", "1"]
        )
        assert tail.exit_code == 0, tail.output
        assert tail.output.startswith(f"{request_id} key={request_id} label=[{label}] {name} v1")
        missing = runner.invoke(
            cli_app, ["predict", "no-such-model", "--file", str(image), "--via", "kafka"]
        )
        assert missing.exit_code == 1 and "404" in missing.output
