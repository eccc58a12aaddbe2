"""Metrics: a scripted session against a real uvicorn, then ``/metrics`` scraped, exact values.

Every counter the Operations page lists is driven to a known value by the
script (WebSocket traffic on two routes, refused handshakes of each reason, a
slow peer, a hook that raises, event streams, proxied requests of each status
class) and read back from the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse, Response
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from h3_fastapi import (
    EventStream,
    H3Router,
    Peer,
    create_event_stream,
    disable_metrics,
    disable_tracing,
    metrics_app,
    proxy,
)
from h3_fastapi._ops import ops
from tests.conftest import free_port
from tests.wire import handshake

TIMEOUT = 5
pytestmark = pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """``/metrics`` as ``{(sample name, sorted labels): value}``."""
    text = httpx.get(f"{base}/metrics/", timeout=TIMEOUT).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Closed:
    """Counts close hooks; the test waits on it instead of sleeping."""

    def __init__(self) -> None:
        self.count = 0
        self.codes: list[int] = []
        self.changed = threading.Condition()

    def close(self, peer: Peer, details: Any) -> None:
        with self.changed:
            self.count += 1
            self.codes.append(details.code)
            self.changed.notify_all()

    async def reach(self, count: int) -> None:
        def wait() -> None:
            with self.changed:
                assert self.changed.wait_for(lambda: self.count >= count, TIMEOUT), self.count

        await asyncio.to_thread(wait)


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    yield CollectorRegistry()
    disable_metrics()


def build_app(registry: CollectorRegistry, closed: Closed, dead_port: int) -> FastAPI:
    app = FastAPI()
    app.mount("/metrics", metrics_app(registry))
    h3 = H3Router()

    def echo(peer: Peer, message: Any) -> None:
        if message.text() == "boom":
            raise RuntimeError("boom")
        peer.send(message.raw_data)

    h3.ws("/chat/{room}", message=echo, close=closed.close)

    def upgrade(request: Request) -> Response | None:
        return PlainTextResponse("no", status_code=401) if "deny" in request.query_params else None

    h3.ws(
        "/guarded",
        upgrade=upgrade,
        close=closed.close,
        allowed_origins=["http://good.example"],
        max_peers=1,
    )

    chunk = "x" * 65536

    def flood(peer: Peer) -> None:
        # 8 MiB to a client that reads nothing: what the kernel takes is written,
        # then the server pauses, then 64 KiB wait and the next frame overflows.
        for _ in range(128):
            if not peer.is_open:
                break
            peer.send(chunk)

    # On the loop: from the threadpool each send would hop on its own.
    h3.ws("/slow", open=flood, close=closed.close, send_buffer_limit=65536, sync_hooks="loop")
    app.include_router(h3)

    @app.get("/events")
    async def events(request: Request) -> EventStream:
        stream = create_event_stream(request)
        stream.push(["a", "b"])
        stream.push("c")
        stream.close()
        return stream

    @app.get("/hold")
    async def hold(request: Request) -> EventStream:
        stream = create_event_stream(request)
        stream.push("x")
        return stream

    @app.get("/upstream")
    async def upstream() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/p/{which}")
    async def proxied(request: Request, which: str) -> Response:
        target = {
            "ok": "/upstream",
            "missing": "/nothing-here",
            "down": f"http://127.0.0.1:{dead_port}/",
        }[which]
        return await proxy(request, target)

    return app


# Exact values of process-wide counters: in a shared xdist worker, an event stream
# another test left open would be counted too. The full (serial) run has it alone.
@pytest.mark.serial
async def test_scripted_session_exact_counts(live_server: Any, registry: CollectorRegistry) -> None:
    closed = Closed()
    server = live_server(build_app(registry, closed, free_port()))
    ws = server.ws_url

    # /chat/{room}: two peers; 4 frames in (15 bytes), 3 echoed (11 bytes), one hook error.
    async with connect(f"{ws}/chat/a") as first, connect(f"{ws}/chat/b") as second:
        await first.send("hi")
        assert await first.recv() == "hi"
        await first.send("héllo")  # 6 bytes in UTF-8
        assert await first.recv() == "héllo"
        await second.send(b"\x00\x01\x02")
        assert await second.recv() == b"\x00\x01\x02"
        await first.send("boom")
        with pytest.raises(ConnectionClosed) as info:
            await first.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        await closed.reach(1)

        # /guarded: origin, upgrade hook and max_peers refusals; one accepted.
        with pytest.raises(InvalidStatus):
            await connect(f"{ws}/guarded", origin="http://evil.example")  # type: ignore[arg-type]
        with pytest.raises(InvalidStatus):
            await connect(f"{ws}/guarded?deny=1")
        async with connect(f"{ws}/guarded"):
            with pytest.raises(InvalidStatus):
                await connect(f"{ws}/guarded")
            # /slow: a client that does not read; the send buffer overflows -> 1013.
            # (It reads nothing until the server has closed it: reading while the
            # server floods would let everything through.)
            slow, _ = await asyncio.to_thread(handshake, server.port, "/slow", 32 * 1024)
            with slow:
                await closed.reach(2)
            assert closed.codes[-1] == 1013

            # Event streams: 3 events on a closed stream, 1 on one held open.
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
                body = (await client.get("/events")).text
                assert body == "data: a\n\ndata: b\n\ndata: c\n\n"
                async with client.stream("GET", "/hold") as held:
                    chunks = held.aiter_text()  # kept: a dropped iterator closes the stream
                    assert await chunks.__anext__() == "data: x\n\n"
                    # Proxy: one of each status class.
                    assert (await client.get("/p/ok")).status_code == 200
                    assert (await client.get("/p/missing")).status_code == 404
                    assert (await client.get("/p/down")).status_code == 502
                    samples = await asyncio.to_thread(scrape, server.url)

    route, guarded = "/chat/{room}", "/guarded"
    expected = {
        ("h3_websocket_peers", route): 1,  # /chat/b still open at the scrape
        ("h3_websocket_connections_accepted_total", route): 2,
        ("h3_websocket_messages_received_total", route): 4,
        ("h3_websocket_received_bytes_total", route): 15,
        ("h3_websocket_messages_sent_total", route): 3,
        ("h3_websocket_sent_bytes_total", route): 11,
        ("h3_websocket_send_buffer_bytes", route): 0,
        ("h3_websocket_peers", guarded): 1,
        ("h3_websocket_connections_accepted_total", guarded): 1,
        ("h3_websocket_connections_accepted_total", "/slow"): 1,
        ("h3_websocket_slow_peer_closes_total", "/slow"): 1,
        ("h3_websocket_slow_peer_closes_total", route): 0,
        ("h3_websocket_peers", "/slow"): 0,
    }
    got = {key: value(samples, key[0], route=key[1]) for key in expected}
    assert got == expected
    rejected = "h3_websocket_connections_rejected_total"
    assert {
        reason: value(samples, rejected, route=guarded, reason=reason)
        for reason in ("origin", "upgrade", "limit", "rate")
    } == {"origin": 1, "upgrade": 1, "limit": 1, "rate": 0}
    errors = "h3_websocket_hook_errors_total"
    assert value(samples, errors, route=route, hook="message") == 1
    assert value(samples, "h3_event_streams_open") == 1
    assert value(samples, "h3_event_stream_events_total") == 4
    proxied = {
        label: value(samples, "h3_proxy_requests_total", status_class=label)
        for label in ("2xx", "4xx", "unreachable", "5xx")
    }
    assert proxied == {"2xx": 1, "4xx": 1, "unreachable": 1, "5xx": 0}
    assert value(samples, "h3_proxy_request_duration_seconds_count") == 3
    assert value(samples, "h3_proxy_request_duration_seconds_bucket", le="+Inf") == 3


async def test_disabled_counts_nothing_and_registers_no_watch(live_server: Any) -> None:
    """Without metrics (or limits, or tracing) a connection carries no watch at all."""
    disable_metrics()
    disable_tracing()
    assert not ops.on
    seen: list[Any] = []
    h3 = H3Router()
    h3.ws("/echo", open=lambda peer: seen.append(peer.websocket), message=lambda p, m: p.send(m))
    app = FastAPI()
    app.include_router(h3)
    server = live_server(app)
    async with connect(f"{server.ws_url}/echo") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
    assert ops.counts is None


def test_metrics_app_twice_on_one_registry_registers_once(registry: CollectorRegistry) -> None:
    metrics_app(registry)
    metrics_app(registry)  # would raise "Duplicated timeseries" if registered twice
    names = {f.name for f in registry.collect()}
    assert "h3_websocket_peers" in names
