#!/usr/bin/env python3
"""Soak test: a mixed load against one hub for N seconds, watching for leaks.

The hub runs in this process, in its own thread and event loop (uvloop, as ``tidings serve``
uses): a real :class:`tidings.Hub` with real sockets, so its asyncio task count can be read
(``len(asyncio.all_tasks())`` on its loop), which no endpoint exposes. The load comes from
``soak/wsload.py`` subprocesses:

- ``churn`` workers: short-lived clients connect, subscribe to 1-3 of 50 channels (history,
  presence, join/leave), publish, read history or presence, sometimes send garbage (closed
  3501), and leave in every way a client can: a close handshake, a bare FIN, a reset;
- a ``fanout`` worker: steady subscribers of one channel and a publisher at a fixed rate; every
  subscriber must get every publication, in order.

Every ``--sample`` seconds it prints the hub's RSS, open file descriptors, asyncio tasks,
connections, subscriptions, channels and event-loop lag. It exits 1 when the load saw an error
or lost a message, or when something grows beyond noise (see soak/README.md for the rules and
their thresholds), 0 otherwise.

    python soak/run.py                    # 600 s (make soak)
    python soak/run.py --seconds 60       # the CI-sized run (tests/test_faults.py)
    python soak/run.py --redis            # through a redis-server of its own
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing, too

import uvloop  # noqa: E402

from tidings import Hub, load_config  # noqa: E402

WSLOAD = HERE / "wsload.py"
MiB = 1024 * 1024

# What counts as growth beyond noise (justified in soak/README.md).
RSS_TOLERANCE = 8 * MiB
RSS_TOLERANCE_RATIO = 0.05
COUNT_TOLERANCE_RATIO = 0.25
FDS_TOLERANCE = 25
TASKS_TOLERANCE = 50
IDLE_SLACK = 2
"""Once the load has stopped and every client is gone, fds and tasks are back to their idle
values before the load, give or take this many."""

CHANNEL = {
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "history_size": 100,
    "history_ttl": 300,
    "force_recovery": True,
    "allow_subscribe_for_client": True,
    "allow_subscribe_for_anonymous": True,
    "allow_publish_for_subscriber": True,
    "allow_publish_for_anonymous": True,
    "allow_publish_for_client": True,
    "allow_history_for_subscriber": True,
    "allow_history_for_anonymous": True,
    "allow_history_for_client": True,
    "allow_presence_for_subscriber": True,
    "allow_presence_for_anonymous": True,
    "allow_presence_for_client": True,
}
FAN = {
    "allow_subscribe_for_client": True,
    "allow_subscribe_for_anonymous": True,
    "allow_publish_for_client": True,
    "allow_publish_for_anonymous": True,
}


class ErrorLog(logging.Handler):
    """Counts (and keeps the first few of) the hub's log records at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.records) < 5:
            self.records.append(self.format(record))


class HubThread:
    """A hub on its own event loop in a thread of this process."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.hub: Hub | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="hub", daemon=True)
        self.thread.start()
        if not self.started.wait(30) or self.hub is None:
            raise RuntimeError(f"the hub did not start: {self.error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.started.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self.hub = Hub(self.config)
        await self.hub.start()
        self.started.set()
        await self.hub.serve_forever()

    def call(self, make: Any, timeout: float = 10.0) -> Any:
        """Run ``make()`` (a coroutine function) on the hub's loop; return its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def probe(self) -> dict[str, Any]:
        hub = self.hub
        assert hub is not None
        sent = time.monotonic()

        async def read() -> dict[str, Any]:
            node = hub.node
            return {
                "lag_ms": (time.monotonic() - sent) * 1000,
                "tasks": len(asyncio.all_tasks()),
                "connections": node.num_clients,
                "subscriptions": node.num_subscriptions,
                "channels": node.num_channels,
            }

        return self.call(read)

    def stop(self) -> None:
        assert self.hub is not None
        self.call(self.hub.stop, timeout=60)
        self.thread.join(30)


