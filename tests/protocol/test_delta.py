"""Tests for tidings.protocol.delta: Fossil patches, as the SDKs' own decoders read them."""

from __future__ import annotations

import json

import msgspec
from centrifuge.fossil import apply_delta
from hypothesis import given, strategies as st
from msgspec import Raw

from tidings import Publication
from tidings.protocol.codecs import JSON, PROTOBUF
from tidings.protocol.delta import create_patch, delta_chain, delta_payload

DOCUMENT = json.dumps({"title": "score", "home": 1, "away": 0, "notes": "x" * 500}).encode()


def test_a_patch_applies_to_its_base_and_is_small() -> None:
    target = DOCUMENT.replace(b'"home": 1', b'"home": 2')
    patch = create_patch(DOCUMENT, target)
    assert patch is not None and len(patch) < 40
    assert apply_delta(DOCUMENT, patch) == target


def test_no_patch_when_it_would_not_be_smaller() -> None:
    assert create_patch(b'{"a":1}', b'{"zz":[]}') is None


@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_every_patch_is_one_the_sdk_decoder_applies(base: bytes, target: bytes) -> None:
    patch = create_patch(base, base[: len(base) // 2] + target)
    if patch is not None:
        assert apply_delta(base, patch) == base[: len(base) // 2] + target


def test_json_carries_payloads_as_strings_and_protobuf_as_bytes() -> None:
    payload = delta_payload(JSON, b'{"a":"\xc3\xa9"}')
    assert payload is not None and json.loads(bytes(payload)) == '{"a":"é"}'
    assert delta_payload(PROTOBUF, b"\xff\x00") == Raw(b"\xff\x00")
    assert delta_payload(JSON, b"\xa9 half a character") is None


def test_a_chain_starts_full_and_patches_each_publication_against_the_one_before() -> None:
    documents = [DOCUMENT.replace(b'"away": 0', b'"away": %d' % n) for n in range(3)]
    publications = [Publication(data=Raw(d), offset=n + 1) for n, d in enumerate(documents)]
    chain = delta_chain(PROTOBUF, publications)
    assert chain is not None
    assert [(p.offset, p.delta) for p in chain] == [(1, False), (2, True), (3, True)]
    base = b""
    for publication, document in zip(chain, documents, strict=True):
        data = bytes(publication.data)
        base = apply_delta(base, data) if publication.delta else data
        assert base == document
    json_chain = delta_chain(JSON, publications)
    assert json_chain is not None
    assert msgspec.json.decode(bytes(json_chain[0].data)) == documents[0].decode()


def test_a_chain_cannot_carry_bytes_that_are_not_utf8_to_json() -> None:
    assert delta_chain(JSON, [Publication(data=Raw(b"\xff"), offset=1)]) is None
