from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tidings import Config, Hub, load_config

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
API_KEY = "test-api-key"

HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub() -> AsyncIterator[HubFactory]:
    """Start hubs on free ports (config from dotted ``overrides``); stop them after the test."""
    hubs: list[Hub] = []

    async def make(config: Config | None = None, **overrides: Any) -> Hub:
        if config is None:
            overrides = {
                "port": 0,
                "http_api.port": 0,
                "http_api.key": API_KEY,
                "token_hmac_secret_key": SECRET,
                **overrides,
            }
            config = load_config(env={}, overrides=overrides)
        hub = Hub(config)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()
