"""Example-input specs: parsing and the sizes the specialisation check depends on."""

from __future__ import annotations

import pytest

from edgefleet.export.errors import InvalidRequest
from edgefleet.export.examples import dynamic_sizes, make_examples, parse_input_spec


def test_spec_with_named_dims_and_dtype() -> None:
    spec = parse_input_spec("N, L ,16:int64")
    assert spec.dims == ("N", "L", 16)
    assert spec.dtype == "int64"
    assert parse_input_spec("N,3,224,224").dtype == "float32"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("N,3,-1", "dimension '-1'"), ("N,3,224:complex", "dtype 'complex'"), ("N,,3", "''")],
)
def test_bad_spec_is_named(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        parse_input_spec(text)


def test_every_dynamic_dim_changes_between_examples_and_names_differ() -> None:
    specs = [parse_input_spec("N,L,4"), parse_input_spec("N,8")]
    sizes = [dynamic_sizes(specs, index) for index in range(3)]
    # The second example (the specialisation check) differs from the traced one in every name.
    assert all(sizes[1][name] != sizes[0][name] for name in ("N", "L"))
    # Two names never share the same sizes, so an output dim can be traced back to one.
    assert [s["N"] for s in sizes] != [s["L"] for s in sizes]
    examples = make_examples(specs)
    assert [tuple(example[0].shape) for example in examples] == [(s["N"], s["L"], 4) for s in sizes]
    assert examples[0][1].shape[0] == examples[0][0].shape[0]  # a shared name, one size
    assert not examples[0][0].equal(examples[1][0][: sizes[0]["N"], : sizes[0]["L"]])


def test_explicit_sizes_per_example() -> None:
    spec = parse_input_spec("N,3,H=224/320,W=224")
    assert spec.dims == ("N", 3, "H", "W")
    sizes = [dynamic_sizes([spec], index) for index in range(3)]
    assert [s["H"] for s in sizes] == [224, 320, 224]
    # One size given: the check doubles it (keeping divisibility), the third repeats it.
    assert [s["W"] for s in sizes] == [224, 448, 224]
    assert [s["N"] for s in sizes] == [2, 5, 1]


@pytest.mark.parametrize("text", ["N,H=224/224", "N,H=0", "N,H=224/x", "N,H=1/2/3/4"])
def test_bad_explicit_sizes(text: str) -> None:
    with pytest.raises(InvalidRequest, match="H="):
        parse_input_spec(text)
