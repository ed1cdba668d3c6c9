"""The messages brokers carry on a channel's pub/sub subject, and their decoding.

One text format for every broker, so that a node reads Redis and NATS alike:

* ``p<offset>:<epoch> <excluded client> <publication JSON>``: a publication (offset
  0 and no epoch without history); the publication's own offset field is not sent.
* ``d<offset>:<epoch> <excluded client> <length> <previous JSON><publication JSON>``:
  the same, with the publication before it in the stream (delta compression).
* ``j <client info JSON>``, ``l <client info JSON>``: a join, a leave.

The Redis broker's Lua script writes the first two itself (``PUBLISH_SCRIPT``).
"""

from __future__ import annotations

import logging

import msgspec

from ..protocol.wire import ClientInfo, Publication
from .base import BrokerEventHandler

__all__ = ["decode_message", "encode_publication", "publication_payload"]

logger = logging.getLogger("tidings.brokers")

_publication_decoder = msgspec.json.Decoder(Publication)
_info_decoder = msgspec.json.Decoder(ClientInfo)
_encode = msgspec.json.encode


def publication_payload(publication: Publication) -> bytes:
    """The publication as stored and sent (its offset travels in the message head)."""
    return _encode(msgspec.structs.replace(publication, offset=0))


def encode_publication(
    offset: int,
    epoch: str,
    exclude_client: str,
    publication: Publication | bytes,
    previous: bytes | None = None,
) -> bytes:
    """A ``p`` message, or a ``d`` one with the ``previous`` publication's payload."""
    payload = publication if isinstance(publication, bytes) else publication_payload(publication)
    head = f"{offset}:{epoch} {exclude_client} ".encode()
    if previous is None:
        return b"p" + head + payload
    return b"d" + head + str(len(previous)).encode() + b" " + previous + payload


def decode_message(handler: BrokerEventHandler, channel: str, data: bytes) -> None:
    """Hand the message ``data`` of ``channel`` to ``handler``; log what is undecodable.

    Other kinds (a broker's own, such as NATS's position markers) are ignored."""
    kind = data[:1]
    try:
        if kind == b"p" or kind == b"d":
            head, exclude, payload = data[1:].split(b" ", 2)
            previous = None
            position, _, epoch = head.partition(b":")
            offset = int(position)
            if kind == b"d":
                size, payload = payload.split(b" ", 1)
                split = int(size)
                previous = _publication_decoder.decode(payload[:split])
                previous = msgspec.structs.replace(previous, offset=offset - 1)
                payload = payload[split:]
            publication = _publication_decoder.decode(payload)
            if offset:
                publication = msgspec.structs.replace(publication, offset=offset)
            handler.handle_publication(
                channel, publication, exclude.decode(), previous, epoch.decode()
            )
        elif kind == b"j":
            handler.handle_join(channel, _info_decoder.decode(data[2:]))
        elif kind == b"l":
            handler.handle_leave(channel, _info_decoder.decode(data[2:]))
    except (ValueError, msgspec.DecodeError):
        logger.error("undecodable message on %r: %r", channel, data[:100])
