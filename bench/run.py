#!/usr/bin/env python3
"""Run the tidings benchmark suite: start servers, drive them with bench/build/wsbench, report.

    bench/.venv-peers/bin/python bench/run.py            # the full suite (make bench)
    bench/.venv-peers/bin/python bench/run.py --quick    # a short smoke version
    bench/.venv-peers/bin/python bench/run.py --only fanout,idle --servers tidings,seed
    bench/.venv-peers/bin/python bench/run.py --profile  # only the py-spy profile of tidings

Everything runs on 127.0.0.1 with free ports; each server, redis-server and
generator is started here, bounded in time and stopped here. The server under
test is pinned to core 1 (``taskset -c 1``), the generator to core 0, except in
the runs that say otherwise (the report states how cores were shared).

Outputs: one raw JSON per generator run in bench/results/raw/ (gitignored), the
summary ``summary.json``, ``REPORT.md`` and PNG charts in bench/results/ (or
bench/results/quick/ with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
PEERS = BENCH / "peers"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
TIDINGS_PY = Path(os.environ.get("TIDINGS_PYTHON", ROOT / ".venv" / "bin" / "python"))
PEERS_VENV = Path(os.environ.get("BENCH_PEERS_VENV", BENCH / ".venv-peers"))
PEERS_PY = PEERS_VENV / "bin" / "python"
WSBENCH = BUILD / "wsbench"
WSBLAST = BUILD / "wsblast"

GEN_CORES = "0"
SERVER_CORES = "1"
ALL_CORES = "0,1"
P99_LIMIT_MS = 50.0
QUIET_WAIT = 0.0  # seconds to wait for the machine to be idle before each generator run
# Priorities (nice): the generator is the measuring instrument and light, so it gets a higher
# priority than other work on its core by default; the server under test does not (--server-nice).
GEN_NICE = -10
SERVER_NICE = 0

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


def log(msg: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


# --- servers ---------------------------------------------------------------------------


@dataclass
class Spec:
    """How to start one kind of server and how the generator talks to it."""

    name: str
    label: str
    mode: str  # wsbench protocol of the subscribers: centrifugo, centrifugo-pb, plain, socketio
    sub_path: str
    pub_path: str
    argv: Callable[[int, int, str | None], list[str]]  # (port, api_port, redis_url)
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    redis: bool = False
    channels: bool = True  # can route to many channels
    startup: float = 30.0
    pub_mode: str | None = None  # the publisher's protocol, when not the subscribers'


def _tidings(config: str, *extra: str) -> Callable[[int, int, str | None], list[str]]:
    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        cmd = [str(TIDINGS_PY), "-m", "tidings", "serve", "--config", str(BENCH / config)]
        cmd += ["--port", str(port), "--api-port", str(api_port)]
        if redis_url:
            cmd += ["--broker", redis_url]
        return cmd + list(extra)

    return argv


def _uvicorn(app: str) -> Callable[[int, int, str | None], list[str]]:
    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        return [
            str(PEERS_VENV / "bin" / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--ws-ping-interval", "25",
        ]  # fmt: skip

    return argv


def _tidings_asgi(port: int, api_port: int, redis_url: str | None) -> list[str]:
    """tidings under uvicorn (uvloop, httptools, websockets' sans-I/O protocol)."""
    return [
        str(TIDINGS_PY), "-m", "uvicorn", "tidings_asgi:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log", "--loop", "uvloop",
        "--http", "httptools", "--ws", "websockets-sansio", "--ws-per-message-deflate", "false",
    ]  # fmt: skip


def _sio(port: int, api_port: int, redis_url: str | None) -> list[str]:
    cmd = [str(PEERS_PY), "sio_server.py", "--port", str(port)]
    return cmd + (["--redis", redis_url] if redis_url else [])


SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("tidings", "tidings", "centrifugo", "/connection/websocket", "/connection/websocket",
             _tidings("tidings-bench.toml")),
        # The same server, subscribers speaking Protobuf (subprotocol centrifuge-protobuf); the
        # publisher stays on JSON so that both rows pay the same publishing cost and differ only
        # in what the fan-out encodes and writes (the publication's data is the same JSON bytes).
        Spec("tidings-pb", "tidings, Protobuf", "centrifugo-pb", "/connection/websocket",
             "/connection/websocket", _tidings("tidings-bench.toml"), pub_mode="centrifugo"),
        # The same hub mounted in an ASGI application under uvicorn: the cost of Hub.asgi().
        Spec("tidings-asgi", "tidings mounted under uvicorn (ASGI)", "centrifugo",
             "/connection/websocket", "/connection/websocket", _tidings_asgi, cwd=PEERS,
             env={"TIDINGS_HTTP_API_PORT": "{api_port}"}),
        Spec("seed", "websockets broadcast() (seed)", "plain", "/", "/pub",
             lambda p, a, r: [str(PEERS_PY), "ws_broadcast.py", "--port", str(p)], cwd=PEERS,
             channels=False),
        Spec("seed-uvloop", "seed on uvloop", "plain", "/", "/pub",
             lambda p, a, r: [str(PEERS_PY), "ws_broadcast.py", "--port", str(p), "--uvloop"],
             cwd=PEERS, channels=False),
        Spec("seed-rooms", "seed pattern, a set per room", "plain", "/%s", "/pub",
             lambda p, a, r: [str(PEERS_PY), "ws_rooms.py", "--port", str(p)], cwd=PEERS),
        Spec("queue", "websockets per-connection queue", "plain", "/", "/pub",
             lambda p, a, r: [str(PEERS_PY), "ws_queue.py", "--port", str(p)], cwd=PEERS,
             channels=False),
        Spec("socketio", "python-socketio (aiohttp)", "socketio", SIO_PATH, SIO_PATH, _sio,
             cwd=PEERS),
        Spec("starlette", "Starlette + broadcaster", "plain", "/ws/%s", "/pub",
             _uvicorn("starlette_broadcaster:app"), cwd=PEERS),
        Spec("node", "Node.js ws", "plain", "/", "/pub",
             lambda p, a, r: ["node", "ws_node.js", "--port", str(p)], cwd=PEERS,
             env={"NODE_PATH": str(BENCH / "node_modules")}, channels=False),
        Spec("tidings-redis", "tidings, Redis broker", "centrifugo", "/connection/websocket",
             "/connection/websocket", _tidings("tidings-bench.toml"), redis=True),
        Spec("tidings-redis-history", "tidings, Redis broker, history on", "centrifugo",
             "/connection/websocket", "/connection/websocket",
             _tidings("tidings-bench-history.toml"), redis=True),
        Spec("tidings-redis-w1", "tidings --workers 1, Redis", "centrifugo",
             "/connection/websocket", "/connection/websocket",
             _tidings("tidings-bench.toml", "--workers", "1"), redis=True),
        Spec("tidings-redis-w2", "tidings --workers 2, Redis", "centrifugo",
             "/connection/websocket", "/connection/websocket",
             _tidings("tidings-bench.toml", "--workers", "2"), redis=True),
        Spec("socketio-redis", "python-socketio + AsyncRedisManager", "socketio", SIO_PATH,
             SIO_PATH, _sio, cwd=PEERS, redis=True),
        Spec("channels-redis", "Django Channels + channels_redis", "plain", "/ws/%s/", "/pub/",
             _uvicorn("djbench.asgi:application"), cwd=PEERS, redis=True),
        Spec("blaster", "C calibration server (wsblast)", "plain", "/sub", "/pub",
             lambda p, a, r: [str(WSBLAST), "--port", str(p)], channels=False),
    ]
}  # fmt: skip


