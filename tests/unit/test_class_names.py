"""Class names travel from the dataset's schema to the user: the IDX loader knows Fashion-MNIST's
and MNIST's, an upload may declare them, the contract keeps one name per class, the trainer
writes them into the model card and the predictor answers them as its ``classes`` output.
Old schemas and cards without names keep working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from contracts.events import DatasetSchema, Hyperparameters, TrainingCompleted, TrainingRequested
from contracts.model_card import ModelCard
from libs.idx import KNOWN_CLASS_NAMES, known_class_names
from lmesh.commands.ingest import class_names
from services.ingest.formats import RawDataset
from services.ingest.validation import (
    SchemaMismatch,
    infer_schema,
    name_classes,
    parse_class_names,
)
from services.trainer.jobs import TrainingJob, WorkerConfig
from tests.support.trainer_data import prepared_dataset

FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("/usr/share/datasets/fashion-mnist",), FASHION),
        (("Fashion_MNIST",), FASHION),
        (("data/mnist/",), list("0123456789")),
        (("/data/x", "fashion-mnist"), FASHION),  # the directory says nothing: the name does
        (("kmnist",), None),
        (("fashion-mnist-small",), None),  # only the exact names: no guessing
    ],
)
def test_the_idx_loader_knows_well_known_datasets_by_name(names: tuple, expected) -> None:  # type: ignore[no-untyped-def]
    assert known_class_names(*names) == expected
    assert len(KNOWN_CLASS_NAMES["fashion-mnist"]) == 10


def test_the_cli_option_takes_a_known_name_a_list_or_json(tmp_path: Path) -> None:
    data = tmp_path / "fashion-mnist"
    data.mkdir()
    assert class_names(None, data, "anything") == FASHION  # recognised from the directory
    assert class_names(None, tmp_path / "d.csv", "fashion-mnist") is None  # a file: say it
    assert class_names("mnist", data, "x") == list("0123456789")
    assert class_names("cat, dog", data, "x") == ["cat", "dog"]
    assert class_names('["a,b", "c"]', data, "x") == ["a,b", "c"]


def _raw(top_label: int) -> RawDataset:
    x = np.zeros((top_label + 1, 2, 2), np.uint8)
    return RawDataset(x, np.arange(top_label + 1), None, None)


def test_an_upload_names_the_classes_of_its_schema() -> None:
    inferred = infer_schema(_raw(8))  # labels 0..8 seen: 9 classes inferred
    named = name_classes(inferred, [f"c{i}" for i in range(10)], inferred=True)
    assert named.num_classes == 10 and named.label_names == [f"c{i}" for i in range(10)]
    with pytest.raises(SchemaMismatch, match="3 class names declared, but the dataset has 9"):
        name_classes(inferred, ["a", "b", "c"], inferred=True)
    # a schema the dataset already has keeps its class count and its names
    with pytest.raises(SchemaMismatch, match="10 class names declared, but the dataset has 9"):
        name_classes(inferred, [f"c{i}" for i in range(10)], inferred=False)
    with pytest.raises(SchemaMismatch, match="names its classes"):
        name_classes(named, [f"d{i}" for i in range(10)], inferred=False)
    assert name_classes(named, named.label_names or [], inferred=False) == named


def test_the_upload_field_is_json_or_comma_separated() -> None:
    assert parse_class_names('["T-shirt/top", "Trouser"]') == ["T-shirt/top", "Trouser"]
    assert parse_class_names(" cat , dog ") == ["cat", "dog"]
    with pytest.raises(SchemaMismatch, match="JSON list"):
        parse_class_names("[1, 2]")
    with pytest.raises(SchemaMismatch, match="not a JSON list"):
        parse_class_names("[oops")


def test_the_contract_keeps_one_name_per_class_and_old_schemas_work() -> None:
    assert DatasetSchema(feature_shape=[4], num_classes=3).label_names is None
    with pytest.raises(ValidationError, match="2 names for 3 classes"):
        DatasetSchema(feature_shape=[4], num_classes=3, label_names=["a", "b"])
    old = {"feature_shape": [28, 28], "dtype": "uint8", "num_classes": 10}  # no label_names
    assert DatasetSchema.model_validate(old).label_names is None


def test_the_trainer_writes_the_schemas_names_into_the_model_card(tmp_path: Path) -> None:
    job = TrainingJob(
        WorkerConfig(
            store_url=tmp_path.as_uri(), registry_url="http://127.0.0.1:9", worker="w", threads=1
        )
    )
    prepared = prepared_dataset(job.store, "blobs", n_train=300, n_val=50, n_test=50)
    names = ["north", "east", "south", "west"]
    schema = DatasetSchema(feature_shape=[64], num_classes=4, label_names=names)
    prepared = prepared.model_copy(update={"schema_": schema})
    event = TrainingRequested(
        run_id="named",
        dataset="blobs",
        prepared=prepared,
        hyperparameters=Hyperparameters(epochs=1),
    )
    done = job.run(event, lambda p: None).event
    assert isinstance(done, TrainingCompleted)
    card = ModelCard.model_validate_json(job.store.get(done.card))
    assert card.label_names == names and card.num_classes == 4


def _served(tmp_path: Path, label_names: list[str] | None):  # type: ignore[no-untyped-def]
    from contracts.events import ArtifactRef
    from libs.storage import open_store
    from services.predictor.model import load_model
    from tests.support.registry_stub import write_model_version

    store = open_store(tmp_path.as_uri())
    mv = write_model_version(store, "fashion", 1, hidden_sizes=[8], label_names=label_names)
    weights, card = (store.get(ArtifactRef.model_validate(mv[k])) for k in ("weights", "card"))
    return load_model("fashion", 1, weights, card)


def test_the_predictor_answers_the_top_class_name_per_row(tmp_path: Path) -> None:
    from services.predictor.oip import OIPError, decode_request

    model = _served(tmp_path, FASHION)
    assert {"name": "classes", "datatype": "BYTES", "shape": [-1]} in model.metadata(["1"])[
        "outputs"
    ]
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).tolist()
    body = {"inputs": [{"name": "input", "shape": [3, 28, 28], "datatype": "UINT8", "data": x}]}
    request = decode_request(orjson.dumps(body))
    probs, labels = model.forward(model.rows(request))
    outs = {o.name: o for o in model.outputs(request, probs, labels)}
    assert set(outs) == {"probabilities", "label", "classes"}
    assert outs["classes"].datatype == "BYTES"
    assert [b.decode() for b in outs["classes"].array] == [FASHION[i] for i in labels]
    # the former name still answers when a request asks for it
    old = decode_request(orjson.dumps({**body, "outputs": [{"name": "label_name"}]}))
    model.check_outputs(old)
    assert [o.name for o in model.outputs(old, probs, labels)] == ["label_name"]
    # a card without names: no classes output, and asking for it is a clear 400
    plain = _served(tmp_path / "plain", None)
    assert "classes" not in [o["name"] for o in plain.metadata(["1"])["outputs"]]
    wants = decode_request(orjson.dumps({**body, "outputs": [{"name": "classes"}]}))
    with pytest.raises(OIPError, match="unknown output 'classes'"):
        plain.check_outputs(wants)
