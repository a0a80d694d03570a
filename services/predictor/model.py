"""A model version ready to serve: network rebuilt from its card, weights, preprocessing,
input checks, outputs, and its own micro-batcher.

Pure: torch, numpy, safetensors; no web framework, no broker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opentelemetry.trace import SpanContext
from safetensors.torch import load as load_safetensors

from contracts.model_card import ModelCard
from libs.models import build_model, quantize_int8
from services.predictor.batching import MicroBatcher
from services.predictor.oip import DATATYPES, InferenceRequest, OIPError, OutputTensor
from services.predictor.preprocessing import Preprocessor

__all__ = [
    "OUTPUT_CLASSES",
    "OUTPUT_LABEL",
    "OUTPUT_LABEL_NAME",
    "OUTPUT_PROBABILITIES",
    "LoadedModel",
    "load_model",
]

OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
#: BYTES [N]: the top class's name per row, when the model card names the classes
OUTPUT_CLASSES = "classes"
#: the former name of ``classes``: still answered when a request asks for it by name
OUTPUT_LABEL_NAME = "label_name"
#: datatypes a client may send: any numeric one (cast to float32 before preprocessing)
_NUMERIC = frozenset(DATATYPES) - {"BOOL"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: int
    card: ModelCard
    network: torch.nn.Module | None  # None: no-op forward (benchmark of the HTTP ceiling)
    preprocess: Preprocessor
    variant: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batcher: MicroBatcher | None = None
    #: the span that loaded this version; each prediction's span links to it
    load_span: SpanContext | None = None
    #: the safetensors weights, kept for a rollout's candidate (the shadow's child process
    #: loads its own copy); None otherwise
    weights: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.version_str = str(self.version)
        self.input_name = self.card.input.name
        self.input_datatype = self.card.input.datatype
        self.feature_shape = tuple(self.card.input.shape[1:])
        self.feature_count = math.prod(self.feature_shape)
        self.num_classes = self.card.num_classes
        self.label_names = (
            np.array([n.encode() for n in self.card.label_names], dtype=object)
            if self.card.label_names
            else None
        )
        self.output_names = [OUTPUT_PROBABILITIES, OUTPUT_LABEL]
        if self.label_names is not None:
            self.output_names.append(OUTPUT_CLASSES)
        self._noop = (
            np.full((1, self.num_classes), 1.0 / self.num_classes, dtype=np.float32),
            np.zeros(1, dtype=np.int64),
        )

    # ----------------------------------------------------------------- metadata

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        outputs = [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, self.num_classes]},
            {"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]},
        ]
        if self.label_names is not None:
            outputs.append({"name": OUTPUT_CLASSES, "datatype": "BYTES", "shape": [-1]})
        return {
            "name": self.name,
            "versions": versions,
            "platform": "pytorch",
            "inputs": [
                {
                    "name": self.input_name,
                    "datatype": self.input_datatype,
                    "shape": [-1, *self.feature_shape],
                }
            ],
            "outputs": outputs,
        }

    # ------------------------------------------------------------------ requests

    def rows(self, request: InferenceRequest) -> np.ndarray:
        """The request's input as rows ``[N, F]`` (raw dtype), after cheap checks."""
        if len(request.inputs) != 1:
            raise OIPError(
                f"model {self.name!r} takes exactly one input ({self.input_name!r}), "
                f"got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.name != self.input_name:
            raise OIPError(
                f"unknown input {tensor.name!r}: model {self.name!r} takes {self.input_name!r}"
            )
        if tensor.datatype not in _NUMERIC:
            raise OIPError(
                f"input {tensor.name!r}: datatype {tensor.datatype} is not numeric; the model "
                f"takes {self.input_datatype}"
            )
        shape = tensor.shape
        if (
            len(shape) < 2
            or shape[0] < 1
            or (shape[1:] != self.feature_shape and shape[1:] != (self.feature_count,))
        ):
            raise OIPError(
                f"input {tensor.name!r}: shape {list(shape)} does not fit the model's "
                f"[-1, {', '.join(map(str, self.feature_shape))}] (N >= 1 records)"
            )
        return tensor.array.reshape(shape[0], self.feature_count)

    def check_outputs(self, request: InferenceRequest) -> None:
        if request.outputs is not None:
            for name in request.outputs:
                if name not in self.output_names and not (
                    name == OUTPUT_LABEL_NAME and self.label_names is not None
                ):
                    raise OIPError(
                        f"unknown output {name!r}; model {self.name!r} has "
                        f"{', '.join(self.output_names)}"
                    )

    def outputs(
        self, request: InferenceRequest, probabilities: np.ndarray, labels: np.ndarray
    ) -> list[OutputTensor]:
        wanted = request.outputs
        result = []
        if wanted is None or OUTPUT_PROBABILITIES in wanted:
            result.append(OutputTensor(OUTPUT_PROBABILITIES, "FP32", probabilities))
        if wanted is None or OUTPUT_LABEL in wanted:
            result.append(OutputTensor(OUTPUT_LABEL, "INT64", labels))
        if self.label_names is not None:
            for name in (OUTPUT_CLASSES, OUTPUT_LABEL_NAME):
                if (wanted is None and name == OUTPUT_CLASSES) or (wanted and name in wanted):
                    result.append(OutputTensor(name, "BYTES", self.label_names[labels]))
        return result

    # ------------------------------------------------------------------ forward

    def forward(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows ``[n, F]`` -> (probabilities float32 ``[n, C]``, labels int64 ``[n]``)."""
        n = rows.shape[0]
        if self.network is None:
            p, y = self._noop
            return (p if n == 1 else np.repeat(p, n, axis=0)), (y if n == 1 else np.repeat(y, n))
        x = self.preprocess(rows, in_place=rows.flags.writeable)  # a request owns its rows
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            if self.device.type != "cpu":
                xt = xt.to(self.device, non_blocking=True)
            probs = torch.softmax(self.network(xt), dim=1)
            labels = probs.argmax(dim=1)
            if self.device.type != "cpu":
                probs, labels = probs.cpu(), labels.cpu()
            return probs.numpy(), labels.numpy()


def load_model(
    name: str,
    version: int,
    weights: bytes,
    card: bytes | ModelCard,
    *,
    variant: str = "fp32",
    device: str = "cpu",
    noop: bool = False,
) -> LoadedModel:
    """Rebuild a network from its card + safetensors weights (never pickle) and warm it up."""
    if not isinstance(card, ModelCard):
        card = ModelCard.model_validate_json(card)
    dev = resolve_device(device)
    network: torch.nn.Module | None = None
    if not noop:
        network = build_model(card.spec, card.input.shape[1:], card.num_classes)
        network.load_state_dict(load_safetensors(weights), strict=True)
        network.eval()
        if variant == "int8":
            if dev.type != "cpu":
                raise ValueError("the int8 variant runs on the CPU only")
            network = quantize_int8(network)
        network = network.to(dev)
    model = LoadedModel(
        name=name,
        version=version,
        card=card,
        network=network,
        preprocess=Preprocessor(card.preprocessing),
        variant=variant,
        device=dev,
    )
    if model.preprocess.feature_count != model.feature_count:
        raise ValueError(
            f"card input shape {card.input.shape} and preprocessing input_shape "
            f"{card.preprocessing.input_shape} disagree"
        )
    model.forward(np.zeros((1, model.feature_count), dtype=np.float32))  # warm-up
    return model
