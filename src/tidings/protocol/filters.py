"""Tags filters: which publications a subscription gets, by the publications' tags.

A subscribe command may carry ``tf``, a tree of :class:`~.wire.FilterNode`: leaves
compare one tag with a value (``cmp``), ``and``/``or``/``not`` nodes combine them.
The rules (what is valid, what matches) are centrifuge's (``internal/filter``), so a
filter means the same here as in Centrifugo. Pure functions, no I/O.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Mapping

import msgspec

from .wire import FilterNode

__all__ = ["FilterError", "TagsFilter", "parse_filter"]

TagsFilter = Callable[[Mapping[str, str] | None], bool]
"""A compiled filter: does a publication with these tags (None: none) pass?"""

_NO_TAGS: Mapping[str, str] = {}

_WITH_VAL = frozenset({"eq", "neq", "sw", "ew", "ct", "lt", "lte", "gt", "gte"})
_WITH_VALS = frozenset({"in", "nin"})
_WITH_NEITHER = frozenset({"ex", "nex"})


class FilterError(ValueError):
    """The filter is not valid (error 107 for the client); the message says why."""


def parse_filter(raw: bytes) -> tuple[TagsFilter, bytes]:
    """The filter ``raw`` (JSON, as ``subscribe.tf`` carries it), compiled, and a key
    that is the same for the same filter (to evaluate each distinct one once).

    Raises:
        FilterError: not a filter, or not a valid one.
    """
    try:
        node = msgspec.json.decode(raw, type=FilterNode)
    except msgspec.DecodeError as exc:
        raise FilterError(f"tf: {exc}") from None
    _validate(node, "tf")
    return (lambda tags: _match(node, tags or _NO_TAGS)), msgspec.json.encode(node)


def _validate(node: FilterNode, where: str) -> None:
    if node.op == "":
        if not node.cmp:
            raise FilterError(f"{where}: a leaf needs cmp")
        if node.cmp in _WITH_VAL:
            if not node.val or node.vals:
                raise FilterError(f"{where}: {node.cmp} takes val, not vals")
        elif node.cmp in _WITH_VALS:
            if not node.vals or node.val:
                raise FilterError(f"{where}: {node.cmp} takes a non-empty vals, not val")
        elif node.cmp in _WITH_NEITHER:
            if node.val or node.vals:
                raise FilterError(f"{where}: {node.cmp} takes neither val nor vals")
        else:
            raise FilterError(f"{where}: unknown cmp {node.cmp!r}")
        if not node.key and node.cmp not in _WITH_NEITHER:
            raise FilterError(f"{where}: a leaf needs key")
    elif node.op in ("and", "or"):
        if not node.nodes:
            raise FilterError(f"{where}: {node.op} needs at least one node")
        for index, child in enumerate(node.nodes):
            _validate(child, f"{where}.nodes[{index}]")
    elif node.op == "not":
        if len(node.nodes) != 1:
            raise FilterError(f"{where}: not needs exactly one node")
        _validate(node.nodes[0], f"{where}.nodes[0]")
    else:
        raise FilterError(f"{where}: unknown op {node.op!r}")


def _match(node: FilterNode, tags: Mapping[str, str]) -> bool:
    if node.op == "and":
        return all(_match(child, tags) for child in node.nodes)
    if node.op == "or":
        return any(_match(child, tags) for child in node.nodes)
    if node.op == "not":
        return not _match(node.nodes[0], tags)
    value = tags.get(node.key)
    present = value is not None
    text = value or ""
    cmp = node.cmp
    if cmp == "eq":
        return present and text == node.val
    if cmp == "neq":
        return not present or text != node.val
    if cmp == "in":
        return text in node.vals  # an absent tag is "": it matches when "" is listed
    if cmp == "nin":
        return text not in node.vals
    if cmp == "ex":
        return present
    if cmp == "nex":
        return not present
    if cmp == "sw":
        return present and text.startswith(node.val)
    if cmp == "ew":
        return present and text.endswith(node.val)
    if cmp == "ct":
        return present and node.val in text
    return present and _compare(cmp, text, node.val)


_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]{1,19})?")
"""What centrifuge's decimals (udecimal) read: no exponent, no spaces, no ``_``."""


def _compare(cmp: str, text: str, val: str) -> bool:
    """Decimal comparison; false when either side is not a decimal number."""
    if not (_DECIMAL.fullmatch(text) and _DECIMAL.fullmatch(val)):
        return False
    left, right = decimal.Decimal(text), decimal.Decimal(val)
    if cmp == "gt":
        return left > right
    if cmp == "gte":
        return left >= right
    if cmp == "lt":
        return left < right
    return left <= right  # lte