def descriptors(redis_port: int) -> dict[str, int]:
    """Open fds other than the Redis pool's connections, and those (a pool grows to the peak
    number of concurrent commands and keeps its connections: not a leak of the hub's)."""
    to_redis = sockets_to(redis_port)
    return {"fds": fds() - to_redis, "redis": to_redis}


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sockets_to(port: int) -> int:
    """How many of this process's fds are TCP connections to ``port`` (the Redis pool's)."""
    if not port:
        return 0
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[2].endswith(f":{port:04X}"):
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            count += 1
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("soak: --redis needs redis-server on PATH")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                sys.exit("soak: redis-server did not start")
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def quarter_medians(samples: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Medians of ``key`` over the second and the last quarter of the run (by time)."""
    end = samples[-1]["t"]
    q2 = [s[key] for s in samples if end * 0.25 <= s["t"] < end * 0.5]
    q4 = [s[key] for s in samples if s["t"] >= end * 0.75]
    if not q2 or not q4:
        raise SystemExit("soak: too few samples: use a longer --seconds or a shorter --sample")
    return statistics.median(q2), statistics.median(q4)


def slope_per_minute(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` over the second half of the run, per minute."""
    end = samples[-1]["t"]
    half = [(s["t"], s[key]) for s in samples if s["t"] >= end / 2]
    if len(half) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in half], [v for _, v in half]).slope * 60


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak test of tidings (see soak/README.md).")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--sample", type=float, default=0, help="seconds between samples")
    parser.add_argument("--redis", action="store_true", help="use a redis-server of its own")
    parser.add_argument("--churn-workers", type=int, default=2)
    parser.add_argument("--churn-concurrency", type=int, default=15)
    parser.add_argument("--fanout-subscribers", type=int, default=200)
    parser.add_argument("--fanout-rate", type=float, default=20)
    parser.add_argument("--json", metavar="FILE", help="write the samples and verdict here")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # workers inherit it too
    sample_every = args.sample or max(2.0, min(10.0, args.seconds / 40))

    error_log = ErrorLog()
    logging.getLogger("tidings").addHandler(error_log)
    logging.getLogger("tidings").setLevel(logging.ERROR)  # the 3501s of the garbage are expected
    logging.getLogger("tidings").propagate = False
    redis = None
    overrides: dict[str, Any] = {
        "port": 0,
        "http_api.port": 0,
        "http_api.key": "soak-key",
        "log_level": "error",
        "client.allow_anonymous_connect_without_token": True,
        "namespaces": {"churn": CHANNEL, "fan": FAN},
    }
    redis_port = 0
    if args.redis:
        redis, overrides["broker.url"] = start_redis()
        redis_port = int(overrides["broker.url"].rsplit(":", 1)[1].split("/")[0])
    hub_thread = HubThread(load_config(env={}, overrides=overrides))
    hub = hub_thread.hub
    assert hub is not None
    port = hub.port
    time.sleep(0.5)
    idle_before = {"rss": rss(), **descriptors(redis_port), **hub_thread.probe()}
    print(
        f"soak: {args.seconds:.0f}s against ws://127.0.0.1:{port} "
        f"(broker {'redis' if redis else 'memory'}), pid {os.getpid()}; idle: "
        f"RSS {idle_before['rss'] / MiB:.1f} MiB, {idle_before['fds']} fds, "
        f"{idle_before['tasks']} tasks",
        flush=True,
    )

    python = sys.executable
    workers: list[tuple[str, subprocess.Popen[str]]] = []
    for i in range(args.churn_workers):
        command = [python, str(WSLOAD), "churn", "--port", str(port)]
        command += ["--seconds", str(args.seconds), "--concurrency", str(args.churn_concurrency)]
        command += ["--seed", str(i)]
        workers.append((f"churn-{i}", spawn(command)))
    command = [python, str(WSLOAD), "fanout", "--port", str(port), "--seconds", str(args.seconds)]
    command += ["--subscribers", str(args.fanout_subscribers), "--rate", str(args.fanout_rate)]
    workers.append(("fanout", spawn(command)))

    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    header = f"{'t':>6} {'RSS MiB':>8} {'fds':>6} {'tasks':>6} {'conns':>6} {'subs':>6} "
    header += f"{'chans':>6} {'lag ms':>7} {'redis':>6}"
    print(header, flush=True)
    next_at = started + sample_every
    while any(process.poll() is None for _, process in workers):
        time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
        if time.monotonic() < next_at:
            continue
        next_at += sample_every
        if time.monotonic() - started > args.seconds + 120:
            print("soak: the workers did not finish in time", flush=True)
            for _, process in workers:
                process.kill()
        if time.monotonic() - started > args.seconds:
            continue  # the load is winding down: not a sample of it
        sample = {
            "t": round(time.monotonic() - started, 1),
            "rss": rss(),
            **descriptors(redis_port),
        }
        sample.update(hub_thread.probe())
        samples.append(sample)
        print(row(sample), flush=True)

    results: dict[str, Any] = {}
    for name, process in workers:
        output, errors = process.communicate(timeout=30)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        results[name] = json.loads(lines[-1]) if lines else {"error": errors[-2000:]}

    # Idle again: every client gone, nothing must be left behind.
    deadline = time.monotonic() + 20
    while hub_thread.probe()["connections"] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    idle_after = {"rss": rss(), **descriptors(redis_port), **hub_thread.probe()}

    failures = check(samples, results, idle_before, idle_after)
    if error_log.count:
        failures.append(f"the hub logged {error_log.count} errors: {error_log.records}")
    print(f"\nidle after: {json.dumps({k: round(v, 1) for k, v in idle_after.items()})}")
    for name, result in results.items():
        print(f"{name}: {json.dumps(result)}")
    summary = summarize(samples)
    print("trend (2nd-quarter median -> last-quarter median; 2nd-half slope per minute):")
    for key, (q2, q4, slope) in summary.items():
        scale = MiB if key == "rss" else 1
        print(f"  {key:>6}: {q2 / scale:10.1f} -> {q4 / scale:10.1f}   {slope / scale:+.2f}/min")
    hub_thread.stop()
    if redis is not None:
        redis.kill()
        redis.wait()
    verdict = "FAIL" if failures else "PASS"
    for failure in failures:
        print(f"FAIL: {failure}")
    print(f"soak: {verdict} after {time.monotonic() - started:.0f}s", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seconds": args.seconds,
                    "broker": "redis" if redis else "memory",
                    "samples": samples,
                    "idle_before": idle_before,
                    "idle_after": idle_after,
                    "workers": results,
                    "failures": failures,
                },
                indent=1,
            )
        )
    return 1 if failures else 0


