"""Rate limits (``RateLimit``): per peer messages and bytes, drop-and-notify or 1008, per address.

Token buckets are checked with rates so low that no refill happens during a
test (1 per second at most), so the counts are exact. The flood test runs the
server and the flooder in child processes and measures an unrelated peer's
echo from this one (slow tier: wall-clock bound).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from h3_fastapi import H3Router, Message, Peer, RateLimit
from h3_fastapi.limits import TokenBucket
from tests.processes import ChildProcess
from tests.recorders import Events

TIMEOUT = 5
pytestmark = pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")


def limited_app(events: Events, limit: RateLimit) -> FastAPI:
    h3 = H3Router()

    def message(peer: Peer, message: Message) -> None:
        events.add("message", message.text())

    h3.ws("/ws", message=message, close=lambda p, d: events.add("close", d.code), rate_limit=limit)
    app = FastAPI()
    app.include_router(h3)
    return app


async def test_drop_and_notify_once_per_run_of_drops(live_server: Any) -> None:
    events = Events()
    limit = RateLimit(messages_per_second=0.01, message_burst=5, notice={"error": "rate"})
    server = live_server(limited_app(events, limit))
    async with connect(f"{server.ws_url}/ws") as ws:
        for i in range(20):
            await ws.send(str(i))
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == '{"error":"rate"}'
    await events.wait_for("close")
    assert events.of("message") == ["0", "1", "2", "3", "4"]  # the burst, in order
    # No second notice: the peer was told once for the whole run of drops.
    assert events.of("close") == [1000]


async def test_close_1008_when_over(live_server: Any) -> None:
    events = Events()
    limit = RateLimit(messages_per_second=0.01, message_burst=3, on_exceed="close")
    server = live_server(limited_app(events, limit))
    async with connect(f"{server.ws_url}/ws") as ws:
        for i in range(10):
            await ws.send(str(i))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "rate limit exceeded")
    assert (await events.wait_for("close")) == [1008]
    assert events.of("message") == ["0", "1", "2"]


async def test_bytes_per_second_with_burst(live_server: Any) -> None:
    events = Events()
    limit = RateLimit(bytes_per_second=0.01, byte_burst=100, notice="bytes")
    server = live_server(limited_app(events, limit))
    async with connect(f"{server.ws_url}/ws") as ws:
        for ch in "abcd":
            await ws.send(ch * 40)  # 40 + 40 fit in 100 bytes; the third does not
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bytes"
    await events.wait_for("close")
    assert events.of("message") == ["a" * 40, "b" * 40]


async def test_connections_per_address_get_429_with_retry_after(live_server: Any) -> None:
    events = Events()
    limit = RateLimit(connections_per_minute=1, connection_burst=2)
    server = live_server(limited_app(events, limit))
    for _ in range(2):
        async with connect(f"{server.ws_url}/ws"):
            pass
    with pytest.raises(InvalidStatus) as info:
        await connect(f"{server.ws_url}/ws")
    response = info.value.response
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10, capacity=5, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)  # 0.1 s = one token
    assert bucket.take(5, 100.0) and not bucket.take(1, 100.0)  # never more than the burst
    assert bucket.take(50, 200.0)  # bigger than the burst: passes on a full bucket only
    assert not bucket.take(50, 200.1)


def test_on_exceed_is_checked() -> None:
    with pytest.raises(ValueError, match="on_exceed"):
        RateLimit(messages_per_second=1, on_exceed="ignore")  # type: ignore[arg-type]


@pytest.mark.slow
async def test_a_flood_is_cut_and_does_not_delay_another_peer(spawn_server: Any) -> None:
    """One client floods /limited; an echo on /echo stays under 50 ms throughout."""
    server = spawn_server("tests.apps.limits_app:app")
    flooder = ChildProcess(
        [sys.executable, "-m", "tests.apps.limits_app", server.ws_url, "30000"], name="flooder"
    )
    try:
        latencies = []
        started = time.monotonic()
        async with connect(f"{server.ws_url}/echo") as ws:
            while flooder.proc.poll() is None or len(latencies) < 20:
                sent = time.perf_counter()
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping"
                latencies.append(time.perf_counter() - sent)
        flooder.wait_for("sent 30000")
        elapsed = time.monotonic() - started
    finally:
        flooder.stop()
    passed = httpx.get(f"{server.url}/stats", timeout=TIMEOUT).json()["passed"]
    # The burst plus the rate over the flood's duration, never the 30,000 sent.
    assert 100 <= passed <= 100 + 100 * elapsed + 1, (passed, elapsed)
    worst = max(latencies) * 1000
    print(f"flood: {elapsed=:.2f}s {passed=} echoes={len(latencies)} max={worst:.1f}ms")
    assert max(latencies) < 0.050, sorted(latencies)[-5:]