class Server:
    """One server process (and its workers), pinned with taskset, stopped on exit.

    ``nice``: the server's (default: ``--server-nice``); ``log_path``: its output
    (default: raw/logs/server-TAG.log)."""

    def __init__(
        self,
        spec: Spec,
        cores: str = SERVER_CORES,
        redis_url: str | None = None,
        tag: str = "",
        nice: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.spec = spec
        self.cores = cores
        self.redis_url = redis_url
        self.port = free_port()
        self.api_port = free_port()
        self.tag = tag or spec.name
        self.nice = nice
        self.log_path = log_path or RAW / "logs" / f"server-{self.tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def __enter__(self) -> Server:
        command = self.spec.argv(self.port, self.api_port, self.redis_url)
        argv = ["taskset", "-c", self.cores, *command]
        nice = SERVER_NICE if self.nice is None else self.nice  # read now: main() sets it
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        # The project's .venv, not the caller's PYTHONPATH, unless the spec names one (a
        # source tree to measure); {api_port}: a server told its API port that way.
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(
            {k: v.replace("{api_port}", str(self.api_port)) for k, v in self.spec.env.items()}
        )
        if self.redis_url:
            env["BENCH_REDIS_URL"] = self.redis_url
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=self.spec.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_port(self.port, self.proc, self.spec.startup)
            time.sleep(0.3)
            self.pids = [self.proc.pid]
            if "--workers" in argv:
                workers = int(argv[argv.index("--workers") + 1])
                deadline = time.monotonic() + 10
                while len(children_of(self.proc.pid)) < workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.pids += children_of(self.proc.pid)
                time.sleep(1.0)  # every worker listening
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        stop_group(self.proc)
        # workers that outlived their master
        for pid in self.pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        self.proc = None

    def settled_metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """The metrics once the server has seen every connection go (or after timeout)."""
        deadline = time.monotonic() + timeout
        metrics = self.metrics()
        while metrics.get("tidings_connections", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            metrics = self.metrics()
        return metrics

    def metrics(self) -> dict[str, float]:
        """tidings' Prometheus counters (empty for other servers)."""
        if not self.spec.name.startswith("tidings"):
            return {}
        return tidings_metrics(self.api_port)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a process started in a session of its own and its group; SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def tidings_metrics(api_port: int) -> dict[str, float]:
    """The Prometheus counters of the tidings server whose HTTP API is on ``api_port``."""
    try:
        url = f"http://127.0.0.1:{api_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tidings_") and "_created" not in line:
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def redis_argv(port: int) -> list[str]:
    """redis-server on ``port`` of 127.0.0.1: no persistence, room for 20,000 clients."""
    return [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--daemonize", "no", "--maxclients", "20000",
    ]  # fmt: skip


@contextlib.contextmanager
def redis_server(cores: str = GEN_CORES) -> Iterator[str]:
    port = free_port()
    (RAW / "logs").mkdir(parents=True, exist_ok=True)
    logf = (RAW / "logs" / f"redis-{port}.log").open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", cores, *redis_argv(port)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(port, proc, 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


# --- the generator ---------------------------------------------------------------------


def wsbench(
    tag: str,
    server: Server,
    *,
    conns: int,
    size: int = 128,
    channels: int = 1,
    rates: list[float] | None = None,
    ramp: tuple[float, float, float] | None = None,
    refine: int = 0,
    confirm: bool = False,
    ramp_p99: float | None = None,
    step: float = 5.0,
    drain: float = 3.0,
    settle: float = 1.0,
    gap: float = 1.0,
    hold: float | None = None,
    slow: int = 0,
    slow_resume: float = 3.0,
    pub_conns: int = 1,
    pub_server: Server | None = None,
    inflight: int = 100,
    p99_limit: float = P99_LIMIT_MS,
    connect_timeout: float = 60.0,
    max_seconds: float = 300.0,
    cores: str = GEN_CORES,
) -> dict[str, Any]:
    spec = server.spec
    pub = pub_server or server
    args = [
        str(WSBENCH), "--port", str(server.port), "--mode", spec.mode, "--path", spec.sub_path,
        "--pub-port", str(pub.port), "--pub-path", pub.spec.pub_path,
        "--pub-mode", pub.spec.pub_mode or pub.spec.mode,
        "--pub-conns", str(pub_conns), "--conns", str(conns), "--channels", str(channels),
        "--size", str(size), "--step", str(step), "--drain", str(drain), "--settle", str(settle),
        "--gap", str(gap), "--inflight", str(inflight), "--connect-timeout", str(connect_timeout),
        "--p99-limit-ms", f"{p99_limit:g}", "--max-seconds", str(max_seconds),
    ]  # fmt: skip
    if rates:
        args += ["--rates", ",".join(f"{r:g}" for r in rates)]
    if ramp:
        args += ["--ramp", ":".join(f"{x:g}" for x in ramp), "--stop-on-fail"]
    if refine:
        args += ["--refine", str(refine)]
    if confirm:
        args += ["--confirm"]
    if ramp_p99:
        args += ["--ramp-p99-ms", f"{ramp_p99:g}"]
    if hold is not None:
        args += ["--hold", str(hold)]
    if slow:
        args += ["--slow", str(slow), "--slow-resume", str(slow_resume)]
    for pid in server.pids + (pub_server.pids if pub_server else []):
        args += ["--server-pid", str(pid)]
    RAW.mkdir(parents=True, exist_ok=True)
    busy_before = wait_quiet(QUIET_WAIT) if QUIET_WAIT > 0 else None
    out = RAW / f"{tag}.json"
    errlog = RAW / "logs" / f"wsbench-{tag}.log"
    errlog.parent.mkdir(parents=True, exist_ok=True)
    with errlog.open("w") as err:
        proc = subprocess.run(
            ["nice", "-n", str(GEN_NICE), "taskset", "-c", cores, *args, "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=err, timeout=max_seconds + connect_timeout + 60,
        )  # fmt: skip
    for line in errlog.read_text().splitlines():
        if line.startswith(("step", "connected")) or "lost" in line or "fail" in line:
            log(f"  {tag}: {line}")
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wsbench {tag} failed ({proc.returncode}); see {errlog}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["tag"] = tag
    data["server_name"] = spec.name
    data["machine_busy_before_pct"] = busy_before
    return data


def step_summary(st: dict[str, Any], conns: int) -> dict[str, Any]:
    lat = st["latency_us"]
    cores = st.get("cores") or []
    return {
        "rate": st["rate"],
        "offered_per_s": st["offered_deliveries_per_s"],
        "expected": st["expected"],
        "delivered": st["delivered"],
        "deliveries_per_s": st["deliveries_per_s"],
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "server_cpu_pct": st["server_cpu_pct"],
        "server_rss_mb": st["server_rss_kb"] / 1024,
        "server_hwm_mb": st["server_hwm_kb"] / 1024,
        "gen_cpu_pct": st["gen_cpu_pct"],
        "gen_cpu_us_per_delivery": st["gen_cpu_s"] / max(1, st["delivered"]) * 1e6,
        "core_busy_pct": [c.get("busy", 0.0) for c in cores],
        "core_softirq_pct": [c.get("softirq", 0.0) for c in cores],
        # Time the cores spent on other work than ours (other users of the machine); only
        # meaningful where the server has core 1 and the generator core 0 to themselves.
        "background_pct": _background(st, cores),
        "pub_errors": st["pub_errors"],
        "retry": bool(st.get("retry")),
        "ok": bool(st.get("ok", st["pass"])),
        "pass": st["pass"],
    }


def _background(st: dict[str, Any], cores: list[dict[str, float]]) -> list[float]:
    if len(cores) < 2:
        return []
    c0, c1 = cores[0], cores[1]
    other0 = c0["busy"] - c0["softirq"] - c0["irq"] - st["gen_cpu_pct"]
    other1 = c1["busy"] - c1["softirq"] - c1["irq"] - st["server_cpu_pct"]
    return [round(max(0.0, other0), 1), round(max(0.0, other1), 1)]


def cores_busy_now(seconds: float = 1.0) -> float:
    """Percent of all cores busy over the next ``seconds`` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
        values = [int(x) for x in fields]
        return sum(values), values[3] + values[4]

    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def wait_quiet(max_wait: float, threshold: float = 20.0) -> float:
    """Wait (up to max_wait s) until the machine is mostly idle; return the last busy %."""
    deadline = time.monotonic() + max_wait
    busy = cores_busy_now()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(2)
        busy = cores_busy_now()
    if busy > threshold:
        log(f"  the machine is busy with other work ({busy:.0f}% of the cores): measuring anyway")
    return busy


def sweep_summary(data: dict[str, Any]) -> dict[str, Any]:
    conns = data["config"]["conns"]
    steps = [step_summary(s, conns) for s in data["steps"]]
    passed = [s for s in steps if s["pass"]]
    best = max(passed, key=lambda s: s["rate"]) if passed else None
    # the limit: the lowest failure above the best pass (a failure below it, or one that passed
    # when tried again with --confirm, is noise)
    failed = [s for s in steps if not s["pass"] and s["rate"] > (best["rate"] if best else 0)]
    first_fail = min(failed, key=lambda s: s["rate"]) if failed else None
    complete = [s for s in steps if s["ok"]]
    best_ok = max(complete, key=lambda s: s["rate"]) if complete else None
    return {
        "server": data["server_name"],
        "ramp_p99_ms": data["config"].get("ramp_p99_ms"),
        # the highest step with everything delivered and p99 under the ramp's looser limit
        "max_complete_deliveries_per_s": best_ok["deliveries_per_s"] if best_ok else 0.0,
        "max_complete_p99_ms": best_ok["p99_ms"] if best_ok else None,
        "conns": conns,
        "channels": data["config"]["channels"],
        "size": data["config"]["size"],
        "connect": data["connect"],
        "steps": steps,
        "best": best,
        "max_rate": best["rate"] if best else 0.0,
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "first_fail_rate": first_fail["rate"] if first_fail else None,
        "ramp_exhausted": bool(steps) and first_fail is None,
        "closes": data.get("closes", {}),
        "machine_busy_before_pct": data.get("machine_busy_before_pct"),
        "raw": data["tag"],
    }


# --- scenarios -------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    step: float
    refine: int
    confirm: bool
    quiet_wait: float
    fanout_servers: list[str]
    # (subscribers, size, step s, refine steps, ramp p99 ms: the ramp goes on past the 50 ms
    # limit while everything is delivered with p99 under this, to show the throughput limit)
    fanout_cases: list[tuple[int, int, float, int, float]]
    extra_fanout: list[str]  # servers only run in the 1000 x 128 B case
    # (subscribers, size) of the fan-out cases that also run tidings with Protobuf subscribers
    pb_fanout_cases: list[tuple[int, int]]
    # 10,000 subscribers on one channel at a fixed rate: a warm-up step, then the measured one
    latency10k_servers: list[str]
    latency10k_rate: float
    latency10k_seconds: float
    latency10k_p99_ms: float  # the target, passed to wsbench as the step's pass limit
    many_servers: list[str]
    idle_conns: int
    idle_servers: list[str]
    slow_servers: list[str]
    slow_rate: float
    slow_size: int
    slow_seconds: float
    redis_fanout: list[str]
    calib_rates: list[float]
    crossnode_rates: list[float]
    profile_seconds: float


def make_plan(quick: bool) -> Plan:
    peers = ["tidings", "seed", "queue", "socketio", "starlette", "node"]
    if quick:
        return Plan(
            quick=True, step=2.0, refine=0, confirm=False, quiet_wait=5, fanout_servers=peers, fanout_cases=[(1000, 128, 2.0, 0, 50)],
            extra_fanout=["tidings-asgi"], pb_fanout_cases=[(1000, 128)],
            latency10k_servers=["tidings", "tidings-pb", "blaster"], latency10k_rate=2.0,
            latency10k_seconds=4.0, latency10k_p99_ms=60.0,
            many_servers=["tidings", "tidings-pb", "seed-rooms"], idle_conns=2000,
            idle_servers=["tidings", "tidings-pb", "tidings-asgi", "seed"], slow_servers=["tidings"], slow_rate=50,
            slow_size=4096, slow_seconds=20, redis_fanout=["tidings-redis", "socketio-redis",
            "channels-redis"], calib_rates=[200, 1000], crossnode_rates=[20],
            profile_seconds=5,
        )  # fmt: skip
    return Plan(
        quick=False, step=5.0, refine=2, confirm=True, quiet_wait=5, fanout_servers=peers,
        fanout_cases=[(1000, 128, 4.0, 2, 1000), (1000, 4096, 4.0, 1, 50),
                      (10000, 128, 4.0, 1, 1000), (10000, 4096, 4.0, 1, 1000)],
        extra_fanout=["seed-uvloop", "tidings-asgi"], pb_fanout_cases=[(1000, 128), (10000, 128)],
        latency10k_servers=["tidings", "tidings-pb", "seed", "node", "blaster"],
        latency10k_rate=2.0, latency10k_seconds=10.0, latency10k_p99_ms=60.0,
        many_servers=["tidings", "tidings-pb", "seed-rooms", "socketio", "starlette"],
        idle_conns=15000, idle_servers=["tidings", "tidings-pb", "tidings-asgi", *peers[1:]],
        slow_servers=["tidings", "seed", "node"],
        slow_rate=50, slow_size=4096, slow_seconds=30,
        redis_fanout=["tidings-redis", "socketio-redis", "channels-redis"],
        calib_rates=[100, 200, 500, 1000, 2000], crossnode_rates=[20, 50], profile_seconds=15,
    )  # fmt: skip


class Suite:
    def __init__(self, plan: Plan, servers: set[str] | None, outdir: Path) -> None:
        self.plan = plan
        self.only_servers = servers
        self.outdir = outdir
        self.summary: dict[str, Any] = {"runs": {}, "errors": []}

    def wanted(self, name: str) -> bool:
        return self.only_servers is None or name in self.only_servers

    def record(self, scenario: str, key: str, value: Any) -> None:
        value = dict(value, recorded=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        self.summary["runs"].setdefault(scenario, {})[key] = value
        self.save()

    def save(self) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        (self.outdir / "summary.json").write_text(json.dumps(self.summary, indent=1))

    def guarded(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one broken peer must not stop the suite
            log(f"ERROR in {what}: {exc}")
            self.summary["errors"].append(f"{what}: {exc}")
            self.save()

    # calibration: the generator against a trivial C server
    def calibration(self) -> None:
        p = self.plan
        with Server(SPECS["blaster"], tag="calibration") as srv:
            data = wsbench("calibration-relay", srv, conns=1000, rates=p.calib_rates,
                           step=p.step, max_seconds=120)  # fmt: skip
        self.record("calibration", "relay", sweep_summary(data))
        # flood: the server writes frames of 10 messages as fast as the sockets take them
        spec = Spec("blaster-flood", "wsblast --flood", "plain", "/sub", "/pub",
                    lambda port, a, r: [str(WSBLAST), "--port", str(port), "--flood", "10",
                                        "--expect", "1000", "--seconds", str(p.step * 2)])  # fmt: skip
        with Server(spec, tag="calibration-flood") as srv:
            data = wsbench("calibration-flood", srv, conns=1000, rates=[0], step=p.step * 2 + 3,
                           settle=0, drain=0, max_seconds=120)  # fmt: skip
        st = data["steps"][0]
        span = st["delivery_span_s"] or 1.0
        self.record("calibration", "flood", {
            "delivered": st["delivered"], "span_s": span, "deliveries_per_s": st["delivered"] / span,
            "gen_cpu_us_per_delivery": st["gen_cpu_s"] / max(1, st["delivered"]) * 1e6,
            "gen_cpu_pct": st["gen_cpu_pct"], "core_busy_pct": [c["busy"] for c in st["cores"]],
            "p50_ms": st["latency_us"]["p50"] / 1000, "p99_ms": st["latency_us"]["p99"] / 1000,
        })  # fmt: skip

    def _sweep(self, scenario: str, name: str, *, conns: int, size: int, channels: int = 1,
               start: float, factor: float = 2.0, cap: float, pub_conns: int = 1,
               redis_url: str | None = None, cores: str = SERVER_CORES,
               gen_cores: str = GEN_CORES, step: float | None = None,
               refine: int | None = None, ramp_p99: float | None = None) -> dict[str, Any]:  # fmt: skip
        p = self.plan
        step = step or p.step
        refine = p.refine if refine is None else refine
        tag = f"{scenario}-{name}-{conns}x{size}" + (f"-{channels}ch" if channels > 1 else "")
        with Server(SPECS[name], cores=cores, redis_url=redis_url, tag=tag) as srv:
            before = srv.metrics()
            data = wsbench(
                tag, srv, conns=conns, size=size, channels=channels, ramp=(start, factor, cap),
                refine=refine, confirm=p.confirm, ramp_p99=ramp_p99, step=step, pub_conns=pub_conns, inflight=100,
                connect_timeout=120, max_seconds=90 + 16 * (step + 5), cores=gen_cores,
            )  # fmt: skip
            after = srv.settled_metrics()
        summary = sweep_summary(data)
        summary["metrics"] = _metrics_delta(before, after)
        return summary

    def fanout(self) -> None:
        p = self.plan
        pb_cases = {(c, s) for c, s in p.pb_fanout_cases}
        for conns, size, step, refine, ramp_p99 in p.fanout_cases:
            names = list(p.fanout_servers)
            if (conns, size) == (1000, 128):
                names += p.extra_fanout
            if (conns, size) in pb_cases and "tidings" in names:
                # right after the JSON row: the two run side by side, under the same conditions
                names.insert(names.index("tidings") + 1, "tidings-pb")
            for name in names:
                if not self.wanted(name):
                    continue
                # start at 2,500 (1,000 subscribers) or 5,000 deliveries/s, double until a step fails
                start = (2500 if conns <= 1000 else 5000) / conns
                key = f"{name}/{conns}x{size}"

                def run(name: str = name, conns: int = conns, size: int = size, start: float = start,
                        key: str = key, step: float = step, refine: int = refine,
                        ramp_p99: float = ramp_p99) -> None:  # fmt: skip
                    self.record("fanout", key, self._sweep(
                        "fanout", name, conns=conns, size=size, start=start, cap=start * 2**11,
                        step=step, refine=refine, ramp_p99=ramp_p99))  # fmt: skip

                self.guarded(f"fanout {key}", run)
        self.latency_10k()

    def latency_10k(self) -> None:
        """10,000 subscribers on one channel at a fixed low rate: the latency of a broadcast.

        Every delivery to every subscriber is a sample (wsbench records them all), so the p99
        covers the whole set, not the first connections written to. The first step warms up
        (first publications after 10,000 connects) and is reported apart; the second counts.
        ``blaster`` (wsblast, C, writes only) under the same load is the floor: what the
        machine's loopback TCP and the generator alone cost.
        """
        p = self.plan
        for name in p.latency10k_servers:
            if not self.wanted(name):
                continue

            def run(name: str = name) -> None:
                tag = f"latency10k-{name}"
                step = p.latency10k_seconds
                with Server(SPECS[name], tag=tag) as srv:
                    before = srv.metrics()
                    data = wsbench(tag, srv, conns=10000, size=128,
                                   rates=[p.latency10k_rate, p.latency10k_rate], step=step,
                                   p99_limit=p.latency10k_p99_ms, connect_timeout=120,
                                   max_seconds=2 * (step + 5) + 60)  # fmt: skip
                    after = srv.settled_metrics()
                steps = [step_summary(st, 10000) for st in data["steps"]]
                self.record("latency_10k", name, {
                    "server": name, "conns": 10000, "size": 128, "rate": p.latency10k_rate,
                    "seconds": step, "p99_limit_ms": p.latency10k_p99_ms,
                    "warmup": steps[0] if len(steps) > 1 else None,
                    "step": steps[-1] if steps else None,
                    "connect": data["connect"], "closes": data.get("closes", {}),
                    "metrics": _metrics_delta(before, after), "raw": tag,
                })  # fmt: skip

            self.guarded(f"latency10k {name}", run)

    def many_channels(self) -> None:
        for name in self.plan.many_servers:
            if not self.wanted(name):
                continue
            self.guarded(f"many {name}", lambda name=name: self.record(
                "many_channels", name, self._sweep(
                    "many", name, conns=10000, size=128, channels=1000, start=500, cap=500 * 2**8,
                    pub_conns=4)))  # fmt: skip

    def idle(self) -> None:
        p = self.plan
        for name in p.idle_servers:
            if not self.wanted(name):
                continue

            def run(name: str = name) -> None:
                tag = f"idle-{name}-{p.idle_conns}"
                with Server(SPECS[name], tag=tag) as srv:
                    time.sleep(1.0)
                    data = wsbench(tag, srv, conns=p.idle_conns, hold=5.0, settle=2.0,
                                   inflight=100, connect_timeout=180, max_seconds=240)  # fmt: skip
                srv_stats = data["server"]
                base = srv_stats["baseline"]["rss_kb"]
                held = srv_stats["held"]["rss_kb"] or srv_stats["connected"]["rss_kb"]
                ready = data["connect"]["ready"]
                self.record("idle", name, {
                    "conns": p.idle_conns, "ready": ready, "failed": data["connect"]["failed"],
                    "baseline_rss_kb": base, "rss_kb": held, "hwm_kb": srv_stats["held"]["hwm_kb"],
                    "kib_per_conn": (held - base) / ready if ready else None,
                    "connect_seconds": data["connect"]["seconds"], "connect_rate": data["connect"]["rate"],
                    "connect_latency_us": data["connect"]["latency_us"], "raw": tag,
                })  # fmt: skip

            self.guarded(f"idle {name}", run)

    def slow_client(self) -> None:
        p = self.plan
        for name in p.slow_servers:
            if not self.wanted(name):
                continue

            def run(name: str = name) -> None:
                tag = f"slow-{name}"
                with Server(SPECS[name], tag=tag) as srv:
                    before = srv.metrics()
                    # watch tidings' counter of 3008 disconnects to time the disconnection
                    seen: dict[str, float] = {}
                    stop = threading.Event()
                    key = 'tidings_disconnects_total{code="3008"}'

                    overflows = "tidings_queue_overflows_total"

                    def watch() -> None:
                        t0 = time.monotonic()
                        while not stop.wait(0.5):
                            now = srv.metrics()
                            if now.get(key, 0) > before.get(key, 0) or now.get(
                                overflows, 0
                            ) > before.get(overflows, 0):
                                seen["after_s"] = time.monotonic() - t0
                                return

                    watcher = threading.Thread(target=watch, daemon=True)
                    if name.startswith("tidings"):
                        watcher.start()
                    data = wsbench(tag, srv, conns=1000, size=p.slow_size, rates=[p.slow_rate],
                                   step=p.slow_seconds, slow=1, slow_resume=5.0,
                                   max_seconds=p.slow_seconds + 60)  # fmt: skip
                    stop.set()
                    after = srv.settled_metrics()
                    rss = data["steps"][0]["server_hwm_kb"] if data["steps"] else 0
                st = step_summary(data["steps"][0], 1000) if data["steps"] else None
                metrics = _metrics_delta(before, after)
                slow = data["slow"][0] if data["slow"] else {}
                self.record("slow_client", name, {
                    "rate": p.slow_rate, "size": p.slow_size, "seconds": p.slow_seconds,
                    "others": st, "slow": slow, "server_hwm_kb": rss,
                    "server_3008": metrics.get('tidings_disconnects_total{code="3008"}'),
                    # seconds from the generator's start (connect ~1-2 s, then publishing)
                    "server_3008_after_s": seen.get("after_s"),
                    "server_overflows": metrics.get("tidings_queue_overflows_total"),
                    "server_disconnects": {
                        k.split('"')[1]: v for k, v in metrics.items()
                        if k.startswith("tidings_disconnects_total{")
                    },  # fmt: skip
                    "closes": data.get("closes", {}), "raw": tag,
                })  # fmt: skip

            self.guarded(f"slow {name}", run)

    def redis(self) -> None:
        p = self.plan
        with redis_server() as url:
            for name in p.redis_fanout:
                if not self.wanted(name):
                    continue
                self.guarded(f"redis fanout {name}", lambda name=name: self.record(
                    "redis_fanout", name, self._sweep(
                        "redisfan", name, conns=1000, size=128, start=2.5, cap=2.5 * 2**10,
                        redis_url=url)))  # fmt: skip
            if not self.wanted("tidings-redis"):
                return
            # publishes/s through the broker, with and without history: 10 subscribers
            for name in ["tidings-redis-history", "tidings-redis"]:
                self.guarded(f"redis publish {name}", lambda name=name: self.record(
                    "redis_publish", name, self._sweep(
                        "redispub", name, conns=10, size=128, start=500, cap=500 * 2**7,
                        pub_conns=4, redis_url=url)))  # fmt: skip
            self.guarded("cross-node", lambda: self._crossnode(url))
            for name in ["tidings-redis-w1", "tidings-redis-w2"]:
                self.guarded(f"workers {name}", lambda name=name: self.record(
                    "workers", name, self._sweep(
                        "workers", name, conns=1000, size=128, start=2.5, cap=2.5 * 2**10,
                        redis_url=url, cores=ALL_CORES, gen_cores=ALL_CORES)))  # fmt: skip

    def _crossnode(self, url: str) -> None:
        p = self.plan
        spec = SPECS["tidings-redis"]
        step = max(p.step, 5.0) * 2
        # the same loads on both setups: a quarter and half of the highest passing fan-out
        # rate through Redis, when it was measured
        best = self.summary["runs"].get("redis_fanout", {}).get("tidings-redis", {}).get("max_rate")
        rates = [round(best * f, 1) for f in (0.25, 0.5)] if best else p.crossnode_rates
        if p.quick:
            rates = rates[:1]
        rates = [rates[0], *rates]  # a warm-up step first, left out of the comparison
        # single node: subscribers and publisher on node A (core 1)
        with Server(spec, redis_url=url, tag="crossnode-single") as a:
            single = wsbench("crossnode-single", a, conns=1000, rates=rates,
                             step=step, max_seconds=200)  # fmt: skip
        # two nodes: subscribers on B (core 1), the publisher on A (core 0, with the generator)
        with Server(spec, redis_url=url, tag="crossnode-b") as b, \
                Server(spec, cores=GEN_CORES, redis_url=url, tag="crossnode-a") as a:  # fmt: skip
            cross = wsbench("crossnode-cross", b, pub_server=a, conns=1000, rates=rates,
                            step=step, max_seconds=200)  # fmt: skip
        for key, data in (("single", single), ("cross", cross)):
            # the first step only warms up (connections to Redis, first publications)
            warmup, data["steps"] = data["steps"][:1], data["steps"][1:]
            summary = sweep_summary(data)
            summary["warmup"] = [step_summary(st, 1000) for st in warmup]
            self.record("crossnode", key, summary)

    def profile(self) -> None:
        """py-spy record of tidings under fan-out load (1000 subscribers, 128 B)."""
        p = self.plan
        pyspy = PEERS_VENV / "bin" / "py-spy"
        best = self.summary["runs"].get("fanout", {}).get("tidings/1000x128", {})
        rate = (best.get("first_fail_rate") or 100) * 0.8
        tag = "profile-tidings"
        with Server(SPECS["tidings"], tag=tag) as srv:
            dur = p.profile_seconds
            gen = subprocess.Popen(
                ["nice", "-n", str(GEN_NICE), "taskset", "-c", GEN_CORES, str(WSBENCH), "--port", str(srv.port), "--conns", "1000",
                 "--rates", f"{rate:g}", "--step", str(dur + 6), "--max-seconds", str(dur + 40),
                 "--server-pid", str(srv.proc.pid if srv.proc else 0), "--out", str(RAW / f"{tag}.json")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(3)
            outs = {}
            for fmt, suffix in [("flamegraph", "svg"), ("speedscope", "speedscope.json")]:
                target = self.outdir / f"profile-fanout.{suffix}"
                if fmt == "speedscope":
                    target = RAW / f"profile-fanout.{suffix}"
                subprocess.run(
                    ["taskset", "-c", GEN_CORES, str(pyspy), "record", "--pid", str(srv.proc.pid if srv.proc else 0),
                     "--duration", str(int(dur / 2)), "--rate", "100", "--nonblocking", "--format", fmt,
                     "-o", str(target)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=dur + 30, check=False,
                )  # fmt: skip
                outs[fmt] = str(target.relative_to(ROOT)) if target.exists() else None
            gen.wait(timeout=dur + 60)
        self.record("profile", "tidings", {"rate": rate, "conns": 1000, "size": 128, "files": outs})


def _metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


# --- machine and versions --------------------------------------------------------------


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    peers_versions = _cmd(
        str(PEERS_PY), "-c",
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "['websockets','python-socketio','python-engineio','aiohttp','uvicorn','starlette',"
        "'broadcaster','channels','channels-redis','django','redis','uvloop','py-spy','matplotlib']}))",
    )  # fmt: skip
    tidings_versions = _cmd(
        str(TIDINGS_PY), "-c",
        "import importlib.metadata as m, json, sys; print(json.dumps({'python': sys.version.split()[0], "
        "**{n: m.version(n) for n in ['tidings','websockets','msgspec','uvloop','redis']}}))",
    )  # fmt: skip
    node_ws = _cmd(
        "node", "-e", f"console.log(require('{BENCH}/node_modules/ws/package.json').version)"
    )
    try:
        rlimit = Path("/proc/self/limits").read_text()
        nofile = next(line for line in rlimit.splitlines() if "open files" in line).split()[3:5]
    except (OSError, StopIteration):
        nofile = ["?"]
    git = _cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": _cmd("uname", "-r"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "nofile_limit": nofile,
        "tidings_env": _json_or(tidings_versions),
        "peers_env": _json_or(peers_versions),
        "node": _cmd("node", "--version"),
        "node_ws": node_ws,
        "redis_server": _cmd("redis-server", "--version"),
        "gcc": _cmd("gcc", "--version").splitlines()[0] if _cmd("gcc", "--version") else "?",
        "git_commit": git,
    }


def _json_or(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- main ------------------------------------------------------------------------------


SCENARIOS = ["calibration", "fanout", "many", "idle", "slow", "redis", "profile"]


def main() -> int:
    global QUIET_WAIT, GEN_NICE, SERVER_NICE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke version (~10 minutes)")
    parser.add_argument("--only", help=f"comma-separated scenarios of {SCENARIOS}")
    parser.add_argument("--servers", help="comma-separated server names (default: all)")
    parser.add_argument("--profile", action="store_true", help="only record the py-spy profile")
    parser.add_argument(
        "--gen-nice", type=int, default=GEN_NICE, help="nice of the generator (-10)"
    )
    parser.add_argument(
        "--server-nice", type=int, default=SERVER_NICE, help="nice of the servers (0)"
    )
    parser.add_argument(
        "--out", help="output directory (default bench/results or bench/results/quick)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild REPORT.md from summary.json"
    )
    args = parser.parse_args()

    for tool in (WSBENCH, WSBLAST, TIDINGS_PY, PEERS_PY):
        if not Path(tool).exists():
            print(
                f"missing {tool}: run `make bench` (or `make bench-build bench-deps`)",
                file=sys.stderr,
            )
            return 2
    plan = make_plan(args.quick)
    QUIET_WAIT = plan.quiet_wait
    GEN_NICE, SERVER_NICE = args.gen_nice, args.server_nice
    outdir = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS)
    from report import write_report  # bench/report.py (matplotlib)

    if args.report_only:
        summary = json.loads((outdir / "summary.json").read_text())
        write_report(summary, outdir)
        return 0
    scenarios = ["profile"] if args.profile else (args.only.split(",") if args.only else SCENARIOS)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    servers = set(args.servers.split(",")) if args.servers else None
    suite = Suite(plan, servers, outdir)
    previous = outdir / "summary.json"
    old: dict[str, Any] = {}
    if (args.only or args.servers or args.profile) and previous.exists():
        # a partial run updates the previous results instead of replacing them
        with contextlib.suppress(ValueError):
            old = json.loads(previous.read_text())
            suite.summary["runs"] = old.get("runs", {})
            suite.summary["errors"] = old.get("errors", [])
    started = time.monotonic()
    rerun: dict[str, Any] | None = None
    if old.get("meta"):
        # The report keeps the full run's machine and plan, and lists what was re-run.
        machine = machine_info()
        rerun = {
            "date": machine.get("date"),
            "git_commit": machine.get("git_commit"),
            "scenarios": scenarios,
            "servers": sorted(servers) if servers else "all",
            "loadavg_start": machine.get("loadavg_start"),
        }
        suite.summary["meta"] = old["meta"]
        suite.summary["meta"].setdefault("reruns", []).append(rerun)
    else:
        suite.summary["meta"] = {
            "machine": machine_info(),
            "quick": plan.quick,
            "scenarios": scenarios,
            "plan": plan.__dict__,
            "p99_limit_ms": P99_LIMIT_MS,
            "nice": {"generator": args.gen_nice, "server": args.server_nice},
            "cores": {
                "default": f"server under test: taskset -c {SERVER_CORES}; generator (wsbench, and redis-server "
                f"in the Redis runs): taskset -c {GEN_CORES}",
                "crossnode": "node B (subscribers) on core 1; node A (publisher), redis-server and the "
                "generator on core 0",
                "workers": "tidings (master + workers), redis-server and the generator all share cores 0,1",
            },
        }
    log(
        f"benchmark: {'quick' if plan.quick else 'full'}; scenarios {scenarios}; results in {outdir}"
    )
    steps = {
        "calibration": suite.calibration,
        "fanout": suite.fanout,
        "many": suite.many_channels,
        "idle": suite.idle,
        "slow": suite.slow_client,
        "redis": suite.redis,
        "profile": suite.profile,
    }
    try:
        for name in scenarios:
            log(f"== {name}")
            suite.guarded(name, steps[name])
    finally:
        ended = {
            "duration_s": round(time.monotonic() - started, 1),
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        }
        (rerun if rerun is not None else suite.summary["meta"]).update(ended)
        suite.save()
        write_report(suite.summary, outdir)
    log(f"done in {time.monotonic() - started:.0f}s: {outdir / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
