"""What the kernel holds for the server's sockets, for the slow-reader tests."""

from __future__ import annotations

import subprocess


def send_queues(port: int, peer: int = 0) -> list[int]:
    """Send-Q of the server's TCP sockets on ``port`` (to the client's ``peer`` port
    only, when given), as ``ss`` reports it; the listening socket is left out (its
    Send-Q is its backlog)."""
    selector = f"( sport = :{port} and dport = :{peer} )" if peer else f"( sport = :{port} )"
    out = subprocess.run(
        ["ss", "-tnH", "state", "all", selector], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if not line.startswith("LISTEN")]
