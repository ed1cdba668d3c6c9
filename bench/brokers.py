#!/usr/bin/env python3
"""Fan-out and publishing through the brokers: memory, Redis and NATS, one node and two.

    .venv/bin/python bench/brokers.py               # full (~25 min): bench/results/brokers/
    .venv/bin/python bench/brokers.py --quick       # a smoke run: bench/results/quick/brokers/
    .venv/bin/python bench/brokers.py --only fanout --rows memory,redis
    .venv/bin/python bench/brokers.py --src /tmp/tree/src --out /tmp/after   # another tree
    .venv/bin/python bench/brokers.py --report-only [--compare /tmp/after/summary.json]

The issue's scenario: one channel, 1,000 subscribers (``bench/build/wsbench``,
Centrifugo JSON protocol), 128-byte publications sent by the generator's publisher
connection (the ``publish`` command) at rates doubling from 20 msg/s until a step
fails (run once more; then bisection steps). A step **passes** when every
subscriber got every publication and p99 <= 50 ms. Rows (part ``fanout``):

- ``memory``, ``redis``, ``nats``: one node (core 1); subscribers and publisher on it;
- ``redis-2node``, ``nats-2node``: subscribers on node B (core 1), the publisher's
  connection on node A (core 0, with the generator and the broker server).

Part ``publish``: publishes/s with history on (bench/tidings-bench-history.toml:
100 publications, 300 s), NATS beside Redis, through 8 publisher connections of
the generator to one node, with 10 subscribers on one channel and with 100
subscribers on 100 channels (one each), and without history on one channel.
Same ramp and criterion, from 250 msg/s.

Part ``profile``: py-spy (``record --format raw``) of the one-node Redis hub and of the
NATS one, each at the first rate its row failed at (``--profile-rate``), summed up by
where the time goes.

redis-server and ``nats-server -js`` (a fresh one per row, on free ports, JetStream
storage in a temporary directory) run on the generator's core (0), as in run.py;
the hubs run ``tidings serve --config <file> --broker <url>`` from the project's
``.venv`` (``--src DIR``: with ``PYTHONPATH=DIR``, to measure another source tree).
Each step records the CPU of every hub and of the broker server (sampled from
/proc during the step's publishing window), the generator's, each core's busy time
and the load average. ``--compare SUMMARY`` adds a before/after table of another
run's fan-out rows (``--compare-label`` names it).

Outputs: ``summary.json`` and ``REPORT.md`` in ``--out`` (bench/results/brokers, or
bench/results/quick/brokers with --quick); generator JSON, logs and profiles in
bench/results/raw/brokers/ (raw/brokers-src/ with --src).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procstats  # noqa: E402
import run  # noqa: E402  (bench/run.py: free ports, step summaries, logging)
import scripting  # noqa: E402
from procstats import cpu_seconds  # noqa: E402
from run import RESULTS, ROOT, TIDINGS_PY, WSBENCH, Server, Spec, log  # noqa: E402
from scripting import met, ms, num  # noqa: E402

RAW = run.RAW / "brokers"
NATS_SERVER = Path(os.environ.get("NATS_SERVER", "/usr/sbin/nats-server"))
CONFIG = BENCH / "tidings-bench.toml"
CONFIG_HISTORY = BENCH / "tidings-bench-history.toml"
P99_LIMIT_MS = 50.0
TARGET_DELIVERIES = 500_000
"""The issue's target over Redis and over NATS, one node: deliveries/s at p99 <= 50 ms."""
CROSS_RATIO = 2.0
"""Cross-node p99 <= this x single-node p99 at the same load."""
FANOUT_ROWS = ["memory", "redis", "nats", "redis-2node", "nats-2node"]
PUBLISH_ROWS = [
    "redis-history",
    "nats-history",
    "redis-history-100ch",
    "nats-history-100ch",
    "redis",
    "nats",
]
PARTS = ["fanout", "publish", "profile"]
LABELS = {
    "memory": "memory broker, one node",
    "redis": "Redis, one node",
    "nats": "NATS, one node",
    "redis-2node": "Redis, two nodes",
    "nats-2node": "NATS, two nodes",
}


@dataclass
class Plan:
    quick: bool
    subscribers: int
    size: int
    step: float
    drain: float
    start: float
    cap: float
    ramp_p99: float
    refine: int
    confirm: bool
    pub_start: float
    pub_cap: float
    pub_conns: int
    profile_seconds: float
    profile_rate: float | None
    src: str | None
    nice: int


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    return Plan(
        quick=quick,
        subscribers=args.subscribers or 1000,
        size=128,
        step=args.step or (2.0 if quick else 5.0),
        drain=3.0,
        start=20.0 if not quick else 40.0,
        cap=20.0 * 2**9,
        ramp_p99=1000.0,
        refine=0 if quick else 2,
        confirm=not quick,
        pub_start=250.0,
        pub_cap=250.0 * 2**8,
        pub_conns=8,
        profile_seconds=4.0 if quick else 8.0,
        profile_rate=args.profile_rate,
        src=str(Path(args.src).resolve()) if args.src else None,
        nice=args.nice,
    )


# --- processes -------------------------------------------------------------------------


@dataclass
class BrokerServer:
    kind: str
    url: str
    pid: int | None


