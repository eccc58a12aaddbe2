"""Scale and backpressure: 1,000 peers, and a peer that never reads."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from h3_fastapi import H3Router, Peer, define_websocket_handler

pytestmark = pytest.mark.slow
TIMEOUT = 30


async def test_one_publish_reaches_1000_peers_exactly_once(live_server: Any) -> None:
    app = FastAPI()
    h3 = H3Router()

    def on_open(peer: Peer) -> None:
        peer.subscribe("all")
        peer.send("ready")

    handler = h3.ws("/ws", define_websocket_handler(open=on_open))
    app.include_router(h3)

    @app.post("/announce")
    def announce(n: int) -> None:
        handler.publish("all", f"announcement {n}")

    server = live_server(app)
    sem = asyncio.Semaphore(50)

    async def connect() -> Any:
        async with sem:
            ws = await websockets.connect(server.ws_url + "/ws", open_timeout=TIMEOUT)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ready"
            return ws

    clients = await asyncio.gather(*(connect() for _ in range(1000)))
    try:
        assert server.call(lambda: len(handler.peers["/ws"])) == 1000
        async with httpx.AsyncClient() as http:
            assert (await http.post(server.url + "/announce", params={"n": 1})).status_code == 200
            assert (await http.post(server.url + "/announce", params={"n": 2})).status_code == 200

        async def two(ws: Any) -> list[str]:
            return [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)]

        received = await asyncio.gather(*(two(ws) for ws in clients))
        assert all(r == ["announcement 1", "announcement 2"] for r in received)
        # exactly once: nothing more is pending on any client
        extra = await asyncio.gather(
            *(asyncio.wait_for(ws.recv(), 0.05) for ws in clients), return_exceptions=True
        )
        assert all(isinstance(e, TimeoutError) for e in extra)
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_slow_peer_is_closed_memory_bounded_others_get_everything(
    spawn_server: Any,
) -> None:
    server = spawn_server("tests.apps.flood_app:app")
    chunk, count = 64 * 1024, 1600  # 100 MiB published to the topic
    slow = await websockets.connect(
        server.ws_url + "/ws?slow=1",
        max_size=None,
        max_queue=1,
        compression=None,
        open_timeout=TIMEOUT,
    )
    assert await slow.recv() == "ready"
    fast = [
        await websockets.connect(
            server.ws_url + "/ws", max_size=None, compression=None, open_timeout=TIMEOUT
        )
        for _ in range(2)
    ]
    for ws in fast:
        assert await ws.recv() == "ready"

    async def read_all(ws: Any) -> int:
        expected = 0
        while True:
            frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if frame == "done":
                return expected
            assert int.from_bytes(frame[:8], "big") == expected, "lost or reordered frame"
            assert len(frame) == chunk
            expected += 1

    readers = [asyncio.ensure_future(read_all(ws)) for ws in fast]
    async with httpx.AsyncClient(timeout=120) as http:
        flood = await http.post(server.url + "/flood", params={"count": count, "size": chunk})
        assert flood.status_code == 200
        result = flood.json()
        assert await asyncio.gather(*readers) == [count, count]

    growth = result["peak_after"] - result["peak_before"]
    assert growth < 64 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.1f} MiB"
    # the slow client, once it reads again, finds the connection closed early
    received = 0
    try:
        while True:
            await asyncio.wait_for(slow.recv(), TIMEOUT)
            received += 1
    except ConnectionClosed:
        pass
    assert received < count // 2, "the slow peer was not cut off"
    async with httpx.AsyncClient() as http:
        stats = (await http.get(server.url + "/stats")).json()
    assert ("slow", 1013) in [tuple(c) for c in stats["closes"]]
    assert stats["peers"] == 2  # the fast ones are still connected
    for ws in fast:
        await ws.close()
