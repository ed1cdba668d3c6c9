"""Tests for tidings.app.cli: ``tidings version``, ``tidings token`` and configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from tidings import __version__, load_config
from tidings.app.cli import main
from tidings.node.auth import InvalidToken, TokenVerifier

SECRET = "cli-test-secret-that-is-long-enough-for-hs256"
ENV_SECRET = "secret-from-the-environment-long-enough-for-hs256"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: keep TIDINGS_* variables of the host out of the tests."""
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path, f'token_hmac_secret_key = "{SECRET}"\n')


def printed_token(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert len(lines) == 1
    return lines[0]


# -- version and help -----------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"tidings {__version__}\n"
    assert captured.err == ""


def test_no_command_prints_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: tidings" in out
    for command in ("serve", "token", "version"):
        assert command in out


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["launch"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_tidings_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == f"tidings {__version__}\n"


# -- token ----------------------------------------------------------------------------------------


def test_token_prints_a_connection_jwt_verifiable_with_the_configured_secret(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    token = printed_token(capsys, ["token", "--user", "42", "--config", str(config_file)])
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"sub": "42"}
    verifier = TokenVerifier.from_config(load_config(config_file, env={}))
    claims = verifier.verify_connect(token)
    assert claims.user == "42"
    assert claims.expire_at == 0


def test_token_is_not_verifiable_with_another_secret(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    token = printed_token(capsys, ["token", "--user", "42", "--config", str(config_file)])
    with pytest.raises(InvalidToken):
        TokenVerifier({"HS": "another-secret-that-is-long-enough-too"}).verify_connect(token)


def test_token_with_a_ttl_expires_that_many_seconds_from_now(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    before = int(time.time())
    token = printed_token(
        capsys, ["token", "--user", "42", "--ttl", "90", "--config", str(config_file)]
    )
    expire_at = TokenVerifier({"HS": SECRET}).verify_connect(token).expire_at
    assert before + 90 <= expire_at <= int(time.time()) + 90


def test_token_with_a_fractional_ttl_is_accepted(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    before = int(time.time())
    token = printed_token(
        capsys, ["token", "--user", "42", "--ttl", "30.5", "--config", str(config_file)]
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert before + 30 <= claims["exp"] <= int(time.time()) + 31


def test_token_with_a_channel_prints_a_subscription_jwt(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    token = printed_token(
        capsys,
        ["token", "--user", "42", "--channel", "$chat:secret", "--config", str(config_file)],
    )
    verifier = TokenVerifier({"HS": SECRET})
    claims = verifier.verify_subscribe(token)
    assert claims.user == "42"
    assert claims.channel == "$chat:secret"
    with pytest.raises(InvalidToken):
        verifier.verify_connect(token)


def test_token_reads_the_secret_from_the_environment_without_a_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_TOKEN_HMAC_SECRET_KEY", ENV_SECRET)
    token = printed_token(capsys, ["token", "--user", "7"])
    assert TokenVerifier({"HS": ENV_SECRET}).verify_connect(token).user == "7"


def test_token_uses_the_environment_secret_over_the_file_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    monkeypatch.setenv("TIDINGS_TOKEN_HMAC_SECRET_KEY", ENV_SECRET)
    token = printed_token(capsys, ["token", "--user", "7", "--config", str(config_file)])
    assert TokenVerifier({"HS": ENV_SECRET}).verify_connect(token).user == "7"
    with pytest.raises(InvalidToken):
        TokenVerifier({"HS": SECRET}).verify_connect(token)


def test_token_without_a_configured_secret_exits_2_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, "port = 8001\n")
    assert main(["token", "--user", "42", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "token_hmac_secret_key" in captured.err
    assert "not configured" in captured.err


def test_token_without_any_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--user", "42"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "token_hmac_secret_key" in captured.err


def test_token_requires_a_user(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["token", "--config", str(config_file)])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert "--user" in captured.err
    assert captured.out == ""


def test_token_refuses_a_ttl_that_is_not_a_number(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["token", "--user", "42", "--ttl", "soon", "--config", str(config_file)])
    assert caught.value.code == 2
    assert "--ttl" in capsys.readouterr().err


# -- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus_option = 1\n", "unknown option bogus_option"),
        ("[client]\nping_intervall = 5\n", "unknown option client.ping_intervall"),
        ("[namespaces.chat]\npresense = true\n", "unknown option namespaces.chat.presense"),
        ('port = "eighty"\n', "port:"),
        ('[client]\npong_timeout = "soon"\n', "client.pong_timeout: expected a duration"),
        ("[client]\nping_interval = 5\npong_timeout = 5\n", "client.ping_interval"),
        ("[client]\nchannel_limit = 0\n", "client.channel_limit"),
        ("[channel]\npresence = true\n", "top level"),
        ("port = \n", "invalid TOML"),
    ],
)
@pytest.mark.parametrize("command", [["token", "--user", "42"], ["serve"]])
def test_a_config_error_exits_2_with_a_message_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, named: str, command: list[str]
) -> None:
    path = write_config(tmp_path, f'token_hmac_secret_key = "{SECRET}"\n{text}')
    assert main([*command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tidings: configuration error: ")
    assert str(path) in captured.err
    assert named in captured.err


def test_a_missing_config_file_exits_2_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "missing.toml"
    assert main(["token", "--user", "42", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "configuration error" in captured.err
    assert "cannot read config file" in captured.err
    assert str(path) in captured.err


def test_a_bad_environment_variable_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    monkeypatch.setenv("TIDINGS_CLIENT_PING_INTERVAL", "often")
    assert main(["token", "--user", "42", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "client.ping_interval: expected a duration" in err


def test_serve_with_a_port_that_is_not_a_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--port", "eighty"])
    assert caught.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_serve_flags_are_validated_like_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--port is an override: a negative port is refused before anything starts."""
    path = write_config(tmp_path, "port = 8001\n")
    assert main(["serve", "--port", "-5", "--config", str(path)]) == 2
    assert "port must be greater than 0" in capsys.readouterr().err


def test_serve_with_dev_still_reports_config_errors_of_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, "[namespaces.chat]\nbogus = true\n")
    assert main(["serve", "--dev", "--config", str(path)]) == 2
    assert "unknown option namespaces.chat.bogus" in capsys.readouterr().err
