"""Running the code blocks of Markdown files as written (README.md, docs/**/*.md).

Shared by the tests that check documentation: find the blocks and their markers, point
their addresses at the tests' own servers, and run them (Python scripts, shell lines,
long-running servers that must come up and stop cleanly).

Addresses are the only thing changed: ``127.0.0.1:8000`` and ``127.0.0.1:9000`` become the
ports of a ``tidings serve --dev`` hub of the tests, ``redis://127.0.0.1:6379/0``,
``redis+cluster://127.0.0.1:7000`` and ``nats://127.0.0.1:4222`` their own Redis, Redis Cluster
and NATS, so nothing depends on what else listens on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .conftest import free_port

BIN = Path(sys.executable).parent
TIMEOUT = 30.0
SERVE_SECONDS = 5.0
"""How long a Python block ending in ``serve_forever()`` must keep serving."""

SERVERS = {"tidings serve": " serving ", "uvicorn ": "Application startup complete"}
"""Shell commands that run until stopped -> what they print once they serve."""

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)
_MARKER = re.compile(r"<!--\s*snippet:\s*(?P<marker>.*?)\s*-->[ \t]*\n[ \t]*\Z")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text, and the marker on the line above it."""

    lang: str
    body: str
    marker: str = ""
    line: int = 0


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order, with their markers.

    A marker is an HTML comment (``<!-- snippet: ... -->``) alone on the line right above
    the opening fence; blocks indented in lists or tabs are dedented.
    """
    found = []
    for match in _FENCE.finditer(text):
        indent = match.group("indent")
        body = match.group("body")
        if indent:
            body = "".join(line.removeprefix(indent) for line in body.splitlines(True))
        marker = _MARKER.search(text, 0, match.start())
        found.append(
            Block(
                lang=match.group("lang"),
                body=body,
                marker=marker.group("marker") if marker else "",
                line=text.count("\n", 0, match.start()) + 1,
            )
        )
    return found


BROKER_URLS = (
    "redis://127.0.0.1:6379/0",
    "redis+cluster://127.0.0.1:7000",
    "nats://127.0.0.1:4222",
)
"""The brokers' addresses of the documentation, each replaced by the tests' own server."""


def addressed(body: str, ports: tuple[int, int], brokers: dict[str, str]) -> str:
    """``body`` with the documentation's addresses replaced by the tests' servers
    (``brokers``: each of :data:`BROKER_URLS` the body has -> the tests' URL)."""
    port, api_port = ports
    body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
        "127.0.0.1:9000", f"127.0.0.1:{api_port}"
    )
    for documented, url in brokers.items():
        body = body.replace(documented, url)
    return body


def snippet_environment() -> dict[str, str]:
    """The environment of the blocks: the venv's programs first, and free ports for the
    servers the blocks start themselves (the config file < environment)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TIDINGS_PORT"] = str(free_port())
    env["TIDINGS_HTTP_API_PORT"] = str(free_port())
    env["UVICORN_PORT"] = str(free_port())
    return env


def wait_for(process: subprocess.Popen[str], ready: str, count: int = 1) -> None:
    """Read a server's stderr until ``count`` lines said ``ready`` (one per worker)."""
    assert process.stderr is not None
    # A server that goes silent is killed: its output ends, and so does the loop.
    watchdog = threading.Timer(TIMEOUT, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if ready in line:
                count -= 1
                if count == 0:
                    return
    finally:
        watchdog.cancel()
    raise AssertionError(f"no {ready.strip()!r} line:\n" + "".join(seen))


@contextmanager
def serving(
    command: list[str], cwd: Path, env: dict[str, str], ready: str, count: int = 1
) -> Iterator[subprocess.Popen[str]]:
    """Run a server until the block ends; it must stop within ``TIMEOUT`` of SIGTERM."""
    with subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            wait_for(process, ready, count)
            # Keep reading its log, so that a server serving many blocks never blocks on a
            # full pipe.
            assert process.stderr is not None
            threading.Thread(target=process.stderr.read, daemon=True).start()
            yield process
        finally:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                message = f"{' '.join(command)}: still running {TIMEOUT} s after SIGTERM"
                raise AssertionError(message) from None


@contextmanager
def dev_hub(cwd: Path, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """``make run``'s hub, ``tidings serve --dev``, on free ports: (port, api_port)."""
    port, api_port = free_port(), free_port()
    command = [str(BIN / "tidings"), "serve", "--dev", "--port", str(port)]
    command += ["--api-port", str(api_port)]
    clean = {k: v for k, v in env.items() if not k.startswith("TIDINGS_")}
    with serving(command, cwd, clean, SERVERS["tidings serve"]):
        yield port, api_port


def shell_lines(body: str) -> Iterator[str]:
    """The commands of a shell block: comments dropped, ``\\`` continuations joined."""
    command = ""
    for line in body.splitlines():
        line = re.sub(r"(^|\s+)#\s.*$", "", line).rstrip()
        if line.endswith("\\"):
            command += line[:-1] + " "
            continue
        command = (command + line).strip()
        if command:
            yield command
        command = ""


def run_shell_line(command: str, cwd: Path, env: dict[str, str]) -> None:
    """Run one command: it must exit 0; a server must come up, then it is stopped.

    ``make`` lines are skipped: ``make run`` is the tests' dev hub, ``make test`` the suite.
    """
    if command.startswith("make "):
        return
    for start, ready in SERVERS.items():
        if command.startswith(start):
            workers = re.search(r"--workers (\d+)", command)
            count = int(workers.group(1)) if workers else 1
            with serving(["bash", "-c", f"exec {command}"], cwd, env, ready, count):
                return
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def run_python(script: Path, cwd: Path, env: dict[str, str]) -> None:
    """Run a Python file: it must exit 0, or keep serving if it ends in ``serve_forever()``."""
    body = script.read_text()
    serving_forever = "serve_forever()" in body
    with subprocess.Popen(
        [sys.executable, "-W", "error::RuntimeWarning", str(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            _, stderr = process.communicate(timeout=SERVE_SECONDS if serving_forever else TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()
            _, stderr = process.communicate(timeout=TIMEOUT)
            assert serving_forever, f"{script.name} did not end:\n{body}\n{stderr}"
            assert "Traceback" not in stderr, f"{script.name}:\n{body}\n{stderr}"
            return
    assert process.returncode == 0, f"{script.name} failed:\n{body}\n{stderr}"
