"""Tests for tidings.app.cli: ``tidings version``, ``tidings token`` and configuration errors."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import jwt
import msgspec
import pytest
from websockets.sync.client import connect

from tidings import Config, __version__, load_config
from tidings.app.cli import _parser, _shared_admin_secret, main
from tidings.node.auth import InvalidToken, TokenVerifier
from tidings.options import AdminOptions, BrokerOptions

from ..conftest import free_port

pytestmark = pytest.mark.slow  # left out of `make check`

SECRET = "cli-test-secret-that-is-long-enough-for-hs256"
ENV_SECRET = "secret-from-the-environment-long-enough-for-hs256"
TIDINGS = str(Path(sys.executable).with_name("tidings"))
"""The installed console script."""


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
        ("[client]\nstale_close_delay = 0\n", "client.stale_close_delay must be greater than 0"),
        ("port = 99999\n", "port must be at most 65535, got 99999"),
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
    """--workers is an override: 0 workers is refused before anything starts."""
    path = write_config(tmp_path, "port = 8001\n")
    assert main(["serve", "--workers", "0", "--config", str(path)]) == 2
    assert "workers must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: neither a number nor auto
        main(["serve", "--workers", "many", "--config", str(path)])
    assert "a number or auto, not 'many'" in capsys.readouterr().err


def test_serve_refuses_a_port_flag_out_of_range_in_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--port", "-5"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "tidings: --port must be between 1 and 65535, got -5\n"
    assert captured.out == ""


def test_serve_with_dev_still_reports_config_errors_of_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, "[namespaces.chat]\nbogus = true\n")
    assert main(["serve", "--dev", "--config", str(path)]) == 2
    assert "unknown option namespaces.chat.bogus" in capsys.readouterr().err


# -- the installed `tidings` command: refusals at start -------------------------------------------


def cli_environment(**extra: str) -> dict[str, str]:
    """The environment without the host's TIDINGS_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    env.update(extra)
    return env


