"""Tests for tidings.node.auth: connection and subscription JWTs, keys by algorithm family."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings import load_config, make_token
from tidings.node.auth import (
    ConnectToken,
    InvalidToken,
    SubscribeToken,
    TokenExpired,
    TokenVerifier,
)
from tidings.protocol.wire import NO_DATA

# 64 bytes: long enough for HS512, so PyJWT emits no InsecureKeyLengthWarning.
SECRET = "0123456789abcdef" * 4
OTHER_SECRET = "fedcba9876543210" * 4


@dataclass(frozen=True)
class KeyPair:
    private: Any
    private_pem: str
    public_pem: str


def key_pair(private: Any) -> KeyPair:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, private_pem, public_pem)


@pytest.fixture(scope="module")
def rsa_keys() -> KeyPair:
    return key_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def other_rsa_keys() -> KeyPair:
    return key_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, KeyPair]:
    """One EC key per ES algorithm: ES256 on P-256, ES384 on P-384, ES512 on P-521."""
    return {
        "ES256": key_pair(ec.generate_private_key(ec.SECP256R1())),
        "ES384": key_pair(ec.generate_private_key(ec.SECP384R1())),
        "ES512": key_pair(ec.generate_private_key(ec.SECP521R1())),
    }


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier({"HS": SECRET})


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", **kw: Any) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, **kw)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """Sign an HS256 token by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(claims: dict[str, Any], alg: str) -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    return f"{header}.{payload}."


def decoded(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(bytes(raw))


# -- connection tokens ----------------------------------------------------------------------------


def test_a_connection_token_signed_with_the_hmac_secret_is_accepted(
    verifier: TokenVerifier,
) -> None:
    token = verifier.verify_connect(make_token(SECRET, "42"))
    assert token == ConnectToken(user="42")
    assert token.expire_at == 0
    assert token.info is NO_DATA
    assert token.channels == ()


def test_a_token_with_a_ttl_carries_its_expiry_time(verifier: TokenVerifier) -> None:
    before = int(time.time())
    token = verifier.verify_connect(make_token(SECRET, "42", ttl=3600))
    assert before + 3600 <= token.expire_at <= int(time.time()) + 3600


def test_the_info_claim_is_kept_as_raw_json(verifier: TokenVerifier) -> None:
    info = {"name": "Ann", "roles": ["admin"], "n": 1.5}
    token = verifier.verify_connect(make_token(SECRET, "42", info=info))
    assert isinstance(token.info, msgspec.Raw)
    assert decoded(token.info) == info


def test_falsy_info_values_are_kept_but_null_means_no_info(verifier: TokenVerifier) -> None:
    assert decoded(verifier.verify_connect(make_token(SECRET, "u", info=0)).info) == 0
    assert decoded(verifier.verify_connect(make_token(SECRET, "u", info="")).info) == ""
    assert verifier.verify_connect(sign({"sub": "u", "info": None})).info is NO_DATA


def test_the_channels_claim_becomes_a_tuple_of_server_side_channels(
    verifier: TokenVerifier,
) -> None:
    token = verifier.verify_connect(make_token(SECRET, "42", channels=["news", "chat:lobby"]))
    assert token.channels == ("news", "chat:lobby")


def test_an_empty_channels_list_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify_connect(sign({"sub": "42", "channels": []})).channels == ()


def test_an_empty_subject_is_accepted_as_an_anonymous_user(verifier: TokenVerifier) -> None:
    assert verifier.verify_connect(sign({"sub": ""})).user == ""


def test_a_connection_token_without_a_subject_is_invalid(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="sub"):
        verifier.verify_connect(sign({"info": {}}))


@pytest.mark.parametrize("sub", [42, None, ["42"], {"id": 42}, True])
def test_a_subject_that_is_not_a_string_is_invalid(verifier: TokenVerifier, sub: Any) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": sub}))


def test_a_connection_token_with_a_channel_claim_is_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="channel"):
        verifier.verify_connect(make_token(SECRET, "42", channel="news"))


def test_a_connection_token_with_an_empty_channel_claim_is_refused_too(
    verifier: TokenVerifier,
) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": "42", "channel": ""}))


