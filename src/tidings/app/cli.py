"""The command line: ``tidings serve``, ``tidings token``, ``tidings version``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..__about__ import __version__
from ..node.auth import make_token
from ..options import Config, ConfigError
from .config import load_config
from .hub import Hub
from .logs import configure_logging

__all__ = ["main"]

logger = logging.getLogger("tidings")

DEV_WARNING = (
    "WARNING: --dev mode: anonymous clients may connect, subscribe, publish and read "
    "presence and history on every channel, the server API needs no key, and the "
    "admin password is 'admin'. "
    "Never use it in production."
)


_FLAG_OPTIONS = {
    "host": "host",
    "port": "port",
    "api_port": "http_api.port",
    "broker": "broker.url",
    "workers": "workers",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "log_format": "log_format",
    "log_level": "log_level",
}
"""serve flags -> the options they override."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        print(f"tidings {__version__}")
        return 0
    overrides: dict[str, Any] = {}
    for flag, key in _FLAG_OPTIONS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    if getattr(args, "dev", False):
        overrides["dev"] = True
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"tidings: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _token(config, args)
    return _serve(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="A real-time messaging hub.")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="WebSocket port (default 8000)")
    serve.add_argument("--api-port", type=int, help="server API / metrics port (default 9000)")
    serve.add_argument("--broker", metavar="URL", help="memory (default) or redis://host:6379/0")
    serve.add_argument("--workers", type=int, help="processes sharing the port (needs --broker)")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument("--dev", action="store_true", help="open everything for local development")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    token = commands.add_parser("token", help="print a connection or subscription JWT")
    token.add_argument("--config", metavar="FILE", help="TOML configuration file (for the secret)")
    token.add_argument("--user", required=True, help="user id (the sub claim)")
    token.add_argument("--ttl", type=float, help="seconds until the token expires")
    token.add_argument("--channel", help="make a subscription token for this channel")

    commands.add_parser("version", help="print the version")
    return parser


def _token(config: Config, args: argparse.Namespace) -> int:
    if not config.token_hmac_secret_key:
        print("tidings: token_hmac_secret_key is not configured", file=sys.stderr)
        return 2
    print(
        make_token(
            config.token_hmac_secret_key, args.user, ttl=args.ttl, channel=args.channel or ""
        )
    )
    return 0


def _serve(config: Config) -> int:
    configure_logging(config.log_level, config.log_format)
    if config.dev:
        print(DEV_WARNING, file=sys.stderr)
    if config.workers > 1:
        return _serve_workers(config)
    return _serve_one(config)


def _serve_one(config: Config) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.run
        loop_name = "asyncio"
    else:
        runner = uvloop.run
        loop_name = "uvloop"
    logger.info("tidings %s starting on the %s event loop", __version__, loop_name)
    try:
        runner(_run(config))
    except OSError as exc:
        print(f"tidings: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_workers(config: Config) -> int:
    """Fork ``config.workers`` processes that share the ports; stop them on a signal."""
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve until told to stop
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _serve_one(config)
            finally:
                os._exit(code)
        children.append(pid)
    logger.info("started %d workers: %s", len(children), children)

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


async def _run(config: Config) -> None:
    hub = Hub(config)
    await hub.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    lines = [f"tidings {__version__} serving {hub.url}"]
    if hub.server.demo is not None and hub.server.demo.available:
        lines.append(f"  demo app:   http://{config.host}:{hub.port}/")
    if hub.api is not None:
        lines.append(f"  server API: {hub.api_url}")
        if config.admin.password:
            lines.append(f"  admin UI:   http://{config.http_api.host}:{hub.api.port}/admin/")
    print("\n".join(lines), file=sys.stderr, flush=True)
    await stop.wait()
    logger.info("shutting down")
    await hub.stop()
