"""Health: ``/readyz`` follows the backplane through a real Redis outage; metrics too.

A real ``redis-server`` is killed and restarted on the same port while a real
uvicorn serves the probes: readiness goes 200 -> 503 -> 200, and the backplane
metrics (connected, reconnects, outages, publish lag) say the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from h3_fastapi import MemoryPubSub, RedisPubSub, disable_metrics, health_router, metrics_app
from tests.test_metrics import scrape, value
from tests.test_redis import RedisServer, need_redis

TIMEOUT = 15


@pytest.fixture
def redis_to_kill() -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer().start()
    yield server
    server.kill()


async def until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` (in a thread: it does blocking HTTP) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_readiness_flips_during_a_redis_outage(
    live_server: Any, redis_to_kill: RedisServer
) -> None:
    pubsub = RedisPubSub(redis_to_kill.url, reconnect_backoff=(0.05, 0.2))
    name = pubsub.name
    app = FastAPI()
    app.include_router(health_router(pubsub))
    app.mount("/metrics", metrics_app(CollectorRegistry()))

    @app.post("/publish")
    async def publish() -> None:
        await pubsub.publish("news", "hello")

    server = live_server(app)
    try:
        assert httpx.get(f"{server.url}/livez").json() == {"status": "ok"}

        def ready() -> int:
            return httpx.get(f"{server.url}/readyz", timeout=TIMEOUT).status_code

        await until(lambda: ready() == 200, "ready once Redis is connected")
        body = httpx.get(f"{server.url}/readyz").json()
        assert body == {"status": "ok", "backplanes": {name: True}}
        assert httpx.post(f"{server.url}/publish").status_code == 200

        redis_to_kill.kill()
        await until(lambda: ready() == 503, "not ready during the outage")
        body = httpx.get(f"{server.url}/readyz").json()
        assert body == {"status": "unavailable", "backplanes": {name: False}}
        samples = scrape(server.url)
        assert value(samples, "h3_backplane_connected", backplane=name) == 0

        redis_to_kill.start()
        await until(lambda: ready() == 200, "ready again after the restart")
        samples = scrape(server.url)
        assert value(samples, "h3_backplane_connected", backplane=name) == 1
        assert value(samples, "h3_backplane_reconnects_total", backplane=name) == 1
        assert value(samples, "h3_backplane_outages_total", backplane=name) == 1
        lag = "h3_backplane_publish_lag_seconds_count"
        assert value(samples, lag, backplane=name) == 1
    finally:
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(pubsub.close(), server.loop).result(TIMEOUT)
        disable_metrics()


async def test_readiness_without_a_backplane_is_ready(live_server: Any) -> None:
    app = FastAPI()
    app.include_router(health_router(MemoryPubSub(), live_path="/alive", ready_path="/ready"))
    server = live_server(app)
    response = httpx.get(f"{server.url}/ready")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "backplanes": {}})
    assert httpx.get(f"{server.url}/alive").status_code == 200
    assert "/ready" not in httpx.get(f"{server.url}/openapi.json").text
