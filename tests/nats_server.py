"""A nats-server of the tests' own: JetStream on, a free port, its own storage folder.

Never the machine's NATS (4222): tests may stop, restart or wipe this one. Like
``tests/conftest.py``'s ``RedisServer``, it can be killed and restarted on the same
port, with its JetStream storage kept (history survives) or wiped (a new epoch).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """``nats-server -js`` on a free port of 127.0.0.1 (restartable, killable)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = Path(tempfile.mkdtemp(prefix="tidings-nats-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen on {self.port} within 10 s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self, *, keep_storage: bool = True) -> None:
        """Kill and start again on the same port; without ``keep_storage`` JetStream
        comes back empty (streams, history and key-value buckets gone)."""
        self.stop()
        if not keep_storage:
            shutil.rmtree(self.store, ignore_errors=True)
            self.store.mkdir()
        self.start()

    def flush(self) -> None:
        """Delete every stream (history, key-value buckets): a clean JetStream."""
        asyncio.run(self._delete_streams())

    async def _delete_streams(self) -> None:
        import nats

        client: Any = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
        try:
            manager = client.jetstream()
            for info in await manager.streams_info():
                await manager.delete_stream(info.config.name)
        finally:
            await client.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)