@pytest.mark.parametrize(
    "channels", ["news", ["news", 1], [None], [["news"]], {"news": True}, 5, [{"c": "x"}]]
)
def test_a_channels_claim_that_is_not_a_list_of_strings_is_refused(
    verifier: TokenVerifier, channels: Any
) -> None:
    with pytest.raises(InvalidToken, match="channels"):
        verifier.verify_connect(sign({"sub": "42", "channels": channels}))


def test_expire_at_takes_precedence_over_exp_for_the_connection_expiry(
    verifier: TokenVerifier,
) -> None:
    now = int(time.time())
    token = verifier.verify_connect(sign({"sub": "u", "exp": now + 3600, "expire_at": now + 60}))
    assert token.expire_at == now + 60


def test_expire_at_zero_means_the_connection_never_expires(verifier: TokenVerifier) -> None:
    token = verifier.verify_connect(
        sign({"sub": "u", "exp": int(time.time()) + 60, "expire_at": 0})
    )
    assert token.expire_at == 0


@pytest.mark.parametrize("expire_at", ["soon", None, [1], {"t": 1}])
def test_an_expire_at_that_is_not_a_number_is_refused(
    verifier: TokenVerifier, expire_at: Any
) -> None:
    with pytest.raises(InvalidToken, match="number"):
        verifier.verify_connect(sign({"sub": "u", "expire_at": expire_at}))


def test_an_exp_that_is_not_a_number_is_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": "u", "exp": "tomorrow"}))


# -- expiry ---------------------------------------------------------------------------------------


def test_an_expired_connection_token_raises_token_expired(verifier: TokenVerifier) -> None:
    with pytest.raises(TokenExpired):
        verifier.verify_connect(sign({"sub": "u", "exp": int(time.time()) - 10}))


def test_a_negative_ttl_makes_an_already_expired_token(verifier: TokenVerifier) -> None:
    with pytest.raises(TokenExpired):
        verifier.verify_connect(make_token(SECRET, "u", ttl=-10))


def test_a_connection_token_not_valid_yet_raises_token_expired(verifier: TokenVerifier) -> None:
    with pytest.raises(TokenExpired):
        verifier.verify_connect(sign({"sub": "u", "nbf": int(time.time()) + 3600}))


def test_a_token_whose_nbf_has_passed_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify_connect(sign({"sub": "u", "nbf": int(time.time()) - 10})).user == "u"


def test_an_expired_subscription_token_raises_token_expired(verifier: TokenVerifier) -> None:
    claims = {"sub": "u", "channel": "$news", "exp": int(time.time()) - 10}
    with pytest.raises(TokenExpired):
        verifier.verify_subscribe(sign(claims))


def test_token_expired_and_invalid_token_are_distinct_errors() -> None:
    assert not issubclass(TokenExpired, InvalidToken)
    assert not issubclass(InvalidToken, TokenExpired)


def test_an_expired_token_with_a_bad_signature_is_invalid_not_expired(
    verifier: TokenVerifier,
) -> None:
    forged = sign({"sub": "u", "exp": int(time.time()) - 10}, OTHER_SECRET)
    with pytest.raises(InvalidToken):
        verifier.verify_connect(forged)


# -- signatures and algorithm families ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_every_hs_algorithm_is_verified_with_the_hmac_secret(
    verifier: TokenVerifier, algorithm: str
) -> None:
    token = make_token(SECRET, "42", algorithm=algorithm)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert verifier.verify_connect(token).user == "42"


@pytest.mark.parametrize("algorithm", ["RS256", "RS384", "RS512"])
def test_every_rs_algorithm_is_verified_with_the_rsa_public_key(
    rsa_keys: KeyPair, algorithm: str
) -> None:
    verifier = TokenVerifier({"RS": rsa_keys.public_pem})
    token = make_token(rsa_keys.private_pem, "42", algorithm=algorithm, info={"a": 1})
    claims = verifier.verify_connect(token)
    assert claims.user == "42"
    assert decoded(claims.info) == {"a": 1}


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "ES512"])
def test_every_es_algorithm_is_verified_with_the_ecdsa_public_key(
    ec_keys: dict[str, KeyPair], algorithm: str
) -> None:
    keys = ec_keys[algorithm]
    verifier = TokenVerifier({"ES": keys.public_pem})
    token = make_token(keys.private_pem, "42", algorithm=algorithm, channels=["news"])
    assert verifier.verify_connect(token).channels == ("news",)