@contextlib.contextmanager
def broker_server(kind: str, tag: str, nice: int = 0) -> Iterator[BrokerServer]:
    """A fresh redis-server or nats-server on a free port, on the generator's core."""
    if kind == "memory":
        yield BrokerServer(kind, "memory", None)
        return
    port = run.free_port()
    RAW.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        logf = stack.enter_context((RAW / f"{tag}-{kind}.log").open("wb"))
        if kind == "redis":
            argv = run.redis_argv(port)
            url = f"redis://127.0.0.1:{port}/0"
        elif kind == "nats":
            store = stack.enter_context(tempfile.TemporaryDirectory(prefix="brokers-nats-"))
            argv = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store]
            url = f"nats://127.0.0.1:{port}"
        else:
            raise ValueError(kind)
        proc = subprocess.Popen(
            [*_niced(nice), "taskset", "-c", run.GEN_CORES, *argv], stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            run.wait_port(port, proc, 15)
            yield BrokerServer(kind, url, proc.pid)
        finally:
            run.stop_group(proc)


def _niced(nice: int) -> list[str]:
    return ["nice", "-n", str(nice)] if nice else []


def hub_server(
    config: Path, broker: str, cores: str, tag: str, src: str | None, nice: int = 0
) -> Server:
    """One ``tidings serve --broker URL`` (run.py's Server: pinned with taskset, started
    and stopped by ``with``), from ``src`` when given; its output in RAW/TAG.log."""

    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        return [
            str(TIDINGS_PY), "-m", "tidings", "serve", "--config", str(config),
            "--port", str(port), "--api-port", str(api_port), "--broker", broker,
        ]  # fmt: skip

    path = "/connection/websocket"
    env = {"PYTHONPATH": src} if src else {}
    spec = Spec("tidings", "tidings", "centrifugo", path, path, argv, env=env)
    return Server(spec, cores=cores, tag=tag, nice=nice, log_path=RAW / f"{tag}.log")


class CpuSampler:
    """CPU seconds of some processes every ``period`` s, to read any window's share."""

    def __init__(self, pids: dict[str, int], period: float = 0.1) -> None:
        self.pids = pids
        self.period = period
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    last[name] = cpu_seconds(pid)
            self.samples.append((now, dict(last)))
            if self._stop.wait(self.period):
                return

    def _at(self, name: str, t: float) -> float | None:
        points = [(ts, v[name]) for ts, v in self.samples if name in v]
        if not points or t < points[0][0] or t > points[-1][0]:
            return None
        for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return points[-1][1]

    def pct(self, name: str, t0: float, t1: float) -> float | None:
        a, b = self._at(name, t0), self._at(name, t1)
        return None if a is None or b is None or t1 <= t0 else round(100 * (b - a) / (t1 - t0), 1)


# --- the generator -----------------------------------------------------------------------


def wsbench(
    plan: Plan,
    tag: str,
    sub: Server,
    pub: Server,
    *,
    conns: int,
    channels: int,
    pub_conns: int,
    start: float,
    cap: float,
    watch: dict[str, int],
    ramp_p99: float | None = None,
) -> dict[str, Any]:
    """One ramp; each step gets ``cpu_pct``: the CPU of every ``watch`` process while it
    published (sampled here: the generator only sums its --server-pid processes)."""
    RAW.mkdir(parents=True, exist_ok=True)
    out = RAW / f"{tag}.json"
    out.unlink(missing_ok=True)
    argv = [
        "nice", "-n", str(run.GEN_NICE), "taskset", "-c", run.GEN_CORES, str(WSBENCH),
        "--port", str(sub.port), "--path", "/connection/websocket", "--mode", "centrifugo",
        "--pub-port", str(pub.port), "--pub-path", "/connection/websocket",
        "--pub-mode", "centrifugo", "--pub-conns", str(pub_conns), "--conns", str(conns),
        "--channels", str(channels), "--size", str(plan.size), "--step", str(plan.step),
        "--drain", str(plan.drain), "--settle", "1", "--gap", "1", "--inflight", "100",
        "--connect-timeout", "60", "--p99-limit-ms", f"{P99_LIMIT_MS:g}",
        "--ramp", f"{start:g}:2:{cap:g}", "--stop-on-fail", "--refine", str(plan.refine),
        "--max-seconds", str(int(90 + 20 * (plan.step + plan.drain + 2))), "--out", str(out),
    ]  # fmt: skip
    if plan.confirm:
        argv.append("--confirm")
    if ramp_p99:
        argv += ["--ramp-p99-ms", f"{ramp_p99:g}"]
    for pid in {sub.pids[0], pub.pids[0]}:
        argv += ["--server-pid", str(pid)]
    ended: dict[int, float] = {}
    with (
        (RAW / f"{tag}.wsbench.log").open("w") as errlog,
        CpuSampler(watch) as sampler,
    ):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            errlog.write(line)
            if line.startswith("step "):
                ended[int(line.split()[1].rstrip(":"))] = time.monotonic()
            if line.startswith(("step", "connected")) or "lost" in line or "fail" in line:
                log(f"  {tag}: {line.rstrip()}")
        proc.wait(30)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wsbench {tag} failed ({proc.returncode}); see {errlog.name}")
    data: dict[str, Any] = json.loads(out.read_text())
    for k, st in enumerate(data["steps"]):
        t_end = ended.get(k)
        if t_end is None:
            continue
        t1 = t_end - st["drain_s"]
        t0 = t1 - st["window_s"]
        st["cpu_pct"] = {name: sampler.pct(name, t0, t1) for name in watch}
    data["tag"] = tag
    return data


def step_row(st: dict[str, Any], conns: int, where: dict[str, str]) -> dict[str, Any]:
    """run.py's step summary, with each process' CPU and the other work on each core."""
    row = run.step_summary(st, conns)
    cpu = st.get("cpu_pct") or {}
    row["cpu_pct"] = cpu
    row["published"] = st["published"]
    row["published_per_s"] = st["published"] / st["window_s"] if st["window_s"] else 0.0
    cores = st.get("cores") or []
    other = []
    for index, core in enumerate(cores):
        ours = sum(v or 0.0 for name, v in cpu.items() if where.get(name) == str(index))
        if str(index) == run.GEN_CORES:
            ours += st["gen_cpu_pct"]
        other.append(round(max(0.0, core["busy"] - core["softirq"] - core["irq"] - ours), 1))
    row["other_work_pct"] = other
    return row


def sweep(data: dict[str, Any], key: str, where: dict[str, str]) -> dict[str, Any]:
    """The ramp's steps, its best (highest passing) step and the first failure above it."""
    conns = data["config"]["conns"]
    steps = [step_row(st, conns, where) for st in data["steps"]]
    passed = [s for s in steps if s["pass"]]
    best = max(passed, key=lambda s: s["rate"]) if passed else None
    failed = [s for s in steps if not s["pass"] and s["rate"] > (best["rate"] if best else 0)]
    ramp_p99 = data["config"].get("ramp_p99_ms") or P99_LIMIT_MS
    complete = [s for s in steps if s["delivered"] == s["expected"] and s["p99_ms"] <= ramp_p99]
    most = max(complete, key=lambda s: s["rate"]) if complete else None
    return {
        "key": key,
        "conns": conns,
        "channels": data["config"]["channels"],
        "pub_conns": data["config"]["pub_conns"],
        "connect": data["connect"],
        "steps": steps,
        "best": best,
        "max_rate": best["rate"] if best else 0.0,
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "first_fail": min(failed, key=lambda s: s["rate"]) if failed else None,
        # the highest step with everything delivered and p99 under the ramp's looser limit
        "ramp_p99_ms": ramp_p99,
        "max_complete_deliveries_per_s": most["deliveries_per_s"] if most else 0.0,
        "max_complete_p99_ms": most["p99_ms"] if most else None,
        "closes": data.get("closes", {}),
        "raw": data["tag"],
    }


def hub_stats(delta: dict[str, float]) -> dict[str, Any]:
    """What a hub's counters say of a sweep: publications per frame, publish round trip."""
    publications = delta.get('tidings_messages_sent_total{type="publication"}', 0.0)
    frames = delta.get("tidings_frames_sent_total", 0.0)
    count = delta.get("tidings_publish_duration_seconds_count", 0.0)
    total = delta.get("tidings_publish_duration_seconds_sum", 0.0)
    return {
        "publications_sent": publications,
        "publications_per_frame": round(publications / frames, 2) if frames else None,
        "publish_ms_mean": round(1000 * total / count, 3) if count else None,
        "publishes": count,
        "broker_errors": delta.get("tidings_broker_errors_total", 0.0),
    }


# --- parts -----------------------------------------------------------------------------------


def measure_fanout(plan: Plan, key: str) -> dict[str, Any]:
    kind, _, nodes = key.partition("-")
    two = nodes == "2node"
    tag = f"fanout-{key}"
    load = os.getloadavg()
    with broker_server(kind, tag, plan.nice) as broker, contextlib.ExitStack() as stack:
        b = stack.enter_context(
            hub_server(CONFIG, broker.url, run.SERVER_CORES, f"{tag}-hub", plan.src, plan.nice)
        )
        a = (
            stack.enter_context(
                hub_server(CONFIG, broker.url, run.GEN_CORES, f"{tag}-hubA", plan.src, plan.nice)
            )
            if two
            else b
        )
        watch = {"hub": b.pids[0]}
        where = {"hub": run.SERVER_CORES}
        if two:
            watch["hub_a"], where["hub_a"] = a.pids[0], run.GEN_CORES
        if broker.pid:
            watch["broker"], where["broker"] = broker.pid, run.GEN_CORES
        before = {"b": b.metrics(), "a": a.metrics()}
        data = wsbench(
            plan, tag, b, a, conns=plan.subscribers, channels=1, pub_conns=1,
            start=plan.start, cap=plan.cap, watch=watch, ramp_p99=plan.ramp_p99,
        )  # fmt: skip
        stats = hub_stats(run._metrics_delta(before["b"], b.metrics()))
        if two:
            stats["publisher_hub"] = hub_stats(run._metrics_delta(before["a"], a.metrics()))
    row = sweep(data, key, where)
    row.update(broker=kind, nodes=2 if two else 1, hub=stats, loadavg_start=load)
    row["loadavg_end"] = os.getloadavg()
    return row


def measure_publish(plan: Plan, key: str) -> dict[str, Any]:
    kind, history, channels = key.split("-")[0], "-history" in key, 100 if "100ch" in key else 1
    conns = 100 if channels > 1 else 10
    tag = f"publish-{key}"
    load = os.getloadavg()
    with broker_server(kind, tag, plan.nice) as broker:
        config = CONFIG_HISTORY if history else CONFIG
        with hub_server(
            config, broker.url, run.SERVER_CORES, f"{tag}-hub", plan.src, plan.nice
        ) as hub:
            watch = {"hub": hub.pids[0]}
            where = {"hub": run.SERVER_CORES}
            if broker.pid:
                watch["broker"], where["broker"] = broker.pid, run.GEN_CORES
            before = hub.metrics()
            data = wsbench(
                plan, tag, hub, hub, conns=conns, channels=channels, pub_conns=plan.pub_conns,
                start=plan.pub_start, cap=plan.pub_cap, watch=watch,
            )  # fmt: skip
            stats = hub_stats(run._metrics_delta(before, hub.metrics()))
    row = sweep(data, key, where)
    best = row["best"]
    row.update(
        broker=kind, history=history, hub=stats, loadavg_start=load,
        max_publishes_per_s=best["published_per_s"] if best else 0.0,
    )  # fmt: skip
    row["loadavg_end"] = os.getloadavg()
    return row


# Where a sample's time goes, by the first of these frames found in its stack (innermost
# category first: a flush inside a publish handler counts as writing).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("fan-out: writing the frames (Flusher.flush)", ("Flusher.flush", "Flusher.flush_now")),
    ("fan-out: encoding and queueing (Node.handle_publication)", ("Node.handle_publication",)),
    (
        "broker: reading and decoding pub/sub messages",
        ("_Shard._read", "_Shard._run", "NatsBroker._on_", "Subscription._wait_for_msgs"),
    ),
    ("publishing: the command and the broker call (Node.publish)", ("Node.publish",)),
    ("client commands, other (reading, replies)", ("Client._process", "Client.receive")),
    ("WebSocket reading and protocol", ("WebSocketConnection.",)),
]


