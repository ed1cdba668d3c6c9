"""The two ends of the bridge between Django and tidings.

1. Authentication goes from Django to the browser to tidings: Django, which knows
   who is logged in, signs a short-lived connection token (a JWT with the secret
   tidings also knows); the browser fetches it and presents it when it connects.
   tidings checks the signature and never needs to call Django back.
2. Events go from Django to tidings to the browsers: Django publishes through
   tidings' server HTTP API with the ``cent`` library, and tidings fans the
   publication out to every subscriber, keeping history for recovery.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from cent import Client, PublishRequest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def connection_token(username: str) -> str:
    """A tidings connection JWT for ``username``, valid ``CHAT_HUB_TOKEN_TTL`` seconds."""
    secret = settings.CHAT_HUB_TOKEN_SECRET
    if not secret:
        raise ImproperlyConfigured("set CHAT_HUB_TOKEN_SECRET (tidings' token_hmac_secret_key)")
    claims: dict[str, Any] = {
        "sub": username,
        "exp": int(time.time()) + settings.CHAT_HUB_TOKEN_TTL,
        "info": {"name": username},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def publish_message(username: str, text: str) -> int:
    """Publish a chat message to the lobby; return its offset in the channel's history.

    The server API has no ``info`` for publications (only client publications
    carry one), so the author is also given as a tag, which subscribers receive
    with the publication.

    Raises:
        cent.CentError: tidings is unreachable or refused the publication.
    """
    request = PublishRequest(
        channel=settings.CHAT_HUB_CHANNEL,
        data={"user": username, "text": text},
        tags={"user": username},
    )
    with Client(settings.CHAT_HUB_API_URL, settings.CHAT_HUB_API_KEY, timeout=5.0) as client:
        result = client.publish(request)
    return result.offset
