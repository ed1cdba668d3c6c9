"""The load-generating processes the benchmark scripts drive: ``bench/build/wsbench
--control`` (``scale.py``) and the scripts' own subscriber and publisher processes
(``bandwidth.py``, ``streams.py``). Each reads commands on stdin, one a line, and
answers with JSON objects on stdout, one a line, each with an ``"event"``."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def emit(event: str, **extra: Any) -> None:
    """A driven process's answer: one JSON line, flushed at once (its driver waits on it)."""
    print(json.dumps({"event": event, **extra}), flush=True)


class Processes:
    """A group of driven processes: commands to all of them, their events merged."""

    noun, nouns = "process", "processes"
    """What they are called in errors: ``<nouns>: no ...``, ``<noun> <i>: expected ...``."""
    clip: int | None = None
    """Characters of an unexpected event an error quotes (all of it: None)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()

    def spawn(self, argv: list[str], log: Path, cwd: Path | None = None) -> None:
        """Start one more process, its stderr to ``log``, in a session of its own."""
        err = log.open("w")
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
        err.close()
        self.procs.append(proc)
        threading.Thread(target=self._read, args=(len(self.procs) - 1, proc), daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put((index, json.loads(line)))
        self.lines.put((index, {"event": "exit", "code": proc.wait()}))

    def expect(self, event: str, timeout: float) -> list[dict[str, Any]]:
        """Each process's next ``event`` line (an error if one says something else)."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            try:
                index, msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.nouns}: no {event!r} after {timeout:.0f}s") from None
            if msg.get("event") != event:
                got_text = str(msg)[: self.clip]
                raise RuntimeError(f"{self.noun} {index}: expected {event!r}, got {got_text}")
            got[index] = msg
        return [got[i] for i in sorted(got)]

    def tell(self, message: dict[str, Any] | str) -> None:
        """One command line to every process (a dict goes as JSON)."""
        line = message if isinstance(message, str) else json.dumps(message)
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(line + "\n")
                proc.stdin.flush()

    def close(self) -> None:
        """quit: each process gets 10 s to end, then it is killed."""
        self.tell("quit")
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