def spawn(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,  # closed when this process ends: the worker then stops
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
    )


def row(sample: dict[str, Any]) -> str:
    return (
        f"{sample['t']:>6.0f} {sample['rss'] / MiB:>8.1f} {sample['fds']:>6} {sample['tasks']:>6} "
        f"{sample['connections']:>6} {sample['subscriptions']:>6} {sample['channels']:>6} "
        f"{sample['lag_ms']:>7.1f} {sample['redis'] or '':>6}"
    )


def summarize(samples: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    return {
        key: (*quarter_medians(samples, key), slope_per_minute(samples, key))
        for key in ("rss", "fds", "tasks", "connections")
    }


def check(
    samples: list[dict[str, Any]],
    results: dict[str, Any],
    idle_before: dict[str, Any],
    idle_after: dict[str, Any],
) -> list[str]:
    failures = []
    # The load itself: no errors, nothing lost.
    for name, result in results.items():
        if "error" in result:
            failures.append(f"{name} crashed: {result['error']}")
        elif name.startswith("churn"):
            if result["problems"]:
                failures.append(f"{name}: {result['stats']['problems']} problems: {result}")
            if result["stats"].get("connects", 0) == 0:
                failures.append(f"{name}: no connection at all")
        else:
            if result["lost"] or result["disorder"] or result["publish_errors"]:
                failures.append(f"{name}: lost or out of order: {result}")
            if result["failed"] or result["closed"]:
                failures.append(f"{name}: subscribers failed or were closed: {result}")
    # Growth during the load: the last quarter against the second (the first is warm-up).
    q2, q4 = quarter_medians(samples, "rss")
    if q4 - q2 > max(RSS_TOLERANCE, RSS_TOLERANCE_RATIO * q2):
        failures.append(f"RSS grew from {q2 / MiB:.1f} to {q4 / MiB:.1f} MiB")
    for key, tolerance in (("fds", FDS_TOLERANCE), ("tasks", TASKS_TOLERANCE)):
        q2, q4 = quarter_medians(samples, key)
        if q4 - q2 > max(tolerance, COUNT_TOLERANCE_RATIO * q2):
            failures.append(f"{key} grew from {q2:.0f} to {q4:.0f}")
    # Idle again: the hub holds nothing of the clients that left.
    for key in ("connections", "subscriptions", "channels"):
        if idle_after[key]:
            failures.append(f"{idle_after[key]} {key} left after every client left")
    for key in ("fds", "tasks"):
        if idle_after[key] > idle_before[key] + IDLE_SLACK:
            failures.append(f"{key}: {idle_before[key]} before the load, {idle_after[key]} after")
    return failures


if __name__ == "__main__":
    sys.exit(main())
