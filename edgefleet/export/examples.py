"""Example inputs: `--example-input N,3,224,224:float32` specs and the tensors made from them.

A named dimension is dynamic. Every export runs on several examples that differ in values and
in the size of every dynamic dimension, so a trace that baked in one size or one path through
data-dependent control flow shows up as a mismatch against eager. A dynamic dimension the
model constrains (image sides that must be multiples of 32) takes its sizes explicitly:
`N,3,H=224/320,W=224/320` (one size per example; the first is the traced one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.export.errors import InvalidRequest

if TYPE_CHECKING:
    import torch

SUPPORTED_DTYPES = (
    "float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip
# Sizes of the first dynamic dimension, one per example. The first example is the one traced
# and exported; the second (other values, other sizes) is the specialisation check; all three
# are verified. 1 covers the edge case of a single item or a one-step sequence. Later names get
# other sizes (see `dynamic_sizes`) so an output dimension can be matched to the input one.
DYNAMIC_SIZES = (2, 5, 1)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZES = re.compile(r"\d+(/\d+){0,2}")


@dataclass(frozen=True)
class InputSpec:
    # A fixed size, or the name of a dynamic dimension.
    dims: tuple[int | str, ...]
    dtype: str
    # Explicit per-example sizes of some dynamic dimensions (`H=224/320`).
    sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def dynamic_names(self) -> tuple[str, ...]:
        return tuple(dim for dim in self.dims if isinstance(dim, str))

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dim if isinstance(dim, int) else sizes[dim] for dim in self.dims)


def parse_input_spec(text: str) -> InputSpec:
    """`N,3,224,224` or `N,L,16:int64`: sizes and dimension names, then an optional dtype."""
    shape_text, _, dtype = text.strip().partition(":")
    dtype = dtype.strip() or "float32"
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidRequest(
            f"example input {text!r}: dtype {dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}"
        )
    dims: list[int | str] = []
    sizes: dict[str, tuple[int, ...]] = {}
    for part in (piece.strip() for piece in shape_text.split(",")):
        name, has_sizes, size_text = part.partition("=")
        if part.isdigit() and int(part) > 0:
            dims.append(int(part))
        elif _NAME.fullmatch(name) and not has_sizes:
            dims.append(name)
        elif _NAME.fullmatch(name) and _SIZES.fullmatch(size_text):
            given = tuple(int(size) for size in size_text.split("/"))
            if min(given) < 1 or (len(given) > 1 and given[1] == given[0]):
                raise InvalidRequest(
                    f"example input {text!r}: sizes of {name} must be > 0, and the second must "
                    "differ from the first so the trace is checked at another size"
                )
            dims.append(name)
            sizes[name] = given
        else:
            raise InvalidRequest(
                f"example input {text!r}: dimension {part!r} must be a size > 0, a name such "
                "as N (dynamic), or a name with sizes per example such as H=224/320"
            )
    return InputSpec(dims=tuple(dims), dtype=dtype, sizes=sizes)


def dynamic_sizes(specs: Sequence[InputSpec], example_index: int) -> dict[str, int]:
    """The size of every dynamic dimension in one example; a name means the same size everywhere.

    The k-th name gets 2+k, 5+2k, 1+k: distinct per name, different in every example. Explicit
    sizes win; where fewer than three are given, the second example doubles the first (keeping
    any divisibility the model needs) and the third repeats it."""
    names = list(dict.fromkeys(name for spec in specs for name in spec.dynamic_names()))
    explicit = {name: given for spec in specs for name, given in spec.sizes.items()}
    steps = (1, 2, 1)
    result = {}
    for rank, name in enumerate(names):
        given = explicit.get(name)
        if given is None:
            result[name] = DYNAMIC_SIZES[example_index] + steps[example_index] * rank
        elif example_index < len(given):
            result[name] = given[example_index]
        else:
            result[name] = given[0] * 2 if example_index == 1 else given[0]
    return result


def example_count(specs: Sequence[InputSpec]) -> int:
    """Two examples (other values) for static inputs; one per DYNAMIC_SIZES entry otherwise."""
    has_dynamic = any(spec.dynamic_names() for spec in specs)
    return len(DYNAMIC_SIZES) if has_dynamic else 2


def make_tensor(
    spec: InputSpec, sizes: Mapping[str, int], generator: torch.Generator
) -> torch.Tensor:
    import torch

    shape = spec.concrete_shape(sizes)
    dtype = getattr(torch, spec.dtype)
    if spec.dtype == "bool":
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    # Small non-negative integers are valid indices for embeddings and lookup tables.
    return torch.randint(0, 10, shape, generator=generator).to(dtype)


def make_examples(specs: Sequence[InputSpec], seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """One tuple of input tensors per example, each with its own values and dynamic sizes."""
    import torch

    examples = []
    for index in range(example_count(specs)):
        generator = torch.Generator().manual_seed(seed + index)
        sizes = dynamic_sizes(specs, index)
        examples.append(tuple(make_tensor(spec, sizes, generator) for spec in specs))
    return examples


def batch_inputs(
    specs: Sequence[InputSpec], batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Inputs for a benchmark: the first dimension of the first input is the batch."""
    batch_dim = specs[0].dims[0]
    sizes = dynamic_sizes(specs, 0)
    if isinstance(batch_dim, str):
        sizes[batch_dim] = batch
    return tuple(make_tensor(spec, sizes, generator) for spec in specs)