def fold(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw output summed up: categories, the most expensive functions."""
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            within[name] += n
        for label, marks in CATEGORIES:
            if any(f.startswith(marks) for f in frames):
                categories[label] += n
                break
        else:
            categories["other (the event loop, timers, metrics)"] += n

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "categories": pct(categories),
        "self": pct(own),
        "inclusive": [(k, v) for k, v in pct(within) if not k.startswith(_OUTER)],
    }


_OUTER = ("_run_module_as_main", "_run_code", "<module>", "main (", "_serve", "run (", "Runner.run")


def _frame(text: str) -> str:
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", text)
    if not m:
        return text
    function, path = m.groups()
    path = re.sub(r".*(site-packages|src)/", "", path)
    return f"{function} ({path})"


def pyspy() -> str | None:
    """py-spy of the project's .venv, of the peers' or on the PATH."""
    for path in (TIDINGS_PY.parent / "py-spy", run.PEERS_VENV / "bin" / "py-spy"):
        if path.exists():
            return str(path)
    return shutil.which("py-spy")


def measure_profile(plan: Plan, summary: dict[str, Any], kind: str) -> dict[str, Any]:
    tool = pyspy()
    assert tool is not None
    row = summary["runs"].get("fanout", {}).get(kind) or {}
    failed = row.get("first_fail")
    rate = plan.profile_rate or (failed["rate"] if failed else 300.0)
    tag = f"profile-{kind}"
    seconds = plan.profile_seconds
    with (
        broker_server(kind, tag, plan.nice) as broker,
        hub_server(CONFIG, broker.url, run.SERVER_CORES, f"{tag}-hub", plan.src, plan.nice) as hub,
    ):
        before = hub.metrics()
        out = RAW / f"{tag}.json"
        gen = subprocess.Popen(
            ["nice", "-n", str(run.GEN_NICE), "taskset", "-c", run.GEN_CORES, str(WSBENCH),
             "--port", str(hub.port), "--conns", str(plan.subscribers), "--size", str(plan.size),
             "--rates", f"{rate:g}", "--step", str(seconds + 5), "--server-pid", str(hub.pids[0]),
             "--max-seconds", str(int(seconds + 60)), "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=(RAW / f"{tag}.wsbench.log").open("w"),
        )  # fmt: skip
        time.sleep(3)
        raw = RAW / f"{tag}.txt"
        subprocess.run(
            ["taskset", "-c", run.GEN_CORES, tool, "record", "--pid", str(hub.pids[0]),
             "--duration", str(int(seconds)), "--rate", "200", "--nonblocking",
             "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 60,
            check=False,
        )  # fmt: skip
        gen.wait(seconds + 90)
        stats = hub_stats(run._metrics_delta(before, hub.metrics()))
    if not raw.exists():
        raise RuntimeError("py-spy wrote nothing")
    step = json.loads(out.read_text())["steps"][0] if out.exists() else None
    return {
        "rate": rate,
        "seconds": seconds,
        "sample_rate": 200,
        "step": run.step_summary(step, plan.subscribers) if step else None,
        "hub": stats,
        "raw": str(raw.relative_to(ROOT)),
        **fold(raw),
    }


# --- report ----------------------------------------------------------------------------------


def _cpu(step: dict[str, Any], name: str) -> str:
    value = (step.get("cpu_pct") or {}).get(name)
    return "–" if value is None else f"{value:.0f}%"


def _why(st: dict[str, Any] | None) -> str:
    if st is None:
        return "–"
    why = []
    if st["delivered"] < st["expected"]:
        why.append(f"{st['expected'] - st['delivered']:,} of {st['expected']:,} not delivered")
    if st["p99_ms"] > P99_LIMIT_MS:
        why.append(f"p99 {st['p99_ms']:.1f} ms")
    if st["pub_errors"]:
        why.append(f"{st['pub_errors']} publish errors")
    return f"{st['rate']:g} msg/s: {', '.join(why) or 'failed'}"


def cross_node(fanout: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """p99 of one node and of two at each rate both ramps ran and both passed."""
    single, cross = fanout.get(kind), fanout.get(f"{kind}-2node")
    if not single or not cross:
        return []
    ones = {s["rate"]: s for s in single["steps"] if s["pass"]}
    twos = {s["rate"]: s for s in cross["steps"] if s["pass"]}
    return [
        {
            "rate": rate,
            "single_p99_ms": ones[rate]["p99_ms"],
            "cross_p99_ms": twos[rate]["p99_ms"],
            "ratio": twos[rate]["p99_ms"] / ones[rate]["p99_ms"] if ones[rate]["p99_ms"] else None,
        }
        for rate in sorted(set(ones) & set(twos))
    ]


def targets(runs: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    fanout = runs.get("fanout", {})
    out: list[tuple[str, str, bool | None]] = []
    for kind, name in (("redis", "Redis"), ("nats", "NATS")):
        row = fanout.get(kind)
        if row is None:
            out.append(
                (f"{name}, one node: >= {TARGET_DELIVERIES:,} deliveries/s", "not run", None)
            )
            continue
        best = row["best"]
        got = row["max_deliveries_per_s"]
        text = (
            f"{got:,.0f} deliveries/s ({row['max_rate']:g} msg/s, p99 {best['p99_ms']:.1f} ms)"
            if best
            else "nothing passed"
        )
        out.append(
            (
                f"{name}, one node, 1,000 subscribers x 128 B: >= {TARGET_DELIVERIES:,} "
                "deliveries/s with p99 <= 50 ms",
                text + f"; first failing step {_why(row['first_fail'])}",
                got >= TARGET_DELIVERIES,
            )
        )
    nats2, redis2 = fanout.get("nats-2node"), fanout.get("redis-2node")
    if nats2 and redis2:
        out.append(
            (
                "NATS, two nodes: deliveries/s >= the Redis broker's (two nodes, same run)",
                f"NATS {nats2['max_deliveries_per_s']:,.0f} vs Redis "
                f"{redis2['max_deliveries_per_s']:,.0f}",
                nats2["max_deliveries_per_s"] >= redis2["max_deliveries_per_s"]
                and nats2["max_deliveries_per_s"] > 0,
            )
        )
    for kind, name in (("nats", "NATS"), ("redis", "Redis")):
        pairs = cross_node(fanout, kind)
        if not pairs:
            if fanout.get(kind) and fanout.get(f"{kind}-2node"):
                out.append(
                    (f"{name}: cross-node p99 <= 2x single-node", "no rate passed on both", False)
                )
            continue
        top = pairs[-1]
        out.append(
            (
                f"{name}: cross-node p99 <= {CROSS_RATIO:g}x single-node p99 at the same load"
                + (" (the issue names NATS; Redis beside it)" if kind == "redis" else ""),
                f"at {top['rate']:g} msg/s (the highest rate both passed): single "
                f"{top['single_p99_ms']:.1f} ms, cross {top['cross_p99_ms']:.1f} ms "
                f"({top['ratio']:.2f}x)",
                top["ratio"] is not None and top["ratio"] <= CROSS_RATIO,
            )
        )
    publish = runs.get("publish", {})
    nh, rh = publish.get("nats-history"), publish.get("redis-history")
    if nh and rh:
        out.append(
            (
                "publishes/s with history on, NATS vs Redis (one channel, 8 publisher connections)",
                f"NATS {nh['max_publishes_per_s']:,.0f} vs Redis {rh['max_publishes_per_s']:,.0f} "
                f"({nh['max_publishes_per_s'] / max(1.0, rh['max_publishes_per_s']):.2f}x)",
                None,
            )
        )
    return out


def write_report(summary: dict[str, Any], outdir: Path) -> None:
    meta = summary.get("meta", {})
    m = meta.get("machine", {})
    env = m.get("tidings_env") if isinstance(m.get("tidings_env"), dict) else {}
    plan = meta.get("plan", {})
    runs = summary.get("runs", {})
    fanout: dict[str, Any] = runs.get("fanout", {})
    publish: dict[str, Any] = runs.get("publish", {})
    lines = [
        "# tidings brokers report: fan-out and publishing over memory, Redis and NATS",
        "",
        f"Generated {m.get('date', '?')} from commit `{m.get('git_commit', '?')}`"
        + (" (with uncommitted changes in src/)" if m.get("git_dirty") else "")
        + f" by `{meta.get('command', 'bench/brokers.py')}`"
        + (f" in {meta['duration_s'] / 60:.1f} minutes" if meta.get("duration_s") else "")
        + (f"; the hub ran from `{plan['src']}`" if plan.get("src") else "")
        + ("; **quick mode** (a smoke test, not the measurement)" if plan.get("quick") else "")
        + ".",
        "",
        "## Machine and method",
        "",
        f"- **CPU**: {m.get('nproc', '?')} cores, {m.get('cpu_model', '?')}; kernel "
        f"{m.get('kernel', '?')}; load average at start {' '.join(m.get('loadavg_start', []))}, "
        f"at end {' '.join(meta.get('loadavg_end', []))} (each row's, at its start and end, "
        "in the tables below). The machine is shared: *other work* columns show what else ran.",
        *[
            f"- **Then** {r['date']}: `{r['command']}` (load average at start "
            f"{' '.join(r['loadavg_start'])}, at end {' '.join(r.get('loadavg_end', []))}): its "
            "rows are added, or replace the earlier ones."
            for r in meta.get("reruns", [])
        ],
        f"- **tidings** {env.get('tidings', '?')} on Python {env.get('python', '?')}; msgspec "
        f"{env.get('msgspec', '?')}, uvloop {env.get('uvloop', '?')}, redis-py "
        f"{env.get('redis', '?')}, hiredis {env.get('hiredis', '?')}, nats-py "
        f"{env.get('nats-py', '?')}; {m.get('redis_server', '?')}; nats-server "
        f"{m.get('nats_server', '?')}.",
        f"- **Cores**: the hub with the subscribers on core {run.SERVER_CORES}; the generator "
        f"(`bench/build/wsbench`, nice {run.GEN_NICE}), redis-server or `nats-server -js` and, "
        f"in the two-node rows, node A (the publisher's hub) on core {run.GEN_CORES}. A fresh "
        "broker server and fresh hubs for every row; hubs and broker servers at nice "
        f"{plan.get('nice', 0)}"
        + (" (ahead of other work on the shared machine)" if plan.get("nice", 0) < 0 else "")
        + ".",
        f"- **Load**: {plan.get('subscribers', '?'):,} subscribers of one channel, "
        f"{plan.get('size', '?')}-byte JSON publications carrying their send time, published by "
        "one generator connection with the `publish` command; rates from "
        f"{plan.get('start', 0):g} msg/s, x2 until a step fails (up to {plan.get('cap', 0):g})"
        + (
            ", a failed step run once more (it counts if it fails again)"
            if plan.get("confirm")
            else ""
        )
        + (f", then {plan.get('refine')} bisection steps" if plan.get("refine") else "")
        + f"; a step publishes for {plan.get('step', '?')} s and waits up to "
        f"{plan.get('drain', '?')} s for the rest. A step **passes** when every subscriber got "
        f"every publication and p99 <= {P99_LIMIT_MS:g} ms (every delivery is a sample).",
        "- **CPU** columns: each process' user+sys time over the step's publishing window "
        "(sampled from /proc every 0.1 s); *other work*: a core's busy time minus its softirq "
        "and irq time and our processes on it.",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {measured} | {met(ok)} |" for t, measured, ok in targets(runs)]
    lines += [""]
    if fanout:
        lines += [
            "## Fan-out: 1,000 subscribers x 128 B, highest passing step",
            "",
            "| row | max msg/s | deliveries/s | p50 ms | p99 ms | max ms | hub CPU | node A CPU "
            "| broker CPU | generator CPU | other work % | publications / frame | publish "
            "call ms (mean) | all delivered, p99 <= ramp limit: deliveries/s | load avg at "
            "start | first failing step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|",
        ]
        for key, row in fanout.items():
            b = row["best"] or {}
            hub = row.get("hub", {})
            publisher = hub.get("publisher_hub", hub)
            lines.append(
                f"| {LABELS.get(key, key)} | {num(row['max_rate'], 1) if b else '–'} | "
                f"{num(row['max_deliveries_per_s']) if b else '–'} | {ms(b.get('p50_ms'))} | "
                f"{ms(b.get('p99_ms'))} | {ms(b.get('max_ms'))} | {_cpu(b, 'hub')} | "
                f"{_cpu(b, 'hub_a')} | {_cpu(b, 'broker')} | "
                f"{num(b.get('gen_cpu_pct'))}{'%' if b else ''} | {b.get('other_work_pct', '–')} | "
                f"{num(hub.get('publications_per_frame'), 1)} | "
                f"{num(publisher.get('publish_ms_mean'), 2)} | "
                f"{num(row.get('max_complete_deliveries_per_s'))} (p99 "
                f"{ms(row.get('max_complete_p99_ms'))} ms) | "
                f"{' '.join(f'{x:.2f}' for x in row.get('loadavg_start', []))} | "
                f"{_why(row['first_fail'])} |"
            )
        lines += [
            "",
            f"The ramp goes on past the {P99_LIMIT_MS:g} ms limit while everything is delivered "
            f"with p99 <= {plan.get('ramp_p99', P99_LIMIT_MS):g} ms (a hub that coalesces "
            "writes may pass again at a higher rate); the best step is the highest that passed.",
            "*publications / frame*: publications the subscribers' hub sent / WebSocket frames "
            "it wrote over the whole ramp (its write coalescing); *publish call*: the mean "
            "of `tidings_publish_duration_seconds` of the publisher's hub over the ramp (the "
            "`publish` command's broker call).",
            "",
        ]
        for kind, name in (("nats", "NATS"), ("redis", "Redis")):
            pairs = cross_node(fanout, kind)
            if pairs:
                lines += [
                    f"### {name}: cross-node latency beside one node, at the rates both passed",
                    "",
                    "| msg/s | one node p99 ms | two nodes p99 ms | ratio |",
                    "|---:|---:|---:|---:|",
                ]
                lines += [
                    f"| {p['rate']:g} | {p['single_p99_ms']:.1f} | {p['cross_p99_ms']:.1f} | "
                    f"{p['ratio']:.2f}x |"
                    for p in pairs
                ]
                lines += [""]
    if publish:
        lines += [
            "## Publishes/s with history (8 publisher connections to one node)",
            "",
            f"Rates from {plan.get('pub_start', 0):g} msg/s, x2 until a step fails (the pass "
            "criterion above, no looser ramp limit), then as above; the publications "
            "reach every subscriber (10 on one channel, or 100 on 100 channels, one each). "
            "History: 100 publications for 300 s (bench/tidings-bench-history.toml).",
            "",
            "| row | history | channels | max publishes/s | deliveries/s | p50 ms | p99 ms | hub "
            "CPU | broker CPU | publish call ms (mean) | load avg at start | first "
            "failing step |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for key, row in publish.items():
            b = row["best"] or {}
            lines.append(
                f"| {key} | {'on' if row['history'] else 'off'} | {row['channels']} | "
                f"{num(row['max_publishes_per_s']) if b else '–'} | "
                f"{num(row['max_deliveries_per_s']) if b else '–'} | {ms(b.get('p50_ms'))} | "
                f"{ms(b.get('p99_ms'))} | {_cpu(b, 'hub')} | {_cpu(b, 'broker')} | "
                f"{num(row['hub'].get('publish_ms_mean'), 2)} | "
                f"{' '.join(f'{x:.2f}' for x in row.get('loadavg_start', []))} | "
                f"{_why(row['first_fail'])} |"
            )
        lines += [""]
    for kind, name in (("redis", "Redis"), ("nats", "NATS")):
        profile = runs.get("profile", {}).get(kind)
        if not profile:
            continue
        st = profile.get("step") or {}
        lines += [
            f"## Where the time goes: the one-node {name} hub at a rate it misses",
            "",
            f"py-spy `record --format raw` ({profile['sample_rate']} Hz, "
            f"{profile['seconds']:g} s) of the hub at {profile['rate']:g} msg/s "
            f"({num(st.get('deliveries_per_s'))} deliveries/s delivered, p99 "
            f"{ms(st.get('p99_ms'))} ms, hub CPU {num(st.get('server_cpu_pct'))}%); "
            f"{profile['hub'].get('publications_per_frame') or '–'} publications per frame, "
            f"publish call {num(profile['hub'].get('publish_ms_mean'), 2)} ms (mean). "
            f"{profile['samples']:,} samples (py-spy leaves out idle ones). Raw stacks: "
            f"`{profile['raw']}`.",
            "",
            "| where | share of the samples |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:.1f}% |" for k, v in profile["categories"]]
        lines += ["", "| function (own time) | share |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.1f}% |" for k, v in profile["self"][:12]]
        lines += ["", "| function (with what it calls) | share |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.1f}% |" for k, v in profile["inclusive"][:15]]
        lines += [""]
    compare = summary.get("compare")
    if compare and fanout:
        other = compare.get("runs", {}).get("fanout", {})
        lines += [
            f"## Before and after: {compare.get('label', 'another run')}",
            "",
            f"The other run: `{compare.get('command', '?')}`, {compare.get('date', '?')}, hub from "
            f"`{compare.get('src') or 'src/'}`, load average at start "
            f"{' '.join(compare.get('loadavg_start', []))}.",
            "",
            "| row | this run: msg/s | deliveries/s | p99 ms | publications / frame | the other "
            "run: msg/s | deliveries/s | p99 ms | publications / frame | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, row in fanout.items():
            o = other.get(key)
            if o is None:
                continue
            b, ob = row["best"] or {}, o["best"] or {}
            ratio = (
                f"{o['max_deliveries_per_s'] / row['max_deliveries_per_s']:.2f}x"
                if row["max_deliveries_per_s"]
                else "–"
            )
            lines.append(
                f"| {LABELS.get(key, key)} | {num(row['max_rate'], 1)} | "
                f"{num(row['max_deliveries_per_s'])} | {ms(b.get('p99_ms'))} | "
                f"{num(row['hub'].get('publications_per_frame'), 1)} | {num(o['max_rate'], 1)} | "
                f"{num(o['max_deliveries_per_s'])} | {ms(ob.get('p99_ms'))} | "
                f"{num(o['hub'].get('publications_per_frame'), 1)} | {ratio} |"
            )
        lines += [""]
    lines += _every_step("Every fan-out step", fanout)
    lines += _every_step("Every publish step", publish)
    if summary.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in summary["errors"]] + [""]
    (outdir / "REPORT.md").write_text("\n".join(lines))


def _every_step(title: str, rows: dict[str, Any]) -> list[str]:
    if not rows:
        return []
    lines = [
        f"## {title}",
        "",
        "| row | msg/s | delivered | deliveries/s | p50 ms | p99 ms | max ms | hub CPU | node A "
        "CPU | broker CPU | generator CPU | cores busy % | other work % | pass |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for key, row in rows.items():
        for s in row["steps"]:
            lines.append(
                f"| {key} | {s['rate']:g} | {s['delivered']:,}/{s['expected']:,} | "
                f"{s['deliveries_per_s']:,.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['max_ms']:.1f} | {_cpu(s, 'hub')} | {_cpu(s, 'hub_a')} | "
                f"{_cpu(s, 'broker')} | {s['gen_cpu_pct']:.0f}% | {s['core_busy_pct']} | "
                f"{s['other_work_pct']} | {'yes' if s['pass'] else 'no'}"
                + (" (run again)" if s["retry"] else "")
                + " |"
            )
    return lines + [""]


# --- main ------------------------------------------------------------------------------------


def machine(plan: Plan) -> dict[str, Any]:
    packages = ["tidings", "msgspec", "uvloop", "redis", "hiredis", "nats-py"]
    info = procstats.machine(packages)
    if plan.src:  # the versions are the venv's; the hub's code is the other tree's
        info["git_dirty"] = True
    info["redis_server"] = run._cmd("redis-server", "--version").split(" sha=")[0]
    info["nats_server"] = run._cmd(str(NATS_SERVER), "--version").removeprefix("nats-server: ")
    return info


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short steps, no refinement")
    parser.add_argument("--only", help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--rows", help=f"comma-separated rows, of {FANOUT_ROWS + PUBLISH_ROWS}")
    parser.add_argument("--out", help="output directory (default bench/results/brokers)")
    parser.add_argument("--src", help="run the hub from this source tree (PYTHONPATH)")
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers (1000)")
    parser.add_argument("--step", type=float, help="seconds of publishing per step (5)")
    parser.add_argument("--profile-rate", type=float, help="msg/s of the profile")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice of the hubs and broker servers (0; -5: ahead of "
        "other work on a shared machine, the generator has -10)",
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild REPORT.md")
    parser.add_argument("--compare", help="another run's summary.json, for a before/after table")
    parser.add_argument("--compare-label", default="another run", help="what the other run is")
    args = parser.parse_args()
    outdir = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "") / "brokers"
    outdir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        summary = json.loads((outdir / "summary.json").read_text())
        if args.compare:
            summary["compare"] = compared(Path(args.compare), args.compare_label)
            (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
        write_report(summary, outdir)
        return 0
    for tool in (WSBENCH, TIDINGS_PY):
        if not tool.exists():
            print(f"missing {tool}: run `make install bench/build/wsbench`", file=sys.stderr)
            return 2
    parts = args.only.split(",") if args.only else list(PARTS)
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}")
    rows = args.rows.split(",") if args.rows else None
    if rows and set(rows) - set(FANOUT_ROWS + PUBLISH_ROWS):
        parser.error(f"unknown rows {sorted(set(rows) - set(FANOUT_ROWS + PUBLISH_ROWS))}")
    plan = make_plan(args)
    global RAW
    if plan.src:  # apart from the project's own runs: the same tags, another tree
        RAW = run.RAW / "brokers-src"
    # Terminated, the runner still stops the servers it started (they have their own sessions).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nats = (Path(plan.src) if plan.src else ROOT / "src") / "tidings" / "brokers" / "nats.py"
    if not NATS_SERVER.exists() or not nats.exists():
        log(f"no NATS rows: {NATS_SERVER if not NATS_SERVER.exists() else nats} is missing")
    # The runner (it only waits and reads /proc) stays off the hub's core.
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in run.GEN_CORES.split(",")})
    summary = scripting.new_summary(
        {
            "machine": machine(plan),
            "plan": asdict(plan),
            "parts": parts,
            "command": " ".join(["bench/brokers.py", *sys.argv[1:]]),
            "targets": {"deliveries_per_s": TARGET_DELIVERIES, "p99_limit_ms": P99_LIMIT_MS},
        }
    )
    previous = outdir / "summary.json"
    if (args.only or args.rows) and previous.exists():
        # A partial run updates the previous results: its rows replace theirs, and the
        # report lists it beside the first run's machine and plan.
        old = json.loads(previous.read_text())
        rerun = {k: summary["meta"][k] for k in ("command", "parts")}
        rerun.update(date=summary["meta"]["machine"]["date"], rows=rows)
        rerun["loadavg_start"] = summary["meta"]["machine"]["loadavg_start"]
        summary["meta"] = old["meta"]
        summary["meta"].setdefault("reruns", []).append(rerun)
        summary["runs"], summary["errors"] = old.get("runs", {}), old.get("errors", [])
        summary["compare"] = old.get("compare")
    if args.compare:
        summary["compare"] = compared(Path(args.compare), args.compare_label)
    log(f"brokers: {'quick' if plan.quick else 'full'}; parts {parts}; results in {outdir}")
    started = time.monotonic()

    def guarded(part: str, key: str, measure: Any) -> None:
        # an error of an earlier run of this row is the earlier run's
        summary["errors"] = [e for e in summary["errors"] if not e.startswith(f"{part}/{key}:")]
        scripting.guarded(summary, part, key, measure)

    def wanted(key: str) -> bool:
        if key.startswith("nats") and not (NATS_SERVER.exists() and nats.exists()):
            return False
        if plan.quick and "100ch" in key:
            return False
        return rows is None or key in rows

    try:
        if "fanout" in parts:
            log("== fan-out")
            for key in filter(wanted, FANOUT_ROWS):
                guarded("fanout", key, lambda k=key: measure_fanout(plan, k))
        if "publish" in parts:
            log("== publishes/s")
            for key in filter(wanted, PUBLISH_ROWS):
                guarded("publish", key, lambda k=key: measure_publish(plan, k))
        if "profile" in parts and pyspy() is None:
            log("== no profile: py-spy is not installed (`.venv/bin/pip install py-spy`)")
        elif "profile" in parts:
            log("== profile")
            for kind in ("redis", "nats"):
                guarded("profile", kind, lambda k=kind: measure_profile(plan, summary, k))
    finally:
        scripting.finish(summary, outdir, started, write_report)
    for key, row in summary["runs"].get("fanout", {}).items():
        log(f"{key}: {row['max_rate']:g} msg/s = {row['max_deliveries_per_s']:,.0f} deliveries/s")
    log(f"done in {time.monotonic() - started:.0f}s: {outdir / 'REPORT.md'}")
    return 1 if summary["errors"] else 0


def compared(path: Path, label: str) -> dict[str, Any]:
    other = json.loads(path.read_text())
    meta = other.get("meta", {})
    return {
        "label": label,
        "command": meta.get("command"),
        "date": meta.get("machine", {}).get("date"),
        "src": meta.get("plan", {}).get("src"),
        "loadavg_start": meta.get("machine", {}).get("loadavg_start", []),
        "runs": {"fanout": other.get("runs", {}).get("fanout", {})},
    }


if __name__ == "__main__":
    sys.exit(main())
