"""The Operations page's examples (docs/examples/operations_*.py) on a real uvicorn."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from h3_fastapi import disable_metrics, disable_tracing
from tests.test_docs import example
from tests.test_metrics import scrape, value

TIMEOUT = 5


async def test_operations_app_metrics_probes_and_limits(live_server: Any) -> None:
    module = example("operations_app")
    server = live_server(module.app)
    try:
        async with connect(f"{server.ws_url}/chat") as a, connect(f"{server.ws_url}/chat") as b:
            await a.send("hello")
            assert await asyncio.wait_for(b.recv(), TIMEOUT) == "hello"
            samples = await asyncio.to_thread(scrape, server.url)
        assert value(samples, "h3_websocket_peers", route="/chat") == 2
        assert value(samples, "h3_websocket_messages_received_total", route="/chat") >= 1
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ok", "backplanes": {}}
        assert httpx.get(f"{server.url}/livez").status_code == 200
        refused = 0
        for _ in range(10):  # the connection burst is 5 (30 a minute)
            try:
                async with connect(f"{server.ws_url}/chat"):
                    pass
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                refused += 1
        assert refused >= 5
    finally:
        disable_metrics()


async def test_operations_tracing_spans(live_server: Any) -> None:
    module = example("operations_tracing")
    module.exporter.out = out = io.StringIO()
    server = live_server(module.app)
    async with connect(f"{server.ws_url}/chat") as a, connect(f"{server.ws_url}/chat") as b:
        await a.send("hi")
        assert await asyncio.wait_for(b.recv(), TIMEOUT) == "hi"
    server.stop()  # the lifespan ends: tracing off again
    spans = [json.loads(chunk) for chunk in out.getvalue().replace("}\n{", "}\x00{").split("\x00")]
    servers = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    assert [s["name"] for s in servers] == ["HTTP /chat", "HTTP /chat"]  # one per connection
    assert {s["attributes"]["websocket.close_code"] for s in servers} == {1000}
    events = sorted(e["name"] for s in servers for e in s["events"])
    assert events == ["message.received"]
    disable_tracing()
    if any(s["name"] == "publish chat" for s in spans):
        pytest.fail("a MemoryPubSub publish never crosses a backplane: no publish span")
