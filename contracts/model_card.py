"""The model card: the JSON document stored next to a model's safetensors weights.

Written by the trainer, recorded by the registry, read by the predictor. Everything a
server needs to rebuild the network and feed it what training saw is here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from contracts.events import ArtifactRef, Contract, Hyperparameters, ModelSpec, PreprocessingSpec

CARD_FORMAT: Literal["lmesh.model-card/v1"] = "lmesh.model-card/v1"


class TensorSignature(Contract):
    name: str
    datatype: Literal["FP32", "FP64", "UINT8", "INT64", "INT32"] = Field(
        description="Open Inference Protocol datatype"
    )
    shape: list[int] = Field(description="-1 for the batch dimension")


class VariantInfo(Contract):
    """An optimized form of the model, with what it measured."""

    kind: str = Field(description="fp32 | int8-dynamic | torchscript")
    test_accuracy: float | None = None
    batch64_ms: float | None = Field(default=None, description="CPU latency of one batch of 64")
    speedup_vs_fp32: float | None = None
    note: str = ""


class ModelCard(Contract):
    format: Literal["lmesh.model-card/v1"] = CARD_FORMAT
    model_name: str
    run_id: str
    spec: ModelSpec
    num_classes: int
    label_names: list[str] | None = Field(
        default=None,
        description="Class names, label 0 first, from the dataset's schema; the predictor "
        "answers them in its 'classes' output. None: the classes are only numbered",
    )
    input: TensorSignature
    output: TensorSignature
    preprocessing: PreprocessingSpec
    hyperparameters: Hyperparameters
    metrics: dict[str, float]
    variants: dict[str, VariantInfo] = Field(default_factory=dict)
    dataset: str
    dataset_version: int
    dataset_sha256: str
    code_version: str
    created_at: datetime
    reference: ArtifactRef | None = Field(
        default=None,
        description="The dataset's reference statistics (dataset.prepared.v1): what the "
        "monitor compares this model's live inputs against",
    )
    validation_predictions: list[int] | None = Field(
        default=None,
        description="Predicted rows per class on the validation split (label 0 first): the "
        "reference for the monitor's prediction-distribution drift",
    )