def run_tidings(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tidings ARGS`` to its end (a server that starts instead fails on the timeout)."""
    return subprocess.run(
        [TIDINGS, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        env=cli_environment() if env is None else env,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--port", "99999"),  # would serve on 99999 % 65536 = 34463
        ("--port", "65536"),
        ("--port", "0"),
        ("--port", "-5"),
        ("--api-port", "70000"),
        ("--api-port", "0"),
    ],
)
def test_serve_refuses_a_port_flag_outside_1_to_65535_in_one_line(flag: str, value: str) -> None:
    result = run_tidings("serve", flag, value)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"tidings: {flag} must be between 1 and 65535, got {value}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[client]\nstale_close_delay = 0\n", "client.stale_close_delay must be greater than 0"),
        ("[broker]\nnode_info_interval = 0\n", "broker.node_info_interval must be greater than 0"),
        ("history_max_publication_limit = -1\n", "history_max_publication_limit must be at"),
        ("history_size = -1\n", "history_size must be at least 0, got -1"),
        ("[client]\nwrite_delay = -0.5\n", "client.write_delay must be at least 0, got -0.5"),
        ("shutdown_timeout = -1\n", "shutdown_timeout must be at least 0, got -1"),
        ("port = 99999\n", "port must be at most 65535, got 99999"),
        ("[http_api]\nport = -1\n", "http_api.port must be at least 0, got -1"),
    ],
)
def test_serve_refuses_a_value_that_would_spin_or_misbehave_naming_the_option(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_config(tmp_path, text)
    result = run_tidings("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"tidings: configuration error: {path}: {message}")
    assert result.stderr.count("\n") == 1


def test_serve_refuses_an_unknown_tidings_environment_variable_suggesting_the_option() -> None:
    result = run_tidings("serve", env=cli_environment(TIDINGS_CLIENT_PING_INTERVL="5"))
    assert result.returncode == 2
    assert result.stderr == (
        "tidings: configuration error: unknown environment variable TIDINGS_CLIENT_PING_INTERVL:"
        " no option has this name (did you mean TIDINGS_CLIENT_PING_INTERVAL?)\n"
    )


def test_token_refuses_an_unknown_tidings_environment_variable_too(config_file: Path) -> None:
    result = run_tidings(
        "token", "--user", "1", "--config", str(config_file), env=cli_environment(TIDINGS_X="1")
    )
    assert result.returncode == 2
    assert "unknown environment variable TIDINGS_X" in result.stderr


# -- the installed `tidings serve`, serving -------------------------------------------------------


class Serving:
    """A ``tidings serve`` subprocess, its stderr read line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [TIDINGS, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put("")  # the end

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """The stderr lines containing ``text``, once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {count} x {text!r} within {timeout}s:\n{self.output()}")
            if not line:
                code = self.process.wait()
                pytest.fail(f"tidings serve exited {code}:\n{self.output()}")
            self.lines.append(line)
        return [line for line in self.lines if text in line]

    def stop(self) -> int:
        """SIGTERM (the parent forwards it to its workers); SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


class ServeFactory(Protocol):
    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Serving: ...


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """Start ``tidings serve ARGS``; every one is stopped after the test."""
    started: list[Serving] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Serving:
        serving = Serving(list(args), cli_environment() if env is None else env)
        started.append(serving)
        return serving

    yield start
    for serving in started:
        serving.stop()


def api_port(serving: Serving) -> int:
    (line,) = serving.wait_for("server API: ")
    match = re.search(r"server API: http://127\.0\.0\.1:(\d+)/api", line)
    assert match, line
    return int(match.group(1))


FREE_PORTS = "port = 0\n[http_api]\nport = 0\n"


def test_serve_turns_gc_freeze_on(serve: ServeFactory, tmp_path: Path) -> None:
    serving = serve("--config", str(write_config(tmp_path, FREE_PORTS)))
    serving.wait_for(" serving ws://")
    assert serving.wait_for("starting on the")[0].rstrip().endswith("(gc_freeze on)")
    assert serving.stop() == 0


@pytest.mark.parametrize(
    ("text", "env"),
    [("gc_freeze = false\n", {}), ("", {"TIDINGS_GC_FREEZE": "false"})],
    ids=["file", "environment"],
)
def test_serve_respects_an_explicit_gc_freeze_false(
    serve: ServeFactory, tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    path = write_config(tmp_path, text + FREE_PORTS)
    serving = serve("--config", str(path), env=cli_environment(**env))
    serving.wait_for(" serving ws://")
    assert serving.wait_for("starting on the")[0].rstrip().endswith("(gc_freeze off)")


def api_status(port: int, key: str | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-API-Key"] = key
        connection.request("POST", "/api/info", body=b"{}", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_serve_dev_still_checks_a_configured_api_key(serve: ServeFactory, tmp_path: Path) -> None:
    path = write_config(tmp_path, FREE_PORTS)
    env = cli_environment(TIDINGS_HTTP_API_KEY="the-configured-key")
    serving = serve("--dev", "--config", str(path), env=env)
    port = api_port(serving)
    assert api_status(port, None) == 401
    assert api_status(port, "a-wrong-key") == 401
    assert api_status(port, "the-configured-key") == 200


def test_serve_dev_without_a_key_needs_none(serve: ServeFactory, tmp_path: Path) -> None:
    serving = serve("--dev", "--config", str(write_config(tmp_path, FREE_PORTS)))
    assert api_status(api_port(serving), None) == 200


# -- workers share the admin cookie secret --------------------------------------------------------


def redis_config(password: str = "", secret: str = "") -> Config:
    return Config(
        workers=2,
        broker=BrokerOptions(url="redis://127.0.0.1:6379/0"),
        admin=AdminOptions(password=password, secret=secret),
    )


def test_workers_get_one_admin_secret_drawn_by_the_parent() -> None:
    config = redis_config(password="pw")
    shared = _shared_admin_secret(config)
    assert re.fullmatch(r"[0-9a-f]{64}", shared.admin.secret)
    assert shared.admin == AdminOptions(password="pw", secret=shared.admin.secret)
    assert msgspec.structs.replace(shared, admin=config.admin) == config, "nothing else changes"
    assert _shared_admin_secret(config).admin.secret != shared.admin.secret, "random"


@pytest.mark.parametrize(
    "config",
    [
        redis_config(password="pw", secret="configured-secret"),  # the user's secret is kept
        redis_config(),  # no admin UI
        Config(admin=AdminOptions(password="pw")),  # one process: its own random secret
    ],
)
def test_the_admin_secret_is_left_alone_where_workers_need_none_shared(config: Config) -> None:
    assert _shared_admin_secret(config) is config


def metrics_connections(connection: http.client.HTTPConnection) -> float:
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read().decode()
    assert response.status == 200
    match = re.search(r"^tidings_connections (\S+)$", body, re.MULTILINE)
    assert match, body
    return float(match.group(1))


def admin_session(connection: http.client.HTTPConnection, cookie: str) -> int:
    connection.request("GET", "/admin/session", headers={"Cookie": cookie})
    response = connection.getresponse()
    response.read()
    return response.status


def test_an_admin_login_works_on_every_worker(
    serve: ServeFactory, tmp_path: Path, redis_url: str
) -> None:
    """The kernel spreads connections over the workers: a session cookie signed by one
    worker is accepted by the other. Which worker answers is told by /metrics: only one
    holds the WebSocket connection opened here."""
    port, api = free_port(), free_port()
    path = write_config(
        tmp_path,
        '[admin]\npassword = "worker-test-password"\n'
        "[client]\nallow_anonymous_connect_without_token = true\n",
    )
    serving = serve(
        "--config", str(path), "--workers", "2", "--broker", redis_url,
        "--port", str(port), "--api-port", str(api),
    )  # fmt: skip
    serving.wait_for(" serving ws://", count=2)
    with connect(f"ws://127.0.0.1:{port}/connection/websocket") as ws:
        ws.send('{"id":1,"connect":{}}')
        assert "connect" in json.loads(ws.recv(timeout=10))
        login = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
        login.request(
            "POST",
            "/admin/login",
            body=json.dumps({"password": "worker-test-password"}),
            headers={"Content-Type": "application/json"},
        )
        response = login.getresponse()
        response.read()
        assert response.status == 200
        cookie = response.getheader("Set-Cookie", "").partition(";")[0]
        login.close()
        assert cookie.startswith("tidings_admin=")
        answers: dict[float, list[int]] = {0.0: [], 1.0: []}
        deadline = time.monotonic() + 20
        while min(len(statuses) for statuses in answers.values()) < 3:
            assert time.monotonic() < deadline, f"one worker never answered: {answers}"
            connection = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
            try:  # one TCP connection: both requests reach the same worker
                worker = metrics_connections(connection)
                answers[worker].append(admin_session(connection, cookie))
            finally:
                connection.close()
    assert answers == {0.0: [200] * len(answers[0.0]), 1.0: [200] * len(answers[1.0])}


# --- start-up failures: one line with the fix, exit 2 --------------------------------------


def test_dash_dash_version_prints_the_version() -> None:
    result = run_tidings("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"tidings {__version__}")


def _start_failure(*args: str) -> str:
    """The one line ``tidings serve ARGS`` says when it cannot start (exit 2)."""
    ports = ("--port", str(free_port()), "--api-port", str(free_port()))
    result = run_tidings("serve", *ports, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("tidings:")]
    return line


def test_an_unreachable_broker_is_one_line_naming_it_without_its_password() -> None:
    port = free_port()
    line = _start_failure("--broker", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert line.startswith(
        f"tidings: cannot start: cannot reach Redis at redis://:***@127.0.0.1:{port}"
    )
    assert "hunter2" not in line
    assert line.endswith("start it, or check broker.url (--broker)")


def test_a_port_in_use_is_one_line_with_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tidings("serve", "--port", str(port), "--api-port", str(free_port()))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "address already in use; stop what uses it, or choose another --port" in result.stderr


def test_unloadable_tls_files_are_one_line_naming_them(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    line = _start_failure("--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem"))
    assert f"cannot load {cert} and {tmp_path / 'missing.pem'}" in line
    assert line.endswith("check --tls-cert / --tls-key (PEM files)")


def test_log_level_debug_adds_the_traceback_of_a_start_up_failure() -> None:
    port = free_port()
    result = run_tidings(
        "serve", "--log-level", "debug", "--broker", f"redis://127.0.0.1:{port}/0",
        "--port", str(free_port()), "--api-port", str(free_port()),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "cannot reach Redis" in result.stderr


# -- check-config, gen-config, help ---------------------------------------------------------------

DATA = Path(__file__).parent / "data"


def test_check_config_says_config_ok_and_exits_0(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'token_hmac_secret_key = "{SECRET}"\n')
    result = run_tidings("check-config", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: config ok\n", "")


def test_check_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, 'port = 99999\nbogus = 1\n[client]\nping_interval = "x"\nchannel_limit = 0\n'
    )
    result = run_tidings("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"tidings: {path}: error: port must be at most 65535, got 99999",
        f"tidings: {path}: error: unknown option bogus",
        f"tidings: {path}: error: client.ping_interval: expected a duration such as 25, '25s',"
        " '500ms' or '1m30s', got 'x'",
        f"tidings: {path}: error: client.channel_limit must be at least 1, got 0",
        f"{path}: 4 problems",
    ]


def test_check_config_lists_every_problem_between_options_too(tmp_path: Path) -> None:
    text = 'workers = 2\nlog_format = "xml"\n[client]\nping_interval = 5\npong_timeout = 8\n'
    path = write_config(tmp_path, text)
    result = run_tidings("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tidings: {path}: error: client.ping_interval must be greater than client.pong_timeout",
        f"tidings: {path}: error: workers > 1 needs a shared broker: the memory broker cannot "
        "connect processes (set broker.url = 'redis://...' or --broker)",
        f"tidings: {path}: error: log_format must be 'text' or 'json', got 'xml'",
        f"{path}: 3 problems",
    ]


def test_check_config_of_a_centrifugo_file_names_each_unsupported_key() -> None:
    path = DATA / "centrifugo_v6.json"
    result = run_tidings("check-config", str(path))
    assert result.returncode == 0
    assert result.stdout == f"{path}: config ok (6 warnings)\n"
    warnings = result.stderr.splitlines()
    assert len(warnings) == 6
    assert warnings[0] == (
        f"tidings: {path}: warning: client.token.jwks_public_endpoint: not supported by tidings,"
        " ignored"
    )


def test_check_config_lists_warnings_with_the_problems_of_a_centrifugo_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "centrifugo.yaml"
    path.write_text("client:\n  concurrency: 4\n  ping_interval: 25\nadmin:\n  enabld: true\n")
    result = run_tidings("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tidings: {path}: warning: client.concurrency: not supported by tidings, ignored",
        f"tidings: {path}: error: client.ping_interval: a number is nanoseconds for Centrifugo:"
        " write a duration string such as '25s'",
        f"tidings: {path}: error: unknown Centrifugo v6 option admin.enabld (the file is read as"
        " a Centrifugo v6 configuration because of its key client.concurrency)",
        f"{path}: 2 problems",
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.toml", None, "cannot read config file"),
        ("broken.json", "{", "invalid JSON"),
        ("pair.toml", "[client]\nping_interval = 5\npong_timeout = 5\n", "client.ping_interval"),
    ],
)
def test_check_config_of_an_unreadable_or_inconsistent_file_exits_2(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = run_tidings("check-config", str(path))
    assert result.returncode == 2
    assert f"tidings: {path}: error: " in result.stderr
    assert message in result.stderr


def test_gen_config_prints_every_option_at_its_default_and_loads_back(tmp_path: Path) -> None:
    result = run_tidings("gen-config")
    assert (result.returncode, result.stderr) == (0, "")
    path = tmp_path / "generated.toml"
    path.write_text(result.stdout)
    assert load_config(path, env={}) == Config()
    assert run_tidings("check-config", str(path)).returncode == 0
    listed = set(re.findall(r"^(?:# )?(\w+) = ", result.stdout, re.MULTILINE))
    for info in msgspec.structs.fields(Config):
        if isinstance(info.type, type) and issubclass(info.type, msgspec.Struct):
            assert set(info.type.__struct_fields__) <= listed, info.name
        elif info.name != "namespaces":
            assert info.name in listed


def test_gen_config_puts_each_description_of_options_py_above_its_option() -> None:
    text = run_tidings("gen-config").stdout
    assert "# Seconds a stop waits for clients to take their last messages (0: none).\n" in text
    assert "shutdown_timeout = 10.0  # seconds\n" in text


def test_every_flag_and_command_has_help() -> None:
    parser = _parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    missing.append(choice.dest)
            for name, command in action.choices.items():
                for sub in command._actions:
                    if not isinstance(sub, argparse._HelpAction) and not sub.help:
                        missing.append(f"{name} {sub.dest}")
        elif not action.help:
            missing.append(action.dest)
    assert missing == []


def test_the_usage_lists_check_config_and_gen_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "check-config" in out and "gen-config" in out
