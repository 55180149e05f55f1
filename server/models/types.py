"""Transport-neutral inference requests and responses (the KServe v2 data plane, in numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Named tensors: a model's inputs or outputs, by tensor name.
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    # > 0: return the top-N classes as "score:index:label" strings (Triton's classification).
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    inputs: Arrays
    # Empty: the active version.
    model_version: str = ""
    id: str = ""
    # Empty: every output of the model.
    outputs: tuple[RequestedOutput, ...] = ()


@dataclass(frozen=True)
class OutputTensor:
    name: str
    # Numeric array, or an object array of bytes for classification results (KServe BYTES).
    array: np.ndarray

    @property
    def is_bytes(self) -> bool:
        return self.array.dtype == np.dtype(object)


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor] = field(default_factory=list)
