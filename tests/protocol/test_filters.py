"""Tags filters: validation (error 107 for the client) and matching, as centrifuge's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidings.protocol.filters import FilterError, parse_filter


def matches(tf: dict[str, Any], tags: dict[str, str]) -> bool:
    check, _ = parse_filter(json.dumps(tf).encode())
    return check(tags)


@pytest.mark.parametrize(
    ("leaf", "tags", "expected"),
    [
        ({"cmp": "eq", "val": "AAPL"}, {"t": "AAPL"}, True),
        ({"cmp": "eq", "val": "AAPL"}, {}, False),
        ({"cmp": "neq", "val": "AAPL"}, {}, True),
        ({"cmp": "neq", "val": "AAPL"}, {"t": "AAPL"}, False),
        ({"cmp": "in", "vals": ["a", "b"]}, {"t": "b"}, True),
        ({"cmp": "in", "vals": ["a", ""]}, {}, True),  # absent is "", listed
        ({"cmp": "in", "vals": ["a"]}, {}, False),
        ({"cmp": "nin", "vals": ["a"]}, {"t": "b"}, True),
        ({"cmp": "nin", "vals": ["a"]}, {"t": "a"}, False),
        ({"cmp": "ex"}, {"t": ""}, True),
        ({"cmp": "nex"}, {"t": ""}, False),
        ({"cmp": "sw", "val": "AA"}, {"t": "AAPL"}, True),
        ({"cmp": "ew", "val": "PL"}, {"t": "AAPL"}, True),
        ({"cmp": "ct", "val": "AP"}, {"t": "AAPL"}, True),
        ({"cmp": "ct", "val": "AP"}, {}, False),
        ({"cmp": "gt", "val": "100"}, {"t": "100.5"}, True),
        ({"cmp": "gte", "val": "100"}, {"t": "100"}, True),
        ({"cmp": "lt", "val": "100"}, {"t": "99.99"}, True),
        ({"cmp": "lte", "val": "100.00"}, {"t": "100"}, True),
        ({"cmp": "lte", "val": "1e2"}, {"t": "100"}, False),  # no exponent, as udecimal
        ({"cmp": "gt", "val": "100"}, {"t": " 500 "}, False),
        ({"cmp": "gt", "val": "100"}, {"t": "1_000"}, False),
        ({"cmp": "gt", "val": "0"}, {"t": ".5"}, False),
        ({"cmp": "gt", "val": "-1"}, {"t": "-0.5"}, True),
        ({"cmp": "gt", "val": "100"}, {"t": "abc"}, False),  # not a number: false
        ({"cmp": "gt", "val": "100"}, {"t": "NaN"}, False),
        ({"cmp": "lt", "val": "100"}, {}, False),  # absent: false
    ],
)
def test_each_comparison_matches_as_centrifuge_does(
    leaf: dict[str, Any], tags: dict[str, str], expected: bool
) -> None:
    assert matches({"key": "t", **leaf}, tags) is expected


def test_and_or_not_combine_their_nodes() -> None:
    apple = {"key": "ticker", "cmp": "eq", "val": "AAPL"}
    dear = {"key": "price", "cmp": "gte", "val": "100"}
    both = {"op": "and", "nodes": [apple, dear]}
    assert matches(both, {"ticker": "AAPL", "price": "120"})
    assert not matches(both, {"ticker": "AAPL", "price": "80"})
    assert matches({"op": "or", "nodes": [apple, dear]}, {"ticker": "MSFT", "price": "120"})
    assert matches({"op": "not", "nodes": [apple]}, {"ticker": "MSFT"})


@pytest.mark.parametrize(
    ("tf", "message"),
    [
        ({"key": "t"}, "tf: a leaf needs cmp"),
        ({"key": "t", "cmp": "eq"}, "tf: eq takes val, not vals"),
        ({"key": "t", "cmp": "eq", "val": "a", "vals": ["b"]}, "tf: eq takes val, not vals"),
        ({"key": "t", "cmp": "in", "val": "a"}, "tf: in takes a non-empty vals, not val"),
        ({"key": "t", "cmp": "ex", "val": "a"}, "tf: ex takes neither val nor vals"),
        ({"key": "t", "cmp": "like", "val": "a"}, "tf: unknown cmp 'like'"),
        ({"cmp": "eq", "val": "a"}, "tf: a leaf needs key"),
        ({"op": "and", "nodes": []}, "tf: and needs at least one node"),
        ({"op": "not", "nodes": []}, "tf: not needs exactly one node"),
        ({"op": "xor", "nodes": []}, "tf: unknown op 'xor'"),
        (
            {"op": "or", "nodes": [{"key": "t", "cmp": "eq", "val": "a"}, {"key": "t"}]},
            "tf.nodes[1]: a leaf needs cmp",
        ),
    ],
)
def test_an_invalid_filter_says_what_is_wrong(tf: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError) as error:
        parse_filter(json.dumps(tf).encode())
    assert str(error.value) == message


def test_not_a_filter_is_an_error_and_equal_filters_have_one_key() -> None:
    with pytest.raises(FilterError, match="^tf: "):
        parse_filter(b'{"op": 3}')
    _, one = parse_filter(b'{"key":"t","cmp":"eq","val":"a"}')
    _, other = parse_filter(b'{"val":"a", "cmp":"eq", "key":"t"}')
    assert one == other
