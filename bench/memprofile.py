"""Where the memory of an idle subscribed connection goes (tracemalloc).

Starts a hub in this process (the benchmark's config, uvloop), opens N subscribed
connections with ``bench/build/wsbench --hold``, and prints the memory allocated
since, per connection, grouped by file (``--by lineno`` for lines). tracemalloc
counts Python allocations only; the benchmark's RSS per connection adds the
allocator's overhead (about half a KiB here).

    .venv/bin/python bench/memprofile.py [--conns 3000] [--by file|lineno] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import tracemalloc
from pathlib import Path

import uvloop

from tidings import Hub, load_config

BENCH = Path(__file__).resolve().parent
WSBENCH = BENCH / "build" / "wsbench"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def profile(conns: int, by: str, top: int) -> None:
    config = load_config(
        BENCH / "tidings-bench.toml", env={}, overrides={"port": 0, "http_api.port": 0}
    )
    hub = Hub(config)
    await hub.start()
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        generator = await asyncio.create_subprocess_exec(
            str(WSBENCH),
            *("--port", str(hub.port), "--mode", "centrifugo", "--conns", str(conns)),
            *("--hold", "30", "--settle", "1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while hub.node.num_subscriptions < conns:  # every connection subscribed
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        gc.collect()
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "filename" if by == "file" else "lineno")
        total = sum(stat.size_diff for stat in stats)
        print(f"{conns} subscribed connections: {total / conns:,.0f} bytes each (tracemalloc)")
        for stat in stats[:top]:
            frame = stat.traceback[0]
            where = frame.filename if by == "file" else f"{frame.filename}:{frame.lineno}"
            print(
                f"{stat.size_diff / conns:8,.0f} B {stat.count_diff / conns:6.2f} objects  {where}"
            )
        generator.kill()
        await generator.wait()
    finally:
        await hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=3000)
    parser.add_argument("--by", choices=["file", "lineno"], default="file")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    uvloop.run(profile(args.conns, args.by, args.top))


if __name__ == "__main__":
    main()