def test_a_verifier_from_config_uses_the_configured_keys_of_every_family(
    rsa_keys: KeyPair, ec_keys: dict[str, KeyPair]
) -> None:
    config = load_config(
        env={},
        overrides={
            "token_hmac_secret_key": SECRET,
            "token_rsa_public_key": rsa_keys.public_pem,
            "token_ecdsa_public_key": ec_keys["ES256"].public_pem,
        },
    )
    verifier = TokenVerifier.from_config(config)
    assert verifier.verify_connect(make_token(SECRET, "hs")).user == "hs"
    rs_token = sign({"sub": "rs"}, rsa_keys.private, "RS256")
    assert verifier.verify_connect(rs_token).user == "rs"
    es_token = make_token(ec_keys["ES256"].private_pem, "es", algorithm="ES256")
    assert verifier.verify_connect(es_token).user == "es"


def test_a_verifier_from_a_config_without_keys_refuses_every_token(rsa_keys: KeyPair) -> None:
    verifier = TokenVerifier.from_config(load_config(env={}))
    assert verifier.keys == {}
    for token in (
        make_token(SECRET, "u"),
        sign({"sub": "u"}, rsa_keys.private, "RS256"),
    ):
        with pytest.raises(InvalidToken, match="no key"):
            verifier.verify_connect(token)


def test_a_verifier_from_config_only_holds_the_configured_families(rsa_keys: KeyPair) -> None:
    config = load_config(env={}, overrides={"token_rsa_public_key": rsa_keys.public_pem})
    assert set(TokenVerifier.from_config(config).keys) == {"RS"}


def test_a_token_signed_with_another_secret_is_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="[Ss]ignature"):
        verifier.verify_connect(make_token(OTHER_SECRET, "42"))


def test_a_token_signed_with_another_rsa_key_is_refused(
    rsa_keys: KeyPair, other_rsa_keys: KeyPair
) -> None:
    verifier = TokenVerifier({"RS": rsa_keys.public_pem})
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": "42"}, other_rsa_keys.private, "RS256"))


def test_a_tampered_payload_is_refused(verifier: TokenVerifier) -> None:
    header, _, signature = make_token(SECRET, "alice").split(".")
    payload = b64(json.dumps({"sub": "admin"}).encode())
    with pytest.raises(InvalidToken):
        verifier.verify_connect(f"{header}.{payload}.{signature}")


def test_a_token_of_a_family_without_a_configured_key_is_refused(
    rsa_keys: KeyPair, ec_keys: dict[str, KeyPair]
) -> None:
    rs_token = sign({"sub": "u"}, rsa_keys.private, "RS256")
    es_token = make_token(ec_keys["ES256"].private_pem, "u", algorithm="ES256")
    with pytest.raises(InvalidToken, match="RS256"):
        TokenVerifier({"HS": SECRET, "ES": ec_keys["ES256"].public_pem}).verify_connect(rs_token)
    with pytest.raises(InvalidToken, match="ES256"):
        TokenVerifier({"HS": SECRET, "RS": rsa_keys.public_pem}).verify_connect(es_token)
    with pytest.raises(InvalidToken, match="HS256"):
        TokenVerifier({"RS": rsa_keys.public_pem}).verify_connect(make_token(SECRET, "u"))


