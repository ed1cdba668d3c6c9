"""The command line: ``tidings serve``, ``token``, ``check-config``, ``gen-config``, ``version``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from ..__about__ import __version__
from ..brokers.base import BrokerUnavailable
from ..node.auth import make_token
from ..options import Config, ConfigError
from ..transports.static import is_built
from .config import ConfigProblems, generate_config, load_config, read_config
from .hub import Hub
from .logs import configure_logging

__all__ = ["main"]

logger = logging.getLogger("tidings")

DEV_WARNING = (
    "WARNING: --dev mode: anonymous clients may connect, subscribe, publish and read "
    "presence and history on every channel, the server API needs no key (unless "
    "http_api.key is set), and the admin password is 'admin'. "
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

_SERVE_DEFAULTS: dict[str, Any] = {"gc_freeze": True}
"""Defaults of ``tidings serve`` that differ from an embedded ``Hub``'s: the file, the
environment and flags still win. ``gc_freeze`` changes the whole process's garbage
collector, which a server process owns but a program embedding a hub does not."""

_PORT_FLAGS = ("port", "api_port")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        print(f"tidings {__version__}")
        return 0
    if args.command == "gen-config":
        print(generate_config(), end="")
        return 0
    if args.command == "check-config":
        return _check_config(args.file)
    for flag in _PORT_FLAGS:
        port = getattr(args, flag, None)
        if port is not None and not 1 <= port <= 65535:
            option = "--" + flag.replace("_", "-")
            print(f"tidings: {option} must be between 1 and 65535, got {port}", file=sys.stderr)
            return 2
    overrides: dict[str, Any] = {}
    for flag, key in _FLAG_OPTIONS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    if getattr(args, "dev", False):
        overrides["dev"] = True
    if args.command == "token":
        try:
            config = load_config(args.config, overrides=overrides)
        except ConfigError as exc:
            print(f"tidings: configuration error: {exc}", file=sys.stderr)
            return 2
        return _token(config, args)
    try:
        config, warnings = read_config(args.config, overrides=overrides, defaults=_SERVE_DEFAULTS)
    except ConfigError as exc:
        print(f"tidings: configuration error: {exc}", file=sys.stderr)
        return 2
    if warnings:  # keys of a Centrifugo file tidings does not support, in the log's format
        configure_logging(config.log_level, config.log_format)
        for warning in warnings:
            logging.getLogger("tidings.config").warning("%s", warning)
    return _serve(config)


def _workers(value: str) -> int | str:
    """``--workers``: a count, or ``auto`` (one per core, resolved with the config)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="A real-time messaging hub.")
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="WebSocket port (default 8000)")
    serve.add_argument("--api-port", type=int, help="server API / metrics port (default 9000)")
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="memory (default), redis://host:6379/0, redis+cluster://host:7000 or nats://host:4222",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="processes sharing the port, or auto: one per core (needs --broker)",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument("--dev", action="store_true", help="open everything for local development")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (debug also prints the traceback of a start-up failure)",
    )

    token = commands.add_parser("token", help="print a connection or subscription JWT")
    token.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + " (for the secret)")
    token.add_argument("--user", required=True, help="user id (the sub claim)")
    token.add_argument("--ttl", type=float, help="seconds until the token expires")
    token.add_argument("--channel", help="make a subscription token for this channel")

    check = commands.add_parser(
        "check-config",
        help="check a configuration file: 'config ok', or every problem (exit 2)",
        description="Load FILE as `tidings serve --config FILE` would (with the TIDINGS_*"
        " environment) and list every problem, and every Centrifugo key tidings ignores.",
    )
    check.add_argument("file", metavar="FILE", help=_CONFIG_HELP)
    commands.add_parser(
        "gen-config", help="print a TOML configuration with every option at its default"
    )
    commands.add_parser("version", help="print the version")
    return parser


_CONFIG_HELP = (
    "configuration file: tidings' own or a Centrifugo v6 one, in TOML, JSON (.json) or"
    " YAML (.yaml, .yml)"
)


def _check_config(path: str) -> int:
    """``tidings check-config FILE``: 'config ok' (exit 0), or every problem (exit 2)."""
    try:
        _, warnings = read_config(path, defaults=_SERVE_DEFAULTS)
    except ConfigProblems as exc:
        problems, warnings = exc.problems, exc.warnings
    except ConfigError as exc:  # the file cannot be read (or is not a mapping)
        problems, warnings = [str(exc).removeprefix(f"{path}: ")], []
    else:
        problems = []
    for warning in warnings:
        print(f"tidings: {path}: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"tidings: {path}: error: {problem}", file=sys.stderr)
    if problems:
        count = len(problems)
        print(f"{path}: {count} problem{'s' if count > 1 else ''}", file=sys.stderr)
        return 2
    said = f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})" if warnings else ""
    print(f"{path}: config ok{said}")
    return 0


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
    logger.info(
        "tidings %s starting on the %s event loop (gc_freeze %s)",
        __version__,
        loop_name,
        "on" if config.gc_freeze else "off",
    )
    try:
        runner(_run(config))
    except CannotStart as exc:
        logger.debug("start-up failed", exc_info=exc.__cause__)  # the traceback, if asked for
        print(f"tidings: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


class CannotStart(Exception):
    """A start-up failure, said in one line with what to do about it."""


def _explain(exc: Exception, config: Config) -> str:
    """One line for a start-up failure: what failed, why, and the fix."""
    if isinstance(exc, ConfigError):  # found only when used: the TLS files
        return f"{exc}; check --tls-cert / --tls-key (PEM files)"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror or exc}; stop what uses it, or choose another --port / --api-port"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"{exc.strerror or exc}; check --host (an address of this machine)"
    if isinstance(exc, BrokerUnavailable):
        return f"{str(exc).rstrip('.')}; start it, or check broker.url (--broker)"
    return f"{type(exc).__name__}: {exc}"


def _serve_workers(config: Config) -> int:
    """Fork ``config.workers`` processes that share the ports; stop them on a signal."""
    config = _shared_admin_secret(config)
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


def _shared_admin_secret(config: Config) -> Config:
    """The config with one admin cookie secret for all the workers, if none is set.

    The kernel spreads connections over the workers, so a session cookie signed by
    one must be accepted by every other: without ``admin.secret``, each would draw
    its own at random. The parent draws one here, before forking, and the workers
    inherit it with the config. Random rather than derived from ``admin.password``
    (with an HMAC of something the workers share): a key derived from the password
    would let anyone who knows or guesses the password forge cookies offline, and
    would keep sessions valid across restarts, which ``admin.secret`` left empty
    promises not to.
    """
    admin = config.admin
    if config.workers < 2 or not admin.password or admin.secret:
        return config
    admin = msgspec.structs.replace(admin, secret=secrets.token_hex(32))
    return msgspec.structs.replace(config, admin=admin)


async def _run(config: Config) -> None:
    hub = Hub(config)
    try:
        await hub.start()
    except Exception as exc:
        raise CannotStart(_explain(exc, config)) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    lines = [f"tidings {__version__} serving {hub.url}"]
    if hub.server.demo is not None and hub.server.demo.available:
        lines.append(f"  demo app:   http://{config.host}:{hub.port}/")
    if hub.api is not None:
        lines.append(f"  server API: {hub.api_url}")
        if config.admin.password and is_built("admin"):
            lines.append(f"  admin UI:   http://{config.http_api.host}:{hub.api.port}/admin/")
    print("\n".join(lines), file=sys.stderr, flush=True)
    await stop.wait()
    logger.info("shutting down")
    await hub.stop()
