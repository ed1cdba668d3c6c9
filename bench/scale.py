#!/usr/bin/env python3
"""The scale run: 100,000 WebSocket connections on this machine, over Redis and over NATS.

    .venv/bin/python bench/scale.py                    # full (make scale): bench/results/scale/
    .venv/bin/python bench/scale.py --quick            # 10,000 connections (development)
    .venv/bin/python bench/scale.py --broker redis --connections 50000
    .venv/bin/python bench/scale.py --report-only      # rebuild REPORT.md from summary.json
    .venv/bin/python bench/scale.py --report-only --add-run /tmp/x=pings off   # + another run

The open-file limit is 20,000 per process here, so neither side fits in one
process: the hub runs as ``tidings serve --workers W`` (SO_REUSEPORT; W = one per
17,000 connections, 6 for 100,000) with a Redis or NATS broker this script
starts on a free port, and the generator (bench/build/wsbench, C) as G processes
of at most 17,000 connections each, process i binding its sockets to 127.0.0.(2+i)
(the ephemeral ports of one (source, destination) address pair allow ~28,000
connections to a port). Every connection subscribes, in its handshake, to its own
channel ``personal:<i>`` and to the channel ``shared``.

Per broker, on one set of connections:

1. **connect**: every generator connects and subscribes its share, all at once
   (``--inflight`` handshakes in flight per process); the rate is the connections
   subscribed over the whole ramp (first connect to last subscription).
2. **memory**: the workers' RSS (``VmRSS`` summed), the broker's, and the kernel's
   (``/proc/meminfo`` ``Slab``, ``/proc/net/sockstat`` ``TCP mem``) before the
   connections and once they are all subscribed, per connection.
3. **idle**: the connections held for ``--idle`` seconds (the hub pings every 25 s):
   the hub's CPU per connection per second.
4. **full collection**: ``tidings serve``'s collector policy collects everything in
   each worker about every 300 s, each at a time it draws (the first between 150 and
   300 s of its age); the script runs a slow stream of personal publications through
   that window (its worst delay, and the connections the hub closed meanwhile). ``--no-gc-probe`` (and ``--quick``)
   skip it.
5. **fan-out**: ``--fanout`` publications to ``shared`` through ``POST /api/publish``
   (stamped with the wall clock just before the request), each once the hub is back
   to idle: the latency of every one of the N deliveries (p50, p99, and the last
   one), merged over the generator processes' histograms.
6. **personal**: publications to random ``personal:<i>`` channels, sent by the
   generators' publisher connections as WebSocket ``publish`` commands (each lands
   on a worker the kernel picks; the broker carries it to the subscriber's worker),
   at total rates doubling until a step loses a message or p99 > 50 ms (a failed
   step is run once more; halving when the first rate fails; then bisection steps).
   The highest passing rate is the personal-channel publish rate.

Connections the hub closes during a phase (3012: no pong in time) are recorded with
the phase; the phases after it count on those left.

Everything shares the machine's two cores (no pinning: W workers, G generators and
the broker on 2 cores); every phase records each process group's CPU and each
core's busy time, and the load average before each broker's run is in the report.
The report ends with a projection, on paper, of what 1,000,000 connections would
need from these measured per-connection costs, beside Centrifugo's published figures.

Outputs: ``summary.json`` and ``REPORT.md`` in ``--out`` (bench/results/scale, or
bench/results/quick/scale with --quick); the hub's and generators' logs and raw JSON
in bench/results/raw/.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generators  # noqa: E402
import procstats  # noqa: E402
import run  # noqa: E402  (bench/run.py: servers, free ports, logging)
import scripting  # noqa: E402
from procstats import busy_pct, core_times, cpu_seconds, rss_kib  # noqa: E402
from run import RAW, RESULTS, ROOT, WSBENCH, Server, Spec, log  # noqa: E402
from scripting import ms  # noqa: E402

TIDINGS = ROOT / ".venv" / "bin" / "tidings"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
SHARED = "shared"
PERSONAL = "personal:%d"
SIZE = 128
P99_LIMIT_MS = run.P99_LIMIT_MS
NOFILE = 20_000  # the open-file limit per process on this machine
PER_PROCESS = 17_000  # connections per hub worker or generator process, under NOFILE
BROKERS = ("redis", "nats")
MILLION = 1_000_000
GROUP = 10  # subscribers of a group channel in Centrifugo's test
NETSTAT = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts", "TCPAbortOnMemory")
MAX_STEPS = 64  # steps a wsbench process can run (its MAX_STEPS)
# Centrifugo's published figures (https://centrifugal.dev/blog/2020/02/10/million-connections-with-centrifugo,
# and the idle-connection figure the issue quotes)
CENTRIFUGO = {
    "connections": 1_000_000,
    "deliveries_per_s": 500_000,
    "cpus": 40,
    "idle_kib_per_conn": 11.6,
    "redis_shards": 5,
    "server_pods": 20,
    "p99_ms": 200,
    "churn_per_s": 200_000 / 60,
}


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    connections: int
    workers: int  # hub processes
    generators: int  # wsbench processes
    brokers: list[str]
    inflight: int = 100  # handshakes in flight per generator
    pub_conns: int = 2  # publisher connections per generator
    idle: float = 30.0  # seconds of idle holding
    fanout: int = 5  # publications to the shared channel
    quiet_wait: float = 60.0  # seconds to wait for the machine to be idle before a broker's run
    fanout_gap: float = 3.0
    fanout_wait: float = 30.0  # then up to this long for the hub to be back to idle
    fanout_drain: float = 30.0
    start: float = 250.0  # personal publications/s of the first step (all generators)
    factor: float = 2.0
    cap: float = 64_000.0
    step: float = 5.0
    drain: float = 3.0
    gap: float = 1.0
    settle: float = 5.0  # seconds between the fan-out and the personal ramp
    confirm: bool = True
    refine: int = 2
    ping_interval: float | None = None  # client.ping_interval (None: the hub's default, 25 s)
    gc_probe: bool = True  # wait for the workers' first periodic full collection, and probe it
    gc_probe_rate: float = 20.0  # personal publications/s through it
    cost_rates: tuple[float, ...] = (500.0, 1000.0, 2000.0)  # for the CPU per publication


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    conns = args.connections or (10_000 if quick else 100_000)
    per = max(2, math.ceil(conns / PER_PROCESS))
    plan = Plan(
        quick=quick,
        connections=conns,
        workers=args.workers or per,
        generators=args.generators or per,
        brokers=list(BROKERS) if args.broker == "both" else [args.broker],
        inflight=args.inflight,
        idle=args.idle or (10.0 if quick else 30.0),
        fanout=args.fanout or (3 if quick else 5),
        fanout_drain=10.0 if quick else 30.0,
        quiet_wait=5.0 if quick else 60.0,
        settle=2.0 if quick else 5.0,
        start=100.0 if quick else 250.0,
        cap=12_800.0 if quick else 64_000.0,
        step=3.0 if quick else 5.0,
        drain=2.0 if quick else 3.0,
        confirm=not quick,
        refine=1 if quick else 2,
        ping_interval=args.ping_interval,
        gc_probe=args.gc_probe if args.gc_probe is not None else not quick,
        cost_rates=(200.0, 400.0) if quick else (500.0, 1000.0, 2000.0),
    )
    return plan


def check_limits(plan: Plan) -> int:
    """Set this process's open-file limit (the children inherit it) and check that the
    plan's processes fit in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(hard, NOFILE) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    per_gen = math.ceil(plan.connections / plan.generators) + plan.pub_conns + 16
    # SO_REUSEPORT spreads connections by a hash: leave the workers 5% and their own files
    per_worker = math.ceil(plan.connections / plan.workers * 1.05) + 200
    for what, need, count in (("generator", per_gen, plan.generators),
                              ("hub worker", per_worker, plan.workers)):  # fmt: skip
        if need > limit:
            raise SystemExit(
                f"{count} {what} processes need ~{need:,} open files each, over the limit "
                f"of {limit:,}: raise --generators / --workers"
            )
    return limit


# --- /proc ------------------------------------------------------------------------------------


