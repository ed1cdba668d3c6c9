"""Fossil delta compression of publications, for ``delta: "fossil"`` subscriptions.

A subscriber that negotiated delta compression gets each publication either in
full (``delta: false``) or as a Fossil patch (``delta: true``) against the one
it got before. The patches come from Fossil's own ``delta.c`` (the
``python-fossil-delta`` package); the SDKs apply them.

How the payload travels depends on the codec:

=========  ======================================  ==============================
codec      full                                    patch
=========  ======================================  ==============================
JSON       the JSON text as a JSON *string*        the patch as a JSON string
Protobuf   the raw bytes                           the raw patch bytes
=========  ======================================  ==============================

A JSON client reads a string's characters back as UTF-8 bytes, so a patch that
is not valid UTF-8 (Fossil cuts at byte boundaries, possibly inside a
multi-byte character) is not sent: the publication goes in full instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import fossil_delta  # type: ignore[import-untyped]
import msgspec
from msgspec import Raw

from .codecs import Codec
from .wire import Publication

__all__ = ["DELTA_TYPES", "FOSSIL", "create_patch", "delta_chain", "delta_payload"]

FOSSIL: Final = "fossil"
DELTA_TYPES: Final = frozenset({FOSSIL})
"""The delta types a subscribe may ask for; another one is a bad request (3501)."""


def create_patch(base: bytes, target: bytes) -> bytes | None:
    """A Fossil delta that turns ``base`` into ``target``; None when it is not
    smaller than ``target`` (the full payload is sent then)."""
    patch: bytes = fossil_delta.create_delta(base, target)
    return patch if len(patch) < len(target) else None


def delta_payload(codec: Codec, data: bytes) -> Raw | None:
    """``data`` (a full payload or a patch) as a delta subscriber of ``codec`` reads
    it; None when a JSON client cannot (bytes that are not UTF-8)."""
    if codec.binary:
        return Raw(data)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return Raw(msgspec.json.encode(text))


def delta_chain(codec: Codec, publications: Sequence[Publication]) -> list[Publication] | None:
    """Recovered publications for a delta subscriber: the first in full, each next
    one as a patch against the one before it (in full where a patch does not pay).

    None when one cannot be written for ``codec`` at all (non-UTF-8 for JSON)."""
    chain: list[Publication] = []
    base: bytes | None = None
    for publication in publications:
        data = bytes(publication.data)
        patch = create_patch(base, data) if base is not None else None
        payload = delta_payload(codec, patch) if patch is not None else None
        if payload is None:
            payload = delta_payload(codec, data)
            if payload is None:
                return None
            chain.append(msgspec.structs.replace(publication, data=payload))
        else:
            chain.append(msgspec.structs.replace(publication, data=payload, delta=True))
        base = data
    return chain