def test_an_algorithm_outside_the_supported_families_is_refused_even_with_a_matching_key(
    rsa_keys: KeyPair,
) -> None:
    token = sign({"sub": "u"}, rsa_keys.private, algorithm="PS256")
    with pytest.raises(InvalidToken, match="PS256"):
        TokenVerifier({"RS": rsa_keys.public_pem}).verify_connect(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_unsigned_tokens_are_refused_whatever_keys_are_configured(
    rsa_keys: KeyPair, alg: str
) -> None:
    verifier = TokenVerifier({"HS": SECRET, "RS": rsa_keys.public_pem})
    with pytest.raises(InvalidToken):
        verifier.verify_connect(unsigned({"sub": "admin"}, alg))


def test_a_pyjwt_alg_none_token_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode({"sub": "admin"}, None, algorithm="none")
    with pytest.raises(InvalidToken, match="none"):
        verifier.verify_connect(token)


def test_a_token_without_an_alg_header_is_refused(verifier: TokenVerifier) -> None:
    header = b64(json.dumps({"typ": "JWT"}).encode())
    _, payload, signature = make_token(SECRET, "u").split(".")
    with pytest.raises(InvalidToken):
        verifier.verify_connect(f"{header}.{payload}.{signature}")


def test_an_hs256_token_signed_with_the_rsa_public_key_is_refused(rsa_keys: KeyPair) -> None:
    """Algorithm confusion: the public key PEM used as an HMAC secret must not verify."""
    forged = forge_hs256({"sub": "admin"}, rsa_keys.public_pem.encode())
    with pytest.raises(InvalidToken):
        TokenVerifier({"RS": rsa_keys.public_pem}).verify_connect(forged)
    with pytest.raises(InvalidToken):
        TokenVerifier({"RS": rsa_keys.public_pem, "HS": SECRET}).verify_connect(forged)
    with pytest.raises(InvalidToken):
        TokenVerifier({"RS": rsa_keys.public_pem}).verify_subscribe(
            forge_hs256({"sub": "admin", "channel": "$secret"}, rsa_keys.public_pem.encode())
        )


def test_an_hs256_token_signed_with_the_ecdsa_public_key_is_refused(
    ec_keys: dict[str, KeyPair],
) -> None:
    public_pem = ec_keys["ES256"].public_pem
    forged = forge_hs256({"sub": "admin"}, public_pem.encode())
    with pytest.raises(InvalidToken):
        TokenVerifier({"ES": public_pem}).verify_connect(forged)


def test_the_forgery_helper_makes_tokens_the_verifier_accepts_with_the_right_secret(
    verifier: TokenVerifier,
) -> None:
    """Guards the confusion tests: a hand-made HS256 token is fine when the secret matches."""
    assert verifier.verify_connect(forge_hs256({"sub": "u"}, SECRET.encode())).user == "u"


def test_an_rs256_token_is_not_checked_with_the_ecdsa_key(
    rsa_keys: KeyPair, ec_keys: dict[str, KeyPair]
) -> None:
    verifier = TokenVerifier({"ES": ec_keys["ES256"].public_pem})
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": "u"}, rsa_keys.private, "RS256"))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "....",
        b64(b"not json") + ".e30.sig",
        b64(b"[1, 2]") + ".e30.sig",
    ],
)
def test_malformed_tokens_are_invalid(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_connect(token)
    with pytest.raises(InvalidToken):
        verifier.verify_subscribe(token)


def test_a_payload_that_is_not_json_is_invalid(verifier: TokenVerifier) -> None:
    header = b64(json.dumps({"alg": "HS256"}).encode())
    payload = b64(b"not json")
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    with pytest.raises(InvalidToken):
        verifier.verify_connect(f"{header}.{payload}.{b64(signature.digest())}")


# -- audience and issuer --------------------------------------------------------------------------


@pytest.fixture
def strict_verifier() -> TokenVerifier:
    config = load_config(
        env={},
        overrides={
            "token_hmac_secret_key": SECRET,
            "token_audience": "tidings",
            "token_issuer": "auth.example.com",
        },
    )
    return TokenVerifier.from_config(config)


def test_a_token_with_the_configured_audience_and_issuer_is_accepted(
    strict_verifier: TokenVerifier,
) -> None:
    token = sign({"sub": "u", "aud": "tidings", "iss": "auth.example.com"})
    assert strict_verifier.verify_connect(token).user == "u"


def test_an_audience_list_containing_the_configured_audience_is_accepted(
    strict_verifier: TokenVerifier,
) -> None:
    token = sign({"sub": "u", "aud": ["other", "tidings"], "iss": "auth.example.com"})
    assert strict_verifier.verify_connect(token).user == "u"


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "other", "iss": "auth.example.com"},
        {"aud": ["other"], "iss": "auth.example.com"},
        {"iss": "auth.example.com"},
        {"aud": "tidings", "iss": "evil.example.com"},
        {"aud": "tidings"},
        {},
    ],
)
def test_a_wrong_or_missing_audience_or_issuer_is_refused_when_configured(
    strict_verifier: TokenVerifier, claims: dict[str, Any]
) -> None:
    with pytest.raises(InvalidToken):
        strict_verifier.verify_connect(sign({"sub": "u", **claims}))
    with pytest.raises(InvalidToken):
        strict_verifier.verify_subscribe(sign({"sub": "u", "channel": "$c", **claims}))