def kernel_memory() -> dict[str, int]:
    """The kernel's memory that grows with sockets: slab, TCP buffers, sockets in use (KiB)."""
    info: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Slab", "SReclaimable", "SUnreclaim", "MemAvailable", "PageTables"):
            info[key] = int(rest.split()[0])
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        fields = line.split()
        if fields[0] == "sockets:":
            info["sockets_used"] = int(fields[2])
        elif fields[0] == "TCP:":
            values = dict(zip(fields[1::2], fields[2::2], strict=False))
            info["tcp_inuse"] = int(values["inuse"])
            info["tcp_tw"] = int(values["tw"])
            info["tcp_mem_kib"] = int(values["mem"]) * page_kib
    # handshakes the kernel dropped or retried (a full accept queue shows here, not in the hub)
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            ext = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=False))
            for key in NETSTAT:
                info[key] = ext.get(key, 0)
    return info


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def nofile_of(pid: int) -> int | None:
    """A process's soft open-file limit."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        return int(next(line for line in limits if line.startswith("Max open files")).split()[3])
    return None


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kib(pid)
    return total


def sysctl(name: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().split("\n")[0].strip()
    except OSError:
        return "?"


# --- the broker and the hub -------------------------------------------------------------------


@dataclass
class Broker:
    kind: str
    url: str
    pid: int
    version: str


@contextlib.contextmanager
def start_broker(kind: str) -> Iterator[Broker]:
    """redis-server or nats-server (JetStream on, in a temporary directory), on a free port."""
    port = run.free_port()
    (RAW / "logs").mkdir(parents=True, exist_ok=True)
    logf = (RAW / "logs" / f"scale-{kind}.log").open("wb")
    with tempfile.TemporaryDirectory(prefix="scale-nats-") as store:
        if kind == "redis":
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
            url = f"redis://127.0.0.1:{port}/0"
            version = run._cmd("redis-server", "--version")
        else:
            argv = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store]
            url = f"nats://127.0.0.1:{port}"
            version = run._cmd(NATS_SERVER, "--version")
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            run.wait_port(port, proc, 15)
            yield Broker(kind, url, proc.pid, version)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()


def hub_config(path: Path, broker_url: str, ping_interval: float | None) -> Path:
    """Anonymous clients may subscribe to ``shared`` and to ``personal:*``, and publish to
    ``personal:*``; no limit that 100,000 connections (or the benchmark's publishers) hit."""
    lines = [
        "# bench/scale.py: tidings serve --workers W --config <this file>",
        'log_level = "warning"',
        "shutdown_timeout = 2",
        '# channels without a namespace ("shared"): anyone may subscribe',
        "allow_subscribe_for_client = true",
        "allow_subscribe_for_anonymous = true",
        "",
        "[client]",
        "allow_anonymous_connect_without_token = true",
        "# per node (each worker is one): the open-file limit bounds a worker instead",
        "connection_limit = 0",
        "# the generator's publisher connections send thousands of commands per second",
        "command_rate_limit = 0",
        (
            f"ping_interval = {ping_interval:g}"
            if ping_interval
            else "# ping_interval: the default (25 s), as a production hub pings"
        ),
        "",
        "[http_api]",
        "insecure = true",
        "",
        "[broker]",
        f'url = "{broker_url}"',
        "",
        "[namespaces.personal]",
        "allow_subscribe_for_client = true",
        "allow_subscribe_for_anonymous = true",
        "allow_publish_for_client = true",
        "allow_publish_for_anonymous = true",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def start_hub(plan: Plan, broker: Broker) -> tuple[Server, list[str]]:
    config = hub_config(
        RAW / "scale" / f"tidings-scale-{broker.kind}.toml", broker.url, plan.ping_interval
    )
    argv_of: list[str] = []

    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        argv_of[:] = [str(TIDINGS), "serve", "--workers", str(plan.workers), "--config",
                      str(config), "--port", str(port), "--api-port", str(api_port)]  # fmt: skip
        return argv_of

    spec = Spec("tidings", "tidings", "centrifugo", "/connection/websocket", "", argv, startup=60)
    server = Server(spec, cores=run.ALL_CORES, tag=f"scale-{broker.kind}")
    try:
        server.__enter__()
    except RuntimeError as exc:  # say why, from its log
        last = server.log_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"the hub did not start ({exc}): {' '.join(last)}") from None
    return server, argv_of


# --- the generators ---------------------------------------------------------------------------


class Generators(generators.Processes):
    """G wsbench processes in --control mode, each with its share of the connections on
    its own source address; commands to all of them, their events merged."""

    noun, nouns = "generator", "generators"
    clip = 300

    def __init__(self, plan: Plan, server: Server, tag: str) -> None:
        super().__init__()
        self.plan = plan
        self.outs: list[Path] = []
        self.argvs: list[list[str]] = []
        self.steps = 0
        self.subscribed = 0  # connections subscribed once the ramp is over
        n, g = plan.connections, plan.generators
        connect_timeout = max(120.0, n / 250)  # 250 connections/s would still fit
        first = 0
        (RAW / "logs").mkdir(parents=True, exist_ok=True)
        for i in range(g):
            share = n // g + (1 if i < n % g else 0)
            out = RAW / f"{tag}-gen{i}.json"
            out.unlink(missing_ok=True)
            argv = [
                str(WSBENCH), "--port", str(server.port), "--mode", "centrifugo",
                "--path", "/connection/websocket", "--pub-conns", str(plan.pub_conns),
                "--conns", str(share), "--size", str(SIZE), "--bind", f"127.0.0.{2 + i}",
                "--personal", PERSONAL, "--first", str(first), "--also", SHARED, "--control",
                "--inflight", str(plan.inflight), "--connect-timeout", f"{connect_timeout:g}",
                "--p99-limit-ms", f"{P99_LIMIT_MS:g}", "--settle", "2", "--max-seconds", "3600",
                "--out", str(out),
            ]  # fmt: skip
            first += share
            self.spawn(argv, RAW / "logs" / f"{tag}-gen{i}.log")
            self.outs.append(out)
            self.argvs.append(argv)
        self.connect_timeout = connect_timeout

    def step(self, rate: float, seconds: float, drain: float, external: int) -> int:
        """Start a step on every generator (``rate``: the total, shared among them); its index."""
        k = self.steps
        self.steps += 1
        share = rate / len(self.procs)
        self.tell(f"step {share:.6g} {seconds:g} {drain:g} {external}")
        started = self.expect("started", 60)
        if any(s["step"] != k for s in started):
            raise RuntimeError(f"generators out of step: {started} (expected {k})")
        return k

    def results(self, seconds: float, drain: float) -> list[dict[str, Any]]:
        return self.expect("step", seconds + drain + 120)

    def quit(self) -> list[dict[str, Any]]:
        """quit: every generator closes its connections and writes its summary; the
        summaries (unlike ``close``, it waits up to 60 s in all, then terminates)."""
        self.tell("quit")
        finals = []
        deadline = time.monotonic() + 60  # a generator still connecting reads no command
        for proc, out in zip(self.procs, self.outs, strict=True):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            with contextlib.suppress(OSError, ValueError):
                finals.append(json.loads(out.read_text()))
        return finals


def merge_latency(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The step of every generator as one: deliveries, and percentiles of the merged
    histograms (the same log-linear buckets in every process; upper edges, in ms)."""
    counts: dict[int, int] = {}
    top = 0
    total_sum = 0.0
    for ev in events:
        data = ev["data"]
        for upper, n in data.get("buckets", []):
            counts[upper] = counts.get(upper, 0) + n
        top = max(top, data["latency_us"]["max"])
        total_sum += data["latency_us"]["mean"] * data["latency_us"]["n"]
    n = sum(counts.values())
    out: dict[str, Any] = {"n": n, "max_ms": round(top / 1000, 2)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        want = max(1, int(q * n))
        seen, value = 0, 0
        for upper in sorted(counts):
            seen += counts[upper]
            if seen >= want:
                value = min(upper, top)
                break
        out[f"{name}_ms"] = round(value / 1000, 2) if n else None
    out["mean_ms"] = round(total_sum / n / 1000, 2) if n else None
    data = [ev["data"] for ev in events]
    out.update(
        expected=sum(d["expected"] for d in data),
        delivered=sum(d["delivered"] for d in data),
        late=sum(d["late"] for d in data),
        published=sum(d["published"] for d in data),
        pub_acks=sum(d["pub_acks"] for d in data),
        pub_errors=sum(d["pub_errors"] for d in data),
        pub_backlog=any(d["pub_backlog"] for d in data),
        window_s=max(d["window_s"] for d in data),
        ready_subs=sum(ev["ready_subs"] for ev in events),
        ready_pubs=sum(ev["ready_pubs"] for ev in events),
        gen_cpu_s=round(sum(d["gen_cpu_s"] for d in data), 3),
    )
    return out


# --- one broker's run -------------------------------------------------------------------------


@functools.cache
def gc_interval() -> float:
    """``FreezingCollector``'s ``max_interval``, as the hub under test has it."""
    try:
        from tidings.app.gc_policy import FreezingCollector

        return float(FreezingCollector().max_interval)
    except Exception:  # a tree being edited may not import: the default of today
        return 300.0


@functools.cache
def gc_factors() -> tuple[tuple[float, float], tuple[float, float]]:
    """The ranges each worker draws its first and later collection intervals from, as
    shares of ``max_interval`` ((1, 1) both: a collector that does not stagger them)."""
    try:
        from tidings.app.gc_policy import FreezingCollector

        first, later = FreezingCollector.FIRST_FACTOR, FreezingCollector.LATER_FACTOR
        return (float(first[0]), float(first[1])), (float(later[0]), float(later[1]))
    except Exception:
        return (1.0, 1.0), (1.0, 1.0)


def gc_first_window() -> tuple[float, float]:
    """Ages of the workers between which each collects everything for the first time."""
    (low, high), _ = gc_factors()
    return low * gc_interval(), high * gc_interval()


def gc_window_text() -> str:
    first, last = gc_first_window()
    return f"{first:g} s" if first == last else f"{first:g} and {last:g} s"


def full_gc_within(start: float, end: float) -> bool:
    """Whether the hub's collector policy (``gc_freeze``, on in ``tidings serve``) may
    have run a periodic full collection in some worker between two of their ages: the
    k-th falls between the sums of k drawn intervals' lowest and highest shares."""
    interval = gc_interval()
    (first_low, first_high), (low, high) = gc_factors()
    slack = 3.0  # the workers' first tick is a second or two before the hub is ready
    for k in range(1, 1000):
        earliest = (first_low + (k - 1) * low) * interval - slack
        latest = (first_high + (k - 1) * high) * interval + slack
        if earliest > end:
            return False
        if latest >= start:
            return True
    return False


class Meter:
    """CPU of each process group and each core's busy time between two readings."""

    def __init__(self, groups: dict[str, list[int]], origin: float) -> None:
        self.groups = groups
        self.origin = origin  # when the hub's workers started (monotonic)
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {name: cpu_of(pids) for name, pids in self.groups.items()}
        self.cores0 = core_times()

    def read(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.t0
        cpu = {name: round(cpu_of(pids) - self.cpu0[name], 3) for name, pids in self.groups.items()}
        end = time.monotonic() - self.origin
        return {
            "seconds": round(seconds, 3),
            "hub_age_s": [round(end - seconds, 1), round(end, 1)],
            "full_gc": full_gc_within(end - seconds, end),
            "cpu_s": cpu,
            "cpu_pct": {k: round(100 * v / max(seconds, 1e-9), 1) for k, v in cpu.items()},
            "core_busy_pct": busy_pct(self.cores0, core_times()),
        }


def measure_broker(plan: Plan, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """One broker's run, filling ``row`` as it goes (what was measured before a failure
    stays in it)."""
    if kind == "nats" and not (ROOT / "src" / "tidings" / "brokers" / "nats.py").exists():
        raise RuntimeError("no NATS broker at this commit (src/tidings/brokers/nats.py)")
    tag = f"scale-{kind}"
    busy = run.wait_quiet(plan.quiet_wait)
    row.update(
        {
            "broker": kind,
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            "machine_busy_before_pct": round(busy, 1),
            "connections": plan.connections,
            "workers": plan.workers,
            "generators": plan.generators,
        }
    )
    log(f"== {kind}: load average {row['loadavg_before']}")
    with start_broker(kind) as broker:
        row["broker_url"] = broker.url
        row["broker_version"] = broker.version
        server, hub_argv = start_hub(plan, broker)
        origin = time.monotonic() - 1.0  # start_hub waits a second once the workers are up
        try:
            workers = server.pids[1:]
            row["hub_command"] = " ".join(hub_argv)
            row["worker_nofile"] = [nofile_of(pid) for pid in workers]
            if len(workers) != plan.workers:
                raise RuntimeError(f"{len(workers)} workers started, not {plan.workers}")
            time.sleep(2.0)
            before = {
                "hub_rss_kib": rss_of(workers),
                "hub_master_rss_kib": rss_of(server.pids[:1]),
                "broker_rss_kib": rss_of([broker.pid]),
                "kernel": kernel_memory(),
            }
            row["before"] = before
            gens = Generators(plan, server, tag)
            groups = {"hub": workers, "broker": [broker.pid], "generators": gens.pids}
            meter = Meter(groups, origin)
            try:
                row["generator_command"] = " ".join(gens.argvs[0])
                measure_phases(plan, row, server, broker, gens, meter, workers)
            finally:
                finals = gens.quit()
                row["closes"] = _closes(finals)
                row["unexpected_msgs"] = sum(f.get("unexpected_msgs", 0) for f in finals)
                row["bad_step"] = sum(f.get("bad_step", 0) for f in finals)
        finally:
            server.__exit__()
    return row


def _closes(finals: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for final in finals:
        for code, n in final.get("closes", {}).items():
            out[code] = out.get(code, 0) + n
    return out


def measure_phases(
    plan: Plan,
    row: dict[str, Any],
    server: Server,
    broker: Broker,
    gens: Generators,
    meter: Meter,
    workers: list[int],
) -> None:
    n = plan.connections
    # 1. connect
    connected = gens.expect("connected", gens.connect_timeout + 120)
    usage = meter.read()
    ready = gens.subscribed = sum(c["ready_subs"] for c in connected)
    start = min(c["start_us"] for c in connected)
    last = max(c["last_ready_us"] for c in connected)
    ramp_s = (last - start) / 1e6
    row["connect"] = {
        "subscribed": ready,
        "failed": sum(c["failed"] for c in connected),
        "timed_out": any(c["timed_out"] for c in connected),
        "publishers": sum(c["ready_pubs"] for c in connected),
        "ramp_s": round(ramp_s, 2),
        "rate_per_s": round(ready / ramp_s, 1) if ramp_s > 0 else None,
        "handshake_p50_ms": [round(c["latency_us"]["p50"] / 1000, 1) for c in connected],
        "handshake_p99_ms": [round(c["latency_us"]["p99"] / 1000, 1) for c in connected],
        "usage": usage,
        "hub_cpu_us_per_conn": round(usage["cpu_s"]["hub"] / max(1, ready) * 1e6, 1),
        "broker_cpu_us_per_conn": round(usage["cpu_s"]["broker"] / max(1, ready) * 1e6, 2),
    }
    log(
        f"  connected {ready:,}/{n:,} in {ramp_s:.1f}s = {row['connect']['rate_per_s']}/s "
        f"(hub CPU {row['connect']['hub_cpu_us_per_conn']} µs/connection; "
        f"{row['connect']['failed']} failed)"
    )
    if ready < n:
        row["errors_connect"] = f"{n - ready:,} connections not subscribed"
    # 2. memory, once every connection is subscribed (the generators settled 2 s)
    time.sleep(3.0)
    after = {
        "hub_rss_kib": rss_of(workers),
        "hub_master_rss_kib": rss_of(server.pids[:1]),
        "broker_rss_kib": rss_of([broker.pid]),
        "generators_rss_kib": rss_of(gens.pids),
        "kernel": kernel_memory(),
        "worker_open_files": [open_files(pid) for pid in workers],
    }
    row["after_connect"] = after
    row["memory"] = memory_per_connection(row["before"], after, ready)
    row["connect"]["kernel_counters"] = {
        key: after["kernel"][key] - row["before"]["kernel"][key] for key in NETSTAT
    }
    mem = row["memory"]
    log(
        f"  memory per connection: hub {mem['hub_kib']:.2f} KiB, kernel (both ends) "
        f"{mem['kernel_slab_kib']:.2f} KiB slab + {mem['kernel_tcp_buffers_kib']:.2f} KiB TCP "
        f"buffers, broker {mem['broker_kib']:.3f} KiB; workers' open files "
        f"{after['worker_open_files']}"
    )
    # 3. idle
    meter.reset()
    gens.tell(f"hold {plan.idle:g}")
    held = gens.expect("held", plan.idle + 60)
    usage = meter.read()
    note_lost(row, gens, held, "the idle hold")
    row["idle"] = {
        "seconds": plan.idle,
        "pings": sum(h["pings"] for h in held),
        "subscribed": sum(h["ready_subs"] for h in held),
        "usage": usage,
        "hub_cpu_pct": usage["cpu_pct"]["hub"],
        "hub_cpu_us_per_conn_s": round(usage["cpu_s"]["hub"] / usage["seconds"] / ready * 1e6, 4),
    }
    log(
        f"  idle {plan.idle:g}s: hub {usage['cpu_pct']['hub']}% CPU, "
        f"{row['idle']['pings']:,} pings answered"
    )
    idle_hub_rate = usage["cpu_s"]["hub"] / usage["seconds"]
    idle_broker_rate = usage["cpu_s"]["broker"] / usage["seconds"]
    # 4. the collector's periodic full collection, through a slow stream of publications
    if plan.gc_probe:
        row["gc"] = gc_phase(plan, row, gens, meter)
    # 4. fan-out to the shared channel
    row["fanout"] = []
    for i in range(plan.fanout):
        # spaced out: each publication finds the hub back to its idle work
        time.sleep(plan.fanout_gap if i else 1.0)
        fan_wait = wait_idle(workers, idle_hub_rate, plan.fanout_wait)
        meter.reset()
        k = gens.step(0, 0.2, plan.fanout_drain, 1)
        sent, api_ms = publish_shared(server.api_port, k)
        events = gens.results(0.2, plan.fanout_drain)
        usage = meter.read()
        lat = merge_latency(events)
        hub_cpu = usage["cpu_s"]["hub"] - idle_hub_rate * usage["seconds"]
        fan = {
            "step": k,
            **lat,
            "api_ms": api_ms,
            "waited_s": fan_wait,
            "usage": usage,
            "hub_cpu_s": round(hub_cpu, 3),
            "hub_cpu_us_per_delivery": round(hub_cpu / max(1, lat["delivered"]) * 1e6, 2),
        }
        row["fanout"].append(fan)
        log(
            f"  fan-out {i + 1}: {lat['delivered']:,}/{lat['expected']:,} delivered, p50 "
            f"{lat['p50_ms']} p99 {lat['p99_ms']} last {lat['max_ms']} ms; hub "
            f"{fan['hub_cpu_us_per_delivery']} µs/delivery (API call {api_ms} ms)"
        )
        note_lost(row, gens, events, f"fan-out {i + 1}")
    # 5. personal channels
    wait_idle(workers, idle_hub_rate, plan.fanout_wait)
    row["personal"] = personal_ramp(plan, row, gens, meter, idle_hub_rate, idle_broker_rate)
    best = row["personal"]["best"]
    log(
        f"  personal: {best['rate'] if best else 0:g} publications/s at p99 <= {P99_LIMIT_MS:g} ms"
        + (
            f" (first failure {row['personal']['first_fail_rate']:g}/s)"
            if row["personal"]["first_fail_rate"]
            else ""
        )
    )


def wait_idle(workers: list[int], idle_rate: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the workers' CPU is back near what the idle
    connections cost; the seconds waited."""
    start = time.monotonic()
    limit = 1.5 * idle_rate + 0.05  # cores
    while time.monotonic() - start < max_wait:
        cpu0, t0 = cpu_of(workers), time.monotonic()
        time.sleep(1.0)
        if (cpu_of(workers) - cpu0) / (time.monotonic() - t0) <= limit:
            break
    return round(time.monotonic() - start, 1)


def note_lost(
    row: dict[str, Any], gens: Generators, events: list[dict[str, Any]], when: str
) -> int:
    """Connections that ended during a phase (the server closed them): recorded in the
    row, and the phases after it count on those left. How many were lost."""
    ready = sum(ev["ready_subs"] for ev in events)
    lost = gens.subscribed - ready
    if lost > 0:
        closes: dict[str, int] = {}
        for ev in events:
            for code, n in ev.get("closes", {}).items():
                closes[code] = closes.get(code, 0) + n
        row.setdefault("lost", []).append({"when": when, "lost": lost, "closes": closes})
        log(f"  {lost:,} connections lost during {when} (how they ended: {closes})")
        gens.subscribed = ready
    return lost


class RampStopped(Exception):
    """Connections were lost in a step: the ramp ends there."""


def gc_phase(plan: Plan, row: dict[str, Any], gens: Generators, meter: Meter) -> dict[str, Any]:
    """Wait for the workers' first periodic full collections (``gc_freeze``: each in
    its own part of the first window) and publish a slow stream of personal
    publications through them: its worst delays are the clients' pause."""
    first, last = gc_first_window()
    age = time.monotonic() - meter.origin
    lead = 15.0  # the stream starts this long before the first collection, ends after the last
    if age > first - lead + 5:
        return {"skipped": f"the workers were {age:.0f} s old: their first full collections "
                           "fell in an earlier phase"}  # fmt: skip
    time.sleep(max(0.0, first - lead - age))
    meter.reset()
    seconds = last - first + 2 * lead
    gens.step(plan.gc_probe_rate, seconds, 15, 0)
    events = gens.results(seconds, 15)
    usage = meter.read()
    lat = merge_latency(events)
    lost = note_lost(row, gens, events, "the full collection")
    window = [round(first - lead), round(last + lead)]
    out = {"rate": plan.gc_probe_rate, **lat, "usage": usage, "lost": lost, "window_s": window}
    log(
        f"  full collections at {first:g}-{last:g} s: a {plan.gc_probe_rate:g}/s stream through it: "
        f"{lat['delivered']:,}/{lat['expected']:,} delivered, p50 {lat['p50_ms']} p99 "
        f"{lat['p99_ms']} max {lat['max_ms']} ms; {lost:,} connections lost; hub CPU "
        f"{usage['cpu_s']['hub']:.1f} s over {usage['seconds']:.0f} s"
    )
    return out


def publish_shared(api_port: int, step: int) -> tuple[int, float]:
    """One publication to the shared channel through the server API, stamped now."""
    head = b'{"ch":"%s","ts":%d,"s":%d,"p":"' % (SHARED.encode(), time.time_ns() // 1000, step)
    data = head + b"x" * (SIZE - len(head) - 2) + b'"}'
    body = b'{"channel":"%s","data":%s}' % (SHARED.encode(), data)
    t0 = time.monotonic()
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/api/publish", data=body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = response.read()
    if b'"error"' in answer:
        raise RuntimeError(f"publish to {SHARED}: {answer[:200]!r}")
    return len(data), round((time.monotonic() - t0) * 1000, 2)


def ramp_steps(
    plan: Plan, gens: Generators, passes: Callable[[float], bool]
) -> tuple[float | None, float | None]:
    """The rates to try, each after the last one's result: x factor while they pass; down
    when the first one fails; then bisection. The best pass and the lowest failure above it."""
    best: float | None = None
    fail: float | None = None
    rate = plan.start
    while rate <= plan.cap and gens.steps < MAX_STEPS - 8:
        if passes(rate):
            best = rate
            rate *= plan.factor
        else:
            fail = rate
            break
    # the first rate failed: down, to a floor, until one passes
    while best is None and fail is not None and gens.steps < MAX_STEPS - 8:
        rate = fail / plan.factor
        if rate < plan.start / plan.factor**4:
            break
        if passes(rate):
            best = rate
        else:
            fail = rate
    for _ in range(plan.refine if best and fail else 0):
        assert best is not None and fail is not None
        mid = round(math.sqrt(best * fail), -1) or round(math.sqrt(best * fail))
        if mid <= best or mid >= fail or gens.steps >= MAX_STEPS - 2:
            break
        if passes(mid):
            best = mid
        else:
            fail = mid
    return best, fail


def personal_ramp(
    plan: Plan,
    row: dict[str, Any],
    gens: Generators,
    meter: Meter,
    idle_hub_rate: float,
    idle_broker_rate: float,
) -> dict[str, Any]:
    """Publications to random personal channels at rising total rates, until one fails."""
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> dict[str, Any]:
        meter.reset()
        gens.step(rate, plan.step, plan.drain, 0)
        events = gens.results(plan.step, plan.drain)
        usage = meter.read()
        lat = merge_latency(events)
        target = round(rate / plan.generators * plan.step) * plan.generators
        lost_subs = gens.subscribed - lat["ready_subs"]  # checked below, after the record
        published = max(1, lat["published"])
        # CPU beyond what the idle connections cost over the same time
        hub_cpu = usage["cpu_s"]["hub"] - idle_hub_rate * usage["seconds"]
        broker_cpu = usage["cpu_s"]["broker"] - idle_broker_rate * usage["seconds"]
        st = {
            "rate": rate,
            **lat,
            "target": target,
            "usage": usage,
            "hub_cpu_pct": usage["cpu_pct"]["hub"],
            "broker_cpu_pct": usage["cpu_pct"]["broker"],
            "gen_cpu_pct": usage["cpu_pct"]["generators"],
            "hub_cpu_us_per_pub": round(hub_cpu / published * 1e6, 1),
            "broker_cpu_us_per_pub": round(broker_cpu / published * 1e6, 2),
            "lost_subscribers": lost_subs,
        }
        st["pass"] = bool(
            lat["delivered"] == lat["expected"]
            and lat["expected"] > 0
            and lat["published"] >= target
            and not lat["pub_errors"]
            and not lat["pub_backlog"]
            and lat["p99_ms"] is not None
            and lat["p99_ms"] <= P99_LIMIT_MS
            and lost_subs == 0
        )
        steps.append(st)
        log(
            f"  personal {rate:g}/s: {lat['delivered']:,}/{lat['expected']:,} delivered "
            f"(published {lat['published']:,}/{target:,}), p50 {lat['p50_ms']} p99 "
            f"{lat['p99_ms']} max {lat['max_ms']} ms; CPU hub {st['hub_cpu_pct']}% broker "
            f"{st['broker_cpu_pct']}% generators {st['gen_cpu_pct']}%; cores "
            f"{usage['core_busy_pct']} -> {'pass' if st['pass'] else 'FAIL'}"
        )
        time.sleep(plan.gap)
        if note_lost(row, gens, events, f"the personal step at {rate:g}/s"):
            raise RampStopped
        return st

    def passes(rate: float) -> bool:
        if step(rate)["pass"]:
            return True
        if plan.confirm:  # once more: it counts only if it fails again
            steps[-1]["retried"] = True
            return bool(step(rate)["pass"])
        return False

    time.sleep(plan.settle)  # the fan-out's aftermath (writes, collections) is not this ramp's
    best: float | None = None
    fail: float | None = None
    try:
        best, fail = ramp_steps(plan, gens, passes)
    except RampStopped:
        fail = steps[-1]["rate"]
    passed = [s for s in steps if s["pass"]]
    best_step = max(passed, key=lambda s: s["rate"]) if passed else None
    # The CPU of a publication, at rates where it outweighs the idle connections' own
    # (whatever the latency): the ramp may stop where it is lost in their noise.
    cost_steps: list[dict[str, Any]] = []
    done = len(steps)
    try:
        for rate in plan.cost_rates:
            if rate > (best or 0) and gens.steps < MAX_STEPS:
                step(rate)
    except RampStopped:
        pass
    cost_steps, steps = steps[done:], steps[:done]
    complete = [s for s in steps + cost_steps if s["delivered"] == s["expected"] > 0]
    return {
        "steps": steps,
        "cost_steps": cost_steps,
        "best": best_step,
        "best_rate": best_step["rate"] if best_step else 0.0,
        "first_fail_rate": fail,
        "ramp_exhausted": fail is None,
        # the cost of one more publication: the slope of CPU against the rate, over the steps
        # that delivered everything (what does not grow with the rate is not in it)
        "hub_us_per_pub": marginal(complete, "hub"),
        "broker_us_per_pub": marginal(complete, "broker"),
    }


def personal_cost(row: dict[str, Any], group: str = "hub") -> float | None:
    """µs of ``group``'s CPU per personal publication (the slope over the complete steps)."""
    p = row.get("personal") or {}
    if p.get(f"{group}_us_per_pub") is not None:
        return float(p[f"{group}_us_per_pub"])
    steps = p.get("steps", []) + p.get("cost_steps", [])
    return marginal([s for s in steps if s["delivered"] == s["expected"] > 0], group)


def marginal(steps: list[dict[str, Any]], group: str) -> float | None:
    """µs of ``group``'s CPU per publication: least squares of CPU/s against publications/s."""
    points = [
        (s["published"] / s["usage"]["seconds"], s["usage"]["cpu_s"][group] / s["usage"]["seconds"])
        for s in steps
    ]
    if len({round(x) for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return round(sxy / sxx * 1e6, 2)


def memory_per_connection(
    before: dict[str, Any], after: dict[str, Any], n: int
) -> dict[str, float]:
    n = max(1, n)
    kb, ka = before["kernel"], after["kernel"]
    return {
        "hub_kib": round((after["hub_rss_kib"] - before["hub_rss_kib"]) / n, 3),
        "broker_kib": round((after["broker_rss_kib"] - before["broker_rss_kib"]) / n, 3),
        "generators_kib": round(after["generators_rss_kib"] / n, 3),
        # both ends of each connection are sockets of this machine
        "kernel_slab_kib": round((ka["Slab"] - kb["Slab"]) / n, 3),
        "kernel_slab_unreclaimable_kib": round((ka["SUnreclaim"] - kb["SUnreclaim"]) / n, 3),
        "kernel_tcp_buffers_kib": round((ka["tcp_mem_kib"] - kb["tcp_mem_kib"]) / n, 3),
        "kernel_pagetables_kib": round((ka["PageTables"] - kb["PageTables"]) / n, 3),
        "sockets_added": ka["sockets_used"] - kb["sockets_used"],
        "mem_available_drop_kib": round((kb["MemAvailable"] - ka["MemAvailable"]) / n, 3),
    }


# --- the projection ---------------------------------------------------------------------------


def connect_us_net(row: dict[str, Any]) -> float | None:
    """The hub's CPU per connect + 2 subscribes, without the pings of the connections
    made so far (half of them on average over the ramp, at the idle phase's rate)."""
    c, idle = row.get("connect"), row.get("idle")
    if not c or not idle:
        return None
    idle_rate = idle["usage"]["cpu_s"]["hub"] / idle["usage"]["seconds"]
    ramp_s, phase_s = c["ramp_s"], c["usage"]["seconds"]
    pings_s = idle_rate * (ramp_s / 2 + max(0.0, phase_s - ramp_s))
    return round((c["usage"]["cpu_s"]["hub"] - pings_s) / max(1, c["subscribed"]) * 1e6, 1)


def projection(row: dict[str, Any]) -> dict[str, Any]:
    """What 1,000,000 connections would need, from this run's per-connection costs."""
    mem = row["memory"]
    # one end of each loopback connection is the hub's: half the kernel's growth
    server_kernel_kib = (mem["kernel_slab_kib"] + mem["kernel_tcp_buffers_kib"]) / 2
    per_conn_kib = mem["hub_kib"] + server_kernel_kib
    fan = [f for f in row.get("fanout", []) if f["delivered"]]
    fan_us = sorted(f["hub_cpu_us_per_delivery"] for f in fan)
    fan_cost = fan_us[len(fan_us) // 2] if fan_us else None
    best = (row.get("personal") or {}).get("best")
    idle_us = row["idle"]["hub_cpu_us_per_conn_s"]
    connect_us = connect_us_net(row) or row["connect"]["hub_cpu_us_per_conn"]
    out: dict[str, Any] = {
        "server_kernel_kib": round(server_kernel_kib, 2),
        "per_conn_kib": round(per_conn_kib, 2),
        "memory_gib": round(per_conn_kib * MILLION / 1024 / 1024, 1),
        "processes_at_nofile": math.ceil(MILLION / PER_PROCESS),
        "idle_cores": round(idle_us * MILLION / 1e6, 2),
        "connect_us": connect_us,
        "connect_core_s": round(connect_us * MILLION / 1e6, 0),
        "churn_cores": round(connect_us * CENTRIFUGO["churn_per_s"] / 1e6, 2),
        "fanout_us_per_delivery": fan_cost,
    }
    rate = CENTRIFUGO["deliveries_per_s"]
    if fan_cost:
        out["broadcast_cores"] = round(rate * fan_cost / 1e6, 1)
    hub_pub = personal_cost(row) or (best and best["hub_cpu_us_per_pub"])
    broker_pub = personal_cost(row, "broker") or (best and best["broker_cpu_us_per_pub"])
    if hub_pub and broker_pub:
        out["personal_us_per_pub"] = hub_pub
        out["personal_cores"] = round(rate * hub_pub / 1e6, 1)
        out["broker_us_per_pub"] = broker_pub
        if fan_cost:
            # a publication to a channel of GROUP subscribers: one publication's cost (as a
            # personal one, which includes its one delivery) plus GROUP - 1 more deliveries
            per_delivery = (hub_pub + (GROUP - 1) * fan_cost) / GROUP
            out["group_us_per_delivery"] = round(per_delivery, 1)
            out["group_cores"] = round(rate * per_delivery / 1e6, 1)
        if broker_pub > 0:
            # a broker process at 70% of one core
            per_shard = 0.7e6 / broker_pub
            out["broker_pubs_per_shard"] = round(per_shard, -2)
            out["broker_shards_personal"] = math.ceil(rate / per_shard)
            out["broker_shards_group"] = math.ceil(rate / GROUP / per_shard)
    return out


# --- the report -------------------------------------------------------------------------------


def _gc(usage: dict[str, Any]) -> str:
    return "**yes**" if usage.get("full_gc") else ""


def _us(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f}"


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def write_report(summary: dict[str, Any], outdir: Path) -> None:
    meta = summary["meta"]
    plan = meta["plan"]
    m = meta["machine"]
    runs = summary["runs"].get("scale", {})
    lines = [
        "# tidings: the scale run",
        "",
        f"Generated by `bench/scale.py` ({'quick' if plan['quick'] else 'full'} run), "
        f"{m['date']}, commit `{m['git_commit']}`"
        + (" (src modified)" if m.get("git_dirty") else "")
        + f", in {meta.get('duration_s', 0) / 60:.1f} min.",
        "",
        f"- Command: `{meta['command']}`"
        + (" (`make scale`)" if meta["command"].strip() == "bench/scale.py" else ""),
        f"- Machine: {m['nproc']} cores ({m['cpu_model']}), {m.get('mem_gib', '?')} GiB, Linux "
        f"{m['kernel']}; Python {m['tidings_env'].get('python', '?')}, tidings "
        f"{m['tidings_env'].get('tidings', '?')}, websockets {m['tidings_env'].get('websockets', '?')}, "
        f"uvloop {m['tidings_env'].get('uvloop', '?')}, redis-py {m['tidings_env'].get('redis', '?')}, "
        f"nats-py {m['tidings_env'].get('nats-py', '?')}.",
        f"- Limits: {m['nofile']:,} open files per process (`ulimit -n`); ephemeral ports "
        f"{m['port_range']}; `somaxconn` {m['somaxconn']}; `tcp_mem` {m['tcp_mem']} pages.",
        f"- Load average at the start {' '.join(m['loadavg_start'])}, at the end "
        f"{' '.join(meta.get('loadavg_end') or [])}"
        " (the machine is shared: other work shows in the cores' busy time below).",
        "",
        "## Set-up",
        "",
        f"- **Hub**: `tidings serve --workers {plan['workers']}` (SO_REUSEPORT), each worker "
        f"with {m['nofile']:,} open files; configuration written by the script: anonymous "
        "clients may subscribe to `shared` and to `personal:*` and publish to `personal:*`, "
        "`client.connection_limit = 0` (per worker), `command_rate_limit = 0`, "
        + (
            f"`client.ping_interval = {plan['ping_interval']:g}`"
            if plan.get("ping_interval")
            else "pings every 25 s (the default: the idle phase pays for them)"
        )
        + ", no history, presence or join/leave.",
        f"- **Clients**: {plan['generators']} `bench/build/wsbench` processes (C, epoll), process i "
        "bound to 127.0.0.(2+i); each connection sends `connect` + `subscribe personal:<i>` + "
        f"`subscribe shared` in one frame and counts once both replies arrived; "
        f"{plan['inflight']} handshakes in flight per process; {plan['pub_conns']} publisher "
        "connections per process (not counted in the connections).",
        "- **Broker**: redis-server or `nats-server -js`, started by the script on a free port.",
        "- **Cores**: nothing pinned: hub workers, generators and the broker share both cores. "
        "CPU below is per process group (utime + stime from `/proc`); the kernel's softirq work "
        "for loopback traffic lands partly on whichever process is running, so the groups do "
        "not add up to the cores' busy time. Before each broker's run the script waits up to "
        f"{plan['quiet_wait']:g} s for the cores to be under 20% busy with other work.",
        f"- **Fan-out**: {plan['fanout']} publications of {SIZE} B to `shared` via `POST "
        f"/api/publish`, at least {plan['fanout_gap']:g} s apart and each once the workers' CPU "
        "is back to its idle level (up to "
        f"{plan.get('fanout_wait', 30):g} s more); every delivery to every connection is a "
        "sample (wall-clock stamp in the payload, histograms merged over the generator "
        "processes, 1.6% buckets). *last* = the slowest delivery: the time until all N had it.",
        f"- **Personal channels**: {SIZE} B publications to random `personal:<i>` (each with one "
        "subscriber) as WebSocket `publish` commands from the publisher connections, at total "
        f"rates from {plan['start']:g}/s, x{plan['factor']:g} (down, /{plan['factor']:g}, when "
        f"the first one fails), {plan['step']:g} s per step, "
        f"{plan['drain']:g} s drain"
        + (", a failed step run once more" if plan["confirm"] else "")
        + (f", {plan['refine']} bisection steps" if plan["refine"] else "")
        + f". A step passes when every publication was sent on schedule and delivered and "
        f"p99 <= {P99_LIMIT_MS:g} ms."
        + (
            f" Then, latency aside, steps at {', '.join(f'{r:g}' for r in plan['cost_rates'])}/s "
            "(those above the best pass) measure the CPU per publication where it outweighs "
            "the idle connections' own."
            if plan.get("cost_rates")
            else ""
        ),
        "- **Periodic full collection**: "
        + (
            f"each worker collects everything for the first time between {gc_window_text()} "
            f"of its age; the script runs {plan.get('gc_probe_rate', 20):g} personal "
            "publications/s from 15 s before to 15 s after that window."
            if plan.get("gc_probe")
            else "not probed (`--no-gc-probe` or `--quick`)."
        ),
        "- **full GC** (tables): the step spans ages of the workers at which `tidings "
        "serve`'s collector policy (`gc_freeze`) may unfreeze and collect everything in one "
        f"of them (every {gc_interval():g} s scaled by a share each worker draws: "
        f"{gc_window_text()} the first time).",
        "",
    ]
    if not runs:
        lines += ["No broker was measured.", ""]
    lines += results_table({k: r for k, r in runs.items() if not r.get("variant")})
    others = {k: r for k, r in runs.items() if r.get("variant")}
    if others:
        lines += results_table(
            others, "### Other runs (repeats and diagnostics; each one's section says how it ran)"
        )
    lines += findings(runs)
    for kind, row in runs.items():
        lines += broker_section(kind, row)
    lines += projection_section(runs, plan)
    errors = summary.get("errors") or []
    lines += ["## Misses and limits of this run", ""]
    lines += [f"- {e}" for e in errors]
    lines += notes(runs, plan)
    lines.append("")
    (outdir / "REPORT.md").write_text("\n".join(lines))


def findings(runs: dict[str, Any]) -> list[str]:
    """What the rows say together: the main runs beside the variants (other runs added
    with --add-run, e.g. pings off, or a quiet machine)."""
    main = {k: r for k, r in runs.items() if not r.get("variant")}
    variants = {k: r for k, r in runs.items() if r.get("variant")}
    lines: list[str] = []
    probed = {
        k: r["gc"]
        for k, r in runs.items()
        if (r.get("gc") or {}).get("max_ms") is not None
        and not (r.get("variant") or {}).get("ping_interval")
    }
    if probed:
        lines.append(
            f"- **The periodic full collection** (first between {gc_window_text()} of a "
            "worker's age, each worker at its own time), with pings every 25 s: worst delay of a slow stream of publications "
            "through it, and connections the hub closed with 3012 (no pong in time): "
            + "; ".join(
                f"{k}: {g['max_ms']:,.0f} ms, {g['lost']:,} closed" for k, g in probed.items()
            )
            + "."
        )
    for name, row in runs.items():
        c = row.get("connect") or {}
        if c and c["subscribed"] < row["connections"]:
            others = [
                f"{k} ({r['connect']['rate_per_s']:,.0f}/s, load average "
                f"{' '.join(f'{x:g}' for x in r.get('loadavg_before', []))})"
                for k, r in runs.items()
                if k != name
                and k.split(",")[0] == name.split(",")[0]
                and _complete(r)
                and r["connections"] == row["connections"]
            ]
            lines.append(
                f"- **{name}**: only {c['subscribed']:,} of {row['connections']:,} connections "
                f"subscribed in {c['ramp_s']:.0f} s ({c['rate_per_s']:,.0f}/s, "
                f"{c['hub_cpu_us_per_conn']:,.0f} µs of hub CPU per connection; load average "
                f"{' '.join(f'{x:g}' for x in row.get('loadavg_before', []))} before it)"
                + ("; the same broker connected them all in " + ", ".join(others) if others else "")
                + "."
            )
    for name, row in variants.items():
        v, gc, p = row["variant"], row.get("gc") or {}, row.get("personal") or {}
        base = main.get(name.split(",")[0])
        if v.get("ping_interval") and base:
            bp = base.get("personal") or {}
            if gc.get("max_ms") is not None:
                lines.append(
                    f"- **{name}**: the same full collection without pings paused clients "
                    f"{gc['max_ms']:,.0f} ms and closed {gc['lost']:,} connections. With pings "
                    "the pause lets pong deadlines pass: the hub closes those clients (3012), "
                    "and closing thousands at once lengthens the pause."
                )
            if p.get("best_rate") is not None and bp.get("best_rate") is not None:
                lines.append(
                    f"- **{name}**: personal-channel publications at p99 <= {P99_LIMIT_MS:g} ms: "
                    f"{p['best_rate']:,.4g}/s, against "
                    + (
                        f"{bp['best_rate']:,.4g}/s"
                        if bp["best_rate"]
                        else f"none (down to {min(st['rate'] for st in bp['steps']):,.4g}/s)"
                    )
                    + " with pings every 25 s: the pings, not the publications, set the p99 at "
                    "this size (the hub "
                    "sends each second's pings in one go per worker, its heartbeat tick: ~1/25 "
                    "of a worker's connections, ~670 at 100,000 over 6 workers). Idle CPU: "
                    f"{row['idle']['hub_cpu_pct']:.0f}% of a core against "
                    f"{base['idle']['hub_cpu_pct']:.0f}% with pings."
                )
    if lines:
        lines = ["## Findings", "", *lines, ""]
    if len(runs) > 1:
        lines += [
            "CPU per operation beside the load the machine had from other work (the same "
            "operations cost more CPU time when the two cores are shared with more):",
            "",
            "| run | connections | load average before | hub µs per connect (without pings) "
            "| hub µs per fan-out delivery | hub µs per personal publication |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for name, row in runs.items():
            fans = [f["hub_cpu_us_per_delivery"] for f in row.get("fanout", []) if f["delivered"]]
            pub = personal_cost(row)
            lines.append(
                f"| {name} | {row['connections']:,} | "
                f"{' '.join(f'{x:g}' for x in row.get('loadavg_before', []))} | "
                f"{_us(connect_us_net(row))} | {_us(_median(fans))} | {_us(pub)} |"
            )
        lines.append("")
    return lines


def results_table(runs: dict[str, Any], title: str = "## Results") -> list[str]:
    if not runs:
        return []
    lines = [
        title,
        "",
        "| | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]

    def line(name: str, fn: Any) -> None:
        cells = []
        for row in runs.values():
            try:
                cells.append(fn(row))
            except (KeyError, TypeError, ValueError, IndexError):
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    line("load average before the run (cores busy with other work)",
         lambda r: " ".join(f"{x:g}" for x in r["loadavg_before"])
         + f" ({r['machine_busy_before_pct']:.0f}%)")  # fmt: skip
    line("connections subscribed (2 channels each)", _connections_cell)
    line("connect rate (connect + 2 subscribes, whole ramp)",
         lambda r: f"{r['connect']['rate_per_s']:,.0f}/s ({r['connect']['ramp_s']:.1f} s)")  # fmt: skip
    line("hub RSS per connection", lambda r: f"{r['memory']['hub_kib']:.2f} KiB")
    line("kernel per connection, both ends (slab + TCP buffers)",
         lambda r: f"{r['memory']['kernel_slab_kib']:.2f} + {round(r['memory']['kernel_tcp_buffers_kib'], 2) + 0.0:.2f} KiB")  # fmt: skip
    line("broker RSS per connection", lambda r: f"{r['memory']['broker_kib']:.3f} KiB")
    line("hub CPU per idle connection", lambda r: f"{r['idle']['hub_cpu_us_per_conn_s']:.3f} µs/s")
    line(
        "the workers' periodic full collection: worst delay of a slow stream through it, "
        "connections lost",
        _gc_cell,
    )
    line("fan-out to all: p50 / p99 / last (median of the publications)", _fanout_cell)
    line("personal-channel publications/s at p99 <= 50 ms", _personal_cell)
    lines.append("")
    return lines


def _gc_cell(row: dict[str, Any]) -> str:
    gc = row["gc"]
    if "skipped" in gc:
        return "not probed"
    return f"{gc['max_ms']:,.0f} ms; {gc['lost']:,} lost"


def _fanout_cell(row: dict[str, Any]) -> str:
    fans = row["fanout"]
    complete = all(f["delivered"] == f["expected"] for f in fans)
    return (
        f"{ms(_median([f['p50_ms'] for f in fans]))} / {ms(_median([f['p99_ms'] for f in fans]))}"
        f" / {ms(_median([f['max_ms'] for f in fans]))} ms" + ("" if complete else " (**losses**)")
    )


def _connections_cell(row: dict[str, Any]) -> str:
    c = row["connect"]
    text = f"{c['subscribed']:,} / {row['connections']:,}"
    if c["subscribed"] < row["connections"]:
        text += " (**incomplete**: the figures below are for those)"
    return text


def _personal_cell(row: dict[str, Any]) -> str:
    p = row["personal"]
    best = p["best"]
    if not best:
        return "nothing passed"
    text = f"**{best['rate']:,.4g}** (p99 {best['p99_ms']:.1f} ms)"
    if best["expected"] < 0.9 * best["published"]:
        text += (
            f" (only {best['expected'] / best['published']:.0%} of them to a channel with "
            "its subscriber)"
        )
    if p["first_fail_rate"]:
        text += f"; {p['first_fail_rate']:,.4g}/s failed"
    elif p["ramp_exhausted"]:
        text += "; every rate tried passed"
    return text


def broker_section(kind: str, row: dict[str, Any]) -> list[str]:
    lines = [f"## {kind}", ""]
    variant = row.get("variant")
    if variant:
        lines += [
            f"A separate run: `{variant['command']}`, {variant['date']}, commit "
            f"`{variant['commit']}`.",
            "",
        ]
    lines += [
        f"- Broker: {row.get('broker_version', '?')} at `{row.get('broker_url', '?')}`.",
        f"- Hub: `{row.get('hub_command', '?')}`; workers' open-file limit "
        f"{row.get('worker_nofile')}.",
        f"- Generator 0 of {row['generators']}: `{row.get('generator_command', '?')}`.",
        "",
    ]
    c = row.get("connect")
    if c:
        u = c["usage"]
        lines += [
            "### Connect",
            "",
            f"{c['subscribed']:,} of {row['connections']:,} connections subscribed in "
            f"{c['ramp_s']:.1f} s = **{c['rate_per_s']:,.0f}/s** ({c['failed']} failed"
            + (", the connect phase timed out" if c["timed_out"] else "")
            + f"). Handshake to second subscribe reply, per generator: p50 {c['handshake_p50_ms']} "
            f"ms, p99 {c['handshake_p99_ms']} ms. CPU over the ramp: hub {u['cpu_pct']['hub']}% "
            f"(of one core; {c['hub_cpu_us_per_conn']} µs per connection, "
            f"{_us(connect_us_net(row))} µs without the pings of the connections "
            "already made, at the idle phase's rate), broker "
            f"{u['cpu_pct']['broker']}% ({c['broker_cpu_us_per_conn']} µs per connection), "
            f"generators {u['cpu_pct']['generators']}%; cores busy {u['core_busy_pct']}%. "
            f"Kernel counters over the ramp (machine-wide): {c.get('kernel_counters', '–')}.",
            "",
        ]
    mem = row.get("memory")
    if mem:
        b, a = row["before"], row["after_connect"]
        lines += [
            "### Memory",
            "",
            "| | before | after | per connection |",
            "|---|---:|---:|---:|",
            f"| hub workers' RSS (sum) | {b['hub_rss_kib'] / 1024:,.1f} MiB | "
            f"{a['hub_rss_kib'] / 1024:,.1f} MiB | **{mem['hub_kib']:.2f} KiB** |",
            f"| kernel slab (both ends) | {b['kernel']['Slab'] / 1024:,.1f} MiB | "
            f"{a['kernel']['Slab'] / 1024:,.1f} MiB | {mem['kernel_slab_kib']:.2f} KiB |",
            f"| kernel TCP buffers (`sockstat` mem, both ends) | "
            f"{b['kernel']['tcp_mem_kib'] / 1024:,.1f} MiB | {a['kernel']['tcp_mem_kib'] / 1024:,.1f} "
            f"MiB | {mem['kernel_tcp_buffers_kib']:.2f} KiB |",
            f"| broker RSS | {b['broker_rss_kib'] / 1024:,.1f} MiB | "
            f"{a['broker_rss_kib'] / 1024:,.1f} MiB | {mem['broker_kib']:.3f} KiB |",
            f"| generators' RSS (client side, C) | – | {a['generators_rss_kib'] / 1024:,.1f} MiB | "
            f"{mem['generators_kib']:.2f} KiB |",
            f"| MemAvailable (whole machine) | {b['kernel']['MemAvailable'] / 1024:,.0f} MiB | "
            f"{a['kernel']['MemAvailable'] / 1024:,.0f} MiB | {mem['mem_available_drop_kib']:.2f} KiB |",
            "",
            f"Sockets in use grew by {mem['sockets_added']:,} (two per connection). Open files per "
            f"worker after the ramp: {a['worker_open_files']} (SO_REUSEPORT's spread). The kernel "
            "figures are machine-wide: other work on the machine moves them a little.",
            "",
        ]
    idle = row.get("idle")
    if idle:
        lines += [
            "### Idle",
            "",
            f"{idle['subscribed']:,} connections held {idle['seconds']:g} s: hub "
            f"{idle['hub_cpu_pct']}% of a core ({idle['hub_cpu_us_per_conn_s']:.3f} µs per "
            f"connection per second), {idle['pings']:,} pings answered; cores busy "
            f"{idle['usage']['core_busy_pct']}%.",
            "",
        ]
    gc = row.get("gc")
    if gc and "skipped" in gc:
        lines += ["### The periodic full collection", "", f"Not probed: {gc['skipped']}.", ""]
    elif gc:
        u = gc["usage"]
        lines += [
            "### The periodic full collection",
            "",
            f"`tidings serve` freezes the workers' objects out of the collector every second "
            f"and, about every {gc_interval():g} s, unfreezes and collects everything "
            f"(`gc_freeze`), each worker at a time of its own ({gc_window_text()} the first "
            f"time). A stream of {gc['rate']:g} personal publications/s ran from "
            f"{gc.get('window_s', [0, 0])[0]:g} to {gc.get('window_s', [0, 0])[1]:g} s of the "
            f"workers' age (hub age {u['hub_age_s']} s): "
            f"{gc['delivered']:,}/{gc['expected']:,} delivered, p50 {ms(gc['p50_ms'])} ms, "
            f"p99 {ms(gc['p99_ms'])} ms, **worst {ms(gc['max_ms'])} ms**; "
            f"**{gc['lost']:,} connections lost**; hub CPU {u['cpu_s']['hub']:.1f} s over "
            f"{u['seconds']:.0f} s (idle: {row['idle']['usage']['cpu_pct']['hub'] / 100 * u['seconds']:.1f} s); "
            f"cores busy {u['core_busy_pct']}%.",
            "",
        ]
    if row.get("lost"):
        lines += ["Connections the server closed during the run:", ""]
        lines += [
            f"- {x['lost']:,} during {x['when']} (how: {x['closes']}; 3012 = no pong in time)"
            for x in row["lost"]
        ]
        lines.append("")
    fans = row.get("fanout")
    if fans:
        lines += [
            "### Fan-out: one publication to `shared` reaching every connection",
            "",
            "| # | delivered | p50 ms | p90 ms | p99 ms | last ms | hub CPU | hub µs/delivery "
            "| generators CPU | cores busy % | API call ms | full GC |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for i, f in enumerate(fans, 1):
            u = f["usage"]
            lines.append(
                f"| {i} | {f['delivered']:,}/{f['expected']:,} | {ms(f['p50_ms'])} | "
                f"{ms(f['p90_ms'])} | {ms(f['p99_ms'])} | {ms(f['max_ms'])} | "
                f"{u['cpu_s']['hub']:.2f} s | {f['hub_cpu_us_per_delivery']:.1f} | "
                f"{u['cpu_s']['generators']:.2f} s | {u['core_busy_pct']} | {f['api_ms']:.1f} | "
                f"{_gc(u)} |"
            )
        lines += [
            "",
            "*hub CPU*: the workers' CPU from the step's start to its last delivery (idle cost "
            "included; µs/delivery has it subtracted).",
            "",
        ]
    p = row.get("personal")
    if p:
        lines += [
            "### Personal channels",
            "",
            "| msg/s | delivered | published | p50 ms | p99 ms | max ms | hub CPU | broker CPU "
            "| generators CPU | hub µs/pub | broker µs/pub | cores busy % | full GC | pass |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        lines += [_personal_row(st) for st in p["steps"]]
        if p.get("cost_steps"):
            lines.append(
                "| *for the CPU per publication, latency aside:* | | | | | | | | | | | | | |"
            )
            lines += [_personal_row(st, verdict=False) for st in p["cost_steps"]]
        lines += [
            "",
            "*hub CPU* is the sum over the workers, in % of one core (200% = both cores); "
            "*µs/pub*: the step's CPU minus the idle connections' over the same time, per "
            "publication (noise where the rate is low: the idle connections' CPU varies by more "
            "than the publications cost). The cost of one more publication (the slope of CPU/s "
            "against publications/s over the steps that delivered everything, the last rows "
            "weighing most): hub **"
            f"{_us(p.get('hub_us_per_pub'))} µs**, broker "
            f"**{_us(p.get('broker_us_per_pub'))} µs**; the projection uses these.",
            "",
        ]
    if row.get("closes"):
        lines += [f"Connections closed by the server during the run: {row['closes']}.", ""]
    return lines


def _personal_row(st: dict[str, Any], verdict: bool = True) -> str:
    passed = ("yes" if st["pass"] else "no") + (" (retried)" if st.get("retried") else "")
    return (
        f"| {st['rate']:,.4g} | {st['delivered']:,}/{st['expected']:,} | "
        f"{st['published']:,}/{st['target']:,} | {ms(st['p50_ms'])} | {ms(st['p99_ms'])} "
        f"| {ms(st['max_ms'])} | {st['hub_cpu_pct']:.0f}% | {st['broker_cpu_pct']:.0f}% | "
        f"{st['gen_cpu_pct']:.0f}% | {st['hub_cpu_us_per_pub']:.0f} | "
        f"{st['broker_cpu_us_per_pub']:.1f} | {st['usage']['core_busy_pct']} | "
        f"{_gc(st['usage'])} | {passed if verdict else '–'} |"
    )


def _complete(row: dict[str, Any]) -> bool:
    c = row.get("connect")
    return bool(
        c and row.get("memory") and row.get("idle") and c["subscribed"] >= row["connections"]
    )


def projected_rows(runs: dict[str, Any]) -> dict[str, Any]:
    """Per broker, the row to project from: the main run's, or when it is incomplete a
    repeat's that connected everything (not a diagnostic variant such as pings off)."""
    out: dict[str, Any] = {}
    for kind, row in runs.items():
        if row.get("variant"):
            continue
        if _complete(row):
            out[kind] = row
            continue
        for name, other in runs.items():
            v = other.get("variant")
            if v and not v.get("ping_interval") and name.split(",")[0] == kind and _complete(other):
                if other["connections"] == row["connections"]:
                    out[name] = other
                    break
    return out


def projection_section(runs: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    rows = projected_rows(runs)
    if not rows:
        return []
    projs = {k: projection(r) for k, r in rows.items()}
    c = CENTRIFUGO
    lines = [
        "## On paper: 1,000,000 connections",
        "",
        "**Projected, not measured.** Each figure is a cost per connection, per delivery or per "
        "publication measured above, multiplied out linearly; what grows worse than linearly "
        "(a bigger broker, cross-machine networking, TLS, a NIC's interrupts instead of "
        "loopback, the garbage collector with more objects per process) is not in it. "
        "Centrifugo's figures are from its own test ([Million connections with Centrifugo]"
        "(https://centrifugal.dev/blog/2020/02/10/million-connections-with-centrifugo): "
        f"{c['server_pods']} server pods, {c['redis_shards']} Redis shards of 1 CPU each, "
        "Protobuf clients, each connection on a personal channel and a 10-member group "
        f"channel, ~{c['deliveries_per_s']:,} deliveries/s at p99 <= {c['p99_ms']} ms, "
        f"{c['churn_per_s'] * 60:,.0f} reconnects/min), and the idle figure as the issue quotes "
        f"it (~{c['idle_kib_per_conn']} KiB per idle connection, tuned).",
        "",
        "| need for 1,000,000 connections | "
        + " | ".join(f"tidings ({k})" for k in projs)
        + " | Centrifugo (published) |",
        "|---|" + "---:|" * len(projs) + "---:|",
    ]

    def line(name: str, fn: Any, theirs: str) -> None:
        cells = []
        for k, pr in projs.items():
            try:
                cells.append(fn(pr, rows[k]))
            except (KeyError, TypeError, ValueError):
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {theirs} |")

    line("memory per connection: hub RSS + the server end's kernel share (half of both ends)",
         lambda p, r: f"{r['memory']['hub_kib']:.2f} + {p['server_kernel_kib']:.2f} = "
                      f"{p['per_conn_kib']:.2f} KiB",
         f"~{c['idle_kib_per_conn']} KiB (idle, tuned)")  # fmt: skip
    line("memory, 1 M connections", lambda p, r: f"{p['memory_gib']:.1f} GiB",
         f"~{c['idle_kib_per_conn'] * MILLION / 1024 / 1024:.1f} GiB")  # fmt: skip
    line("processes at 20,000 open files each (17,000 connections)",
         lambda p, r: f">= {p['processes_at_nofile']}", f"{c['server_pods']} pods")  # fmt: skip
    line(
        f"cores to keep them idle (pings every {plan.get('ping_interval') or 25:g} s)",
        lambda p, r: f"{p['idle_cores']:.2f}",
        "–",
    )
    line("cores for 500,000 deliveries/s, broadcast-like (hub µs per fan-out delivery)",
         lambda p, r: f"{p['broadcast_cores']:.1f} ({p['fanout_us_per_delivery']:.1f} µs)",
         f"~{c['cpus']} CPUs in all, for their mix")  # fmt: skip
    line(
        "cores for 500,000 deliveries/s, all personal (hub µs per personal publication)",
        lambda p, r: f"{p['personal_cores']:.1f} ({p['personal_us_per_pub']:.0f} µs)",
        "",
    )
    line(
        f"cores for 500,000 deliveries/s as publications to {GROUP}-subscriber groups "
        "(estimate and lower bound: (a personal publication + 9 fan-out deliveries) / 10 per "
        "delivery; a group's subscribers on several workers each decode it again)",
        lambda p, r: f"{p['group_cores']:.1f} ({p['group_us_per_delivery']:.1f} µs)",
        f"~{c['cpus']} CPUs in all",
    )
    line(f"cores for their churn ({c['churn_per_s'] * 60:,.0f} connects/min; hub µs per connect)",
         lambda p, r: f"{p['churn_cores']:.2f} ({p['connect_us']:.0f} µs)",
         "in the ~40")  # fmt: skip
    line("one full reconnect of 1 M (hub core-seconds)",
         lambda p, r: f"{p['connect_core_s']:,.0f}", "–")  # fmt: skip
    line("broker: µs of its CPU per personal publication -> publications/s per shard at 70% of "
         "a core", lambda p, r: f"{p['broker_us_per_pub']:.1f} -> {p['broker_pubs_per_shard']:,.0f}/s",
         "")  # fmt: skip
    line("broker shards for 500,000 deliveries/s: all personal / in groups of 10",
         lambda p, r: f"{p['broker_shards_personal']} / {p['broker_shards_group']}",
         f"{c['redis_shards']} Redis (1 CPU each)")  # fmt: skip
    lines += [
        "",
        "Reading the table:",
        "",
        "- **Memory** is what a single large machine holds (the table's GiB, plus the "
        "processes' base RSS); per connection it is of the order of Centrifugo's figure.",
        "- **Cores** are the constraint. Centrifugo's ~40 CPUs carried their whole load "
        "(deliveries, churn, pings, the broker). tidings' need for a similar load is the sum of "
        "the idle, churn and one delivery row: the broadcast row is the cheap end (one "
        "publication, thousands of coalesced writes per worker), the personal row the "
        "expensive end (every delivery is a publication of its own, through the broker); the "
        "group row composes the two measured costs for Centrifugo's 10-member groups and is an "
        "estimate, not a measurement.",
        "- **Broker**: the shards row assumes channels spread over independent broker "
        "processes. With tidings that is a Redis Cluster (`redis+cluster://`: SPUBLISH, a "
        "publication reaches only the masters' connections of its slot), one master per "
        "shard; a single Redis (`redis://`; its `pubsub_shards` are connections to that one "
        "Redis) or a single nats-server is one shard, the case measured here. (Not "
        "measured: a Redis Cluster, or a NATS cluster, which forwards each message to every "
        "server with interest in its subject.)",
        "- The CPU figures were measured with other work on the two cores; the same operations "
        "cost less CPU time on a quieter machine (the table under Findings), so the cores rows "
        "are high estimates.",
        "- Not in the table: the workers' periodic full collection (a pause that grows with "
        "the connections of one worker, not with the total: more workers with fewer "
        "connections each shrink it; each worker pauses at its own time).",
        "- Python processes are single-threaded: the cores row is also the number of worker "
        "processes at 100% each; at ~70% utilisation for latency headroom, about 1.4x as many.",
        "",
    ]
    return lines


def notes(runs: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    lines = []
    for kind, row in runs.items():
        c = row.get("connect")
        if c and c["subscribed"] < row["connections"]:
            lines.append(
                f"- {kind}: {row['connections'] - c['subscribed']:,} connections did not subscribe."
            )
        for i, f in enumerate(row.get("fanout", []), 1):
            if f["delivered"] != f["expected"]:
                lines.append(
                    f"- {kind}: fan-out {i} delivered {f['delivered']:,} of {f['expected']:,}."
                )
        p = row.get("personal")
        if p and p.get("ramp_exhausted"):
            top = max(st["rate"] for st in p["steps"])
            lines.append(
                f"- {kind}: every personal rate tried, up to {top:,.4g}/s, passed: the limit is "
                "higher than measured."
            )
        for st in (p or {}).get("steps", []) + (p or {}).get("cost_steps", []):
            missing = st["expected"] - st["delivered"] - st["late"]
            if st["late"]:
                lines.append(
                    f"- {kind}: in the personal step at {st['rate']:,.4g}/s the hub fell behind: "
                    f"{st['late']:,} of {st['expected']:,} publications arrived after the "
                    "step's drain."
                )
            if missing > 0 and not st.get("lost_subscribers"):
                lines.append(
                    f"- {kind}: in the personal step at {st['rate']:,.4g}/s, {missing:,} of "
                    f"{st['expected']:,} publications were never delivered, with no connection "
                    f"lost ({st['pub_acks']:,} of {st['published']:,} publish commands "
                    f"answered, {st['pub_errors']} errors)."
                )
        for x in row.get("lost", []):
            lines.append(
                f"- {kind}: {x['lost']:,} connections closed by the hub during {x['when']} "
                f"({x['closes']}; 3012 = no pong in time): the phases after it count on fewer."
            )
        gc = row.get("gc") or {}
        if gc.get("max_ms") and gc["max_ms"] > P99_LIMIT_MS:
            lines.append(
                f"- {kind}: the workers' periodic full collection held deliveries up to "
                f"{gc['max_ms']:,.0f} ms."
            )
    lines += [
        "- The generator shares the two cores with the hub and the broker: its CPU (in the "
        "tables) is taken from the hub, so the hub's own limits on two dedicated cores are "
        "higher; the per-delivery and per-connection CPU costs are the hub's alone.",
        "- Loopback: no NIC, no TLS, no network latency; both ends' sockets are in the kernel "
        "figures (the projection takes half).",
    ]
    return lines


# --- main -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info = procstats.machine(["tidings", "websockets", "msgspec", "uvloop", "redis"])
    if isinstance(info["tidings_env"], dict):  # the NATS client, once the broker needs it
        info["tidings_env"]["nats-py"] = (
            run._cmd(
                str(run.TIDINGS_PY),
                "-c",
                "import importlib.metadata as m; print(m.version('nats-py'))",
            )
            or "not installed"
        )
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    info.update(
        mem_gib=round(mem_kib / 1024 / 1024, 1),
        nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        port_range=" - ".join(sysctl("net.ipv4.ip_local_port_range").split()),
        somaxconn=sysctl("net.core.somaxconn"),
        tcp_mem=" ".join(sysctl("net.ipv4.tcp_mem").split()),
        conntrack_max=sysctl("net.netfilter.nf_conntrack_max"),
    )
    return info


def add_run(summary: dict[str, Any], spec: str) -> None:
    """Add the rows of another run's summary (``DIR=LABEL``, or ``DIR=LABEL@broker`` for
    one of them), labelled, to this one's."""
    where, _, label = spec.partition("=")
    label, _, only = label.partition("@")
    other = json.loads((Path(where) / "summary.json").read_text())
    meta = other["meta"]
    for kind, row in other["runs"].get("scale", {}).items():
        if only and kind != only:
            continue
        summary["runs"].setdefault("scale", {})[f"{kind}, {label or 'variant'}"] = {
            **row,
            "variant": {
                "label": label,
                "command": meta["command"],
                "date": meta["machine"]["date"],
                "commit": meta["machine"]["git_commit"],
                "ping_interval": meta["plan"].get("ping_interval"),
            },
        }


def report(summary: dict[str, Any], outdir: Path) -> None:
    write_report(summary, outdir)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 connections, short steps")
    parser.add_argument("--broker", choices=["redis", "nats", "both"], default="both")
    parser.add_argument("--connections", type=int, help="N (default 100000; --quick 10000)")
    parser.add_argument("--workers", type=int, help="hub processes (default: one per 17,000)")
    parser.add_argument("--generators", type=int, help="wsbench processes (one per 17,000)")
    parser.add_argument("--inflight", type=int, default=100, help="handshakes per generator")
    parser.add_argument("--idle", type=float, help="seconds of idle holding (30; --quick 10)")
    parser.add_argument("--fanout", type=int, help="publications to the shared channel (5)")
    parser.add_argument(
        "--ping-interval", type=float, help="client.ping_interval of the hub (default: 25 s)"
    )
    parser.add_argument(
        "--gc-probe",
        action=argparse.BooleanOptionalAction,
        help="wait for the hub's periodic full collection and measure it (default: on; "
        "off with --quick)",
    )
    parser.add_argument("--out", help="output directory (default bench/results/scale)")
    parser.add_argument("--report-only", action="store_true", help="rebuild REPORT.md")
    parser.add_argument(
        "--add-run",
        action="append",
        metavar="DIR=LABEL[@BROKER]",
        help="with --report-only: add the rows of another run (DIR/summary.json; @BROKER: "
        "that row only) as '<broker>, LABEL' (a repeat, or a variant such as "
        "--ping-interval 3600), kept in summary.json",
    )
    args = parser.parse_args()
    outdir = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "") / "scale"
    outdir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        summary = json.loads((outdir / "summary.json").read_text())
        for spec in args.add_run or []:
            add_run(summary, spec)
        if args.add_run:
            (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
        report(summary, outdir)
        return 0
    for path, fix in ((TIDINGS, "make install"), (WSBENCH, "make bench-build")):
        if not path.exists():
            print(f"missing {path}: run `{fix}`", file=sys.stderr)
            return 2
    plan = make_plan(args)
    nofile = check_limits(plan)
    summary = scripting.new_summary(
        {
            "machine": machine(),
            "plan": asdict(plan),
            "command": " ".join(["bench/scale.py", *sys.argv[1:]]),
            "nofile": nofile,
        }
    )
    log(
        f"scale: {plan.connections:,} connections, {plan.workers} hub workers, "
        f"{plan.generators} generators, brokers {plan.brokers}; results in {outdir}"
    )
    started = time.monotonic()
    try:
        for kind in plan.brokers:
            row: dict[str, Any] = {}
            scripting.guarded(
                summary, "scale", kind, lambda k=kind, r=row: measure_broker(plan, k, r)
            )
            if row and kind not in summary["runs"].get("scale", {}):
                summary["runs"].setdefault("scale", {})[kind] = {**row, "failed": True}
    finally:
        scripting.finish(summary, outdir, started, report)
    log(f"done in {time.monotonic() - started:.0f}s: {outdir / 'REPORT.md'}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
