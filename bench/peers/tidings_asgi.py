"""tidings mounted in an ASGI application, for the ASGI overhead rows of the benchmark.

The same hub and config as the ``tidings`` row (bench/tidings-bench.toml), but its
client endpoints run under uvicorn (``Hub.asgi()``) instead of on tidings' own
port. The server API port opens too (``TIDINGS_HTTP_API_PORT``), for the metrics.
``gc_freeze`` is on, as ``tidings serve`` turns it on: without it, full collections
of the larger heap an ASGI server keeps per connection stall every client.
"""

from pathlib import Path

from tidings import Hub, load_config

config = Path(__file__).resolve().parents[1] / "tidings-bench.toml"
hub = Hub(load_config(config, overrides={"gc_freeze": True}), api=True)
app = hub.asgi()
