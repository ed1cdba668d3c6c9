"""What the benchmark scripts beside run.py share (``bandwidth.py``, ``streams.py``,
``brokers.py``, ``scale.py``): the summary they fill row by row, the chart drawn where
matplotlib is, a memory ratio and the cells (numbers, verdicts) as their reports write them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import run
from run import log

Summary = dict[str, Any]


def new_summary(meta: dict[str, Any]) -> Summary:
    """An empty summary: ``meta`` (machine, plan, parts, command, targets), rows by part."""
    return {"meta": meta, "runs": {}, "errors": []}


def guarded(summary: Summary, part: str, key: str, measure: Callable[[], Any]) -> None:
    """Measure one row; a failed row is recorded and the run goes on."""
    try:
        summary["runs"].setdefault(part, {})[key] = measure()
    except Exception as exc:  # noqa: BLE001  (one failed row does not end the run)
        log(f"  {part}/{key} failed: {exc}")
        summary["errors"].append(f"{part}/{key}: {exc}")


def finish(summary: Summary, outdir: Path, started: float, report: Callable[..., None]) -> None:
    """Close the summary (duration, load; a partial run's go to its entry in ``reruns``),
    save it, and write its report."""
    meta = summary["meta"]
    entry = meta["reruns"][-1] if meta.get("reruns") else meta
    entry["duration_s"] = round(time.monotonic() - started, 1)
    entry["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary, outdir)


def draw_chart(
    script: Path, summary: Summary, outdir: Path, png: str, write: Callable[..., bool]
) -> None:
    """Draw ``png`` with ``write``; without matplotlib here, with the peers' venv
    (``script --chart-only``), which has it."""
    (outdir / png).unlink(missing_ok=True)
    if not write(summary, outdir) and run.PEERS_PY.exists():
        subprocess.run(
            [str(run.PEERS_PY), str(script), "--chart-only", "--out", str(outdir)],
            check=False, timeout=120,
        )  # fmt: skip


def memory_versus(row: dict[str, Any], base: dict[str, Any] | None) -> str:
    """A row's memory per connection against the base row's, idle / after a publication."""
    if not base or row is base or base["idle_kib_per_conn"] <= 0:
        return "–"
    idle = row["idle_kib_per_conn"] / base["idle_kib_per_conn"]
    after = row["after_publication_kib_per_conn"] / base["after_publication_kib_per_conn"]
    return f"{idle:.2f}x / {after:.2f}x"


# --- report cells: the same in every script's report ----------------------------------------


def num(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators; a dash for none."""
    return "–" if value is None else f"{value:,.{digits}f}"


def ms(value: float | None) -> str:
    """Milliseconds to a tenth; a dash for none."""
    return "–" if value is None else f"{value:.1f}"


def met(ok: bool | None) -> str:
    """A target's verdict: met, missed, or n/a (not measured)."""
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")
