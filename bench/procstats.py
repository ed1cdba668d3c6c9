"""What the benchmark scripts read off the machine: CPU time and memory of a process,
busy time of each core, and the facts a report starts with (all from /proc)."""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import Any

import run
from run import ROOT, TIDINGS_PY


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """The resident memory of a process (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def core_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each core, from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        if not line.startswith("cpu"):
            break
        values = [int(x) for x in line.split()[1:9]]
        out.append((sum(values) - values[3] - values[4], sum(values)))
    return out


def busy_pct(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    """Each core's busy share between two :func:`core_times` readings, in percent."""
    return [
        round(100.0 * (b1 - b0) / max(1, t1 - t0), 1)
        for (b0, t0), (b1, t1) in zip(before, after, strict=False)
    ]


def machine(packages: list[str]) -> dict[str, Any]:
    """The machine, the versions of ``packages`` in tidings' environment, and the commit."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = run._cmd(
        str(TIDINGS_PY), "-c",
        "import importlib.metadata as m, json, sys; print(json.dumps({'python': "
        f"sys.version.split()[0], **{{n: m.version(n) for n in {packages!r}}}}}))",
    )  # fmt: skip
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": run._cmd("uname", "-r"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "tidings_env": run._json_or(versions),
        "git_commit": run._cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(run._cmd("git", "-C", str(ROOT), "status", "--porcelain", "src")),
    }
