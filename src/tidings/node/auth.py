"""Connection and subscription tokens (JWT), verified with PyJWT.

Keys by algorithm family: HS* use ``token_hmac_secret_key``, RS* the RSA public
key, ES* the ECDSA public key. A token is only checked with the key of its own
family, and ``alg: none`` is never accepted, which rules out algorithm confusion
(an HS256 token "signed" with the RSA public key finds no HMAC key to match).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgspec

from ..options import Config
from ..protocol.wire import NO_DATA, optional_raw

__all__ = [
    "ConnectToken",
    "InvalidToken",
    "SubscribeToken",
    "TokenExpired",
    "TokenVerifier",
    "make_token",
]

_FAMILIES = {
    "HS": ("HS256", "HS384", "HS512"),
    "RS": ("RS256", "RS384", "RS512"),
    "ES": ("ES256", "ES384", "ES512"),
}


class InvalidToken(Exception):
    """The token is malformed, forged, or not for this hub (disconnect 3500)."""


class TokenExpired(Exception):
    """The token is genuine but expired or not valid yet (error 109)."""


@dataclass(frozen=True, slots=True)
class ConnectToken:
    user: str
    expire_at: int = 0
    """Unix time when the connection expires; 0 for never."""
    info: msgspec.Raw = field(default_factory=lambda: NO_DATA)
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscribeToken:
    user: str
    channel: str
    expire_at: int = 0
    info: msgspec.Raw = field(default_factory=lambda: NO_DATA)
    client: str = ""


@dataclass(slots=True)
class TokenVerifier:
    """Verifies tokens with the keys and checks of a :class:`Config`."""

    keys: dict[str, Any] = field(default_factory=dict)
    audience: str = ""
    issuer: str = ""

    @classmethod
    def from_config(cls, config: Config) -> TokenVerifier:
        keys: dict[str, Any] = {}
        if config.token_hmac_secret_key:
            keys["HS"] = config.token_hmac_secret_key
        if config.token_rsa_public_key:
            keys["RS"] = config.token_rsa_public_key
        if config.token_ecdsa_public_key:
            keys["ES"] = config.token_ecdsa_public_key
        return cls(keys, config.token_audience, config.token_issuer)

    def verify_connect(self, token: str) -> ConnectToken:
        claims = self._decode(token)
        if "channel" in claims:
            raise InvalidToken("a connection token has no channel claim")
        channels = claims.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise InvalidToken("channels must be a list of strings")
        return ConnectToken(
            user=_user(claims),
            expire_at=_expire_at(claims),
            info=optional_raw(claims.get("info")),
            channels=tuple(channels),
        )

    def verify_subscribe(self, token: str) -> SubscribeToken:
        claims = self._decode(token)
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise InvalidToken("a subscription token needs a channel claim")
        client = claims.get("client", "")
        return SubscribeToken(
            user=_user(claims),
            channel=channel,
            expire_at=_expire_at(claims),
            info=optional_raw(claims.get("info")),
            client=client if isinstance(client, str) else "",
        )

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg", "")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        family = str(algorithm)[:2]
        key = self.keys.get(family) if algorithm in _FAMILIES.get(family, ()) else None
        if key is None:
            raise InvalidToken(f"no key configured for algorithm {algorithm!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience or None,
                issuer=self.issuer or None,
                options={"verify_aud": bool(self.audience), "require": ["sub"]},
                leeway=0,
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise TokenExpired(str(exc)) from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(str(exc)) from None
        return claims


def _user(claims: dict[str, Any]) -> str:
    user = claims.get("sub", "")
    if not isinstance(user, str):
        raise InvalidToken("sub must be a string")
    return user


def _expire_at(claims: dict[str, Any]) -> int:
    value = claims.get("expire_at", claims.get("exp", 0))
    if not isinstance(value, int | float):
        raise InvalidToken("exp must be a number")
    return int(value)


def make_token(
    secret: str,
    user: str,
    *,
    ttl: float | None = None,
    channel: str = "",
    channels: list[str] | None = None,
    info: Any = None,
    algorithm: str = "HS256",
) -> str:
    """Sign a connection token, or a subscription token when ``channel`` is given."""
    claims: dict[str, Any] = {"sub": user}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    if channel:
        claims["channel"] = channel
    if channels:
        claims["channels"] = channels
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm=algorithm)