def test_audience_and_issuer_are_ignored_when_not_configured(verifier: TokenVerifier) -> None:
    token = sign({"sub": "u", "aud": "anything", "iss": "anyone"})
    assert verifier.verify_connect(token).user == "u"


def test_only_the_issuer_is_checked_when_only_the_issuer_is_configured() -> None:
    verifier = TokenVerifier({"HS": SECRET}, issuer="auth")
    assert verifier.verify_connect(sign({"sub": "u", "iss": "auth", "aud": "x"})).user == "u"
    with pytest.raises(InvalidToken):
        verifier.verify_connect(sign({"sub": "u", "iss": "other"}))


# -- subscription tokens --------------------------------------------------------------------------


def test_a_subscription_token_carries_user_channel_info_and_client(
    verifier: TokenVerifier,
) -> None:
    now = int(time.time())
    token = verifier.verify_subscribe(
        sign(
            {
                "sub": "42",
                "channel": "$chat:room",
                "exp": now + 60,
                "info": {"color": "red"},
                "client": "client-id",
            }
        )
    )
    assert isinstance(token, SubscribeToken)
    assert token.user == "42"
    assert token.channel == "$chat:room"
    assert token.expire_at == now + 60
    assert decoded(token.info) == {"color": "red"}
    assert token.client == "client-id"


def test_make_token_with_a_channel_makes_a_subscription_token(verifier: TokenVerifier) -> None:
    token = verifier.verify_subscribe(make_token(SECRET, "42", channel="$news"))
    assert token == SubscribeToken(user="42", channel="$news")
    assert token.info is NO_DATA


@pytest.mark.parametrize("channel", [None, "", 5, ["$news"]])
def test_a_subscription_token_needs_a_non_empty_channel_string(
    verifier: TokenVerifier, channel: Any
) -> None:
    claims: dict[str, Any] = {"sub": "42"}
    if channel is not None:
        claims["channel"] = channel
    with pytest.raises(InvalidToken, match="channel"):
        verifier.verify_subscribe(sign(claims))


def test_a_connection_token_is_not_a_subscription_token(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_subscribe(make_token(SECRET, "42"))


def test_a_client_claim_that_is_not_a_string_is_ignored(verifier: TokenVerifier) -> None:
    token = verifier.verify_subscribe(sign({"sub": "42", "channel": "$c", "client": 7}))
    assert token.client == ""


def test_a_subscription_token_signed_with_rsa_is_verified(rsa_keys: KeyPair) -> None:
    token = make_token(rsa_keys.private_pem, "42", channel="$news", algorithm="RS512")
    assert TokenVerifier({"RS": rsa_keys.public_pem}).verify_subscribe(token).channel == "$news"


def test_a_subscription_token_needs_a_subject(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify_subscribe(sign({"channel": "$news"}))


# -- make_token -----------------------------------------------------------------------------------


def test_make_token_writes_only_the_claims_it_is_given() -> None:
    token = make_token(SECRET, "42")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"sub": "42"}


def test_make_token_writes_every_claim_it_is_given() -> None:
    before = int(time.time())
    token = make_token(SECRET, "42", ttl=60, channels=["a", "b"], info={"x": 1})
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert claims["channels"] == ["a", "b"]
    assert claims["info"] == {"x": 1}
    assert before + 60 <= claims["exp"] <= int(time.time()) + 60
    assert isinstance(claims["exp"], int)


def test_make_token_leaves_out_an_empty_channel_and_channels_list() -> None:
    token = make_token(SECRET, "42", channel="", channels=[])
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"sub": "42"}
