"""Peer behaviour: sending from anywhere, awaiting writes, closing, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from h3_fastapi import CloseDetails, H3Router, Message, Peer, define_websocket_handler, publish

TIMEOUT = 5


class Recorder:
    """Hooks that record what happened, with a thread-safe wait."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.closes: list[tuple[str, CloseDetails]] = []
        self.changed = threading.Condition()
        self.replies: list[Any] = []

    def open(self, peer: Peer) -> None:
        with self.changed:
            self.peers.append(peer)
            self.changed.notify_all()
        peer.subscribe("news")

    async def message(self, peer: Peer, message: Message) -> None:
        text = message.text()
        if text == "awaited":
            await peer.send("first")
            self.replies.append(peer.buffered_amount)
            await peer.send("second")
        elif text == "close-twice":
            peer.close(4001, "once")
            peer.close(4002, "twice")
            peer.send("dropped after close")
        elif text == "terminate":
            peer.terminate()
        elif text == "from-thread":
            threading.Thread(target=peer.send, args=("sent from a thread",)).start()
        elif text == "drain":
            for i in range(50):
                peer.send(f"chunk {i}")
            await peer.wait_for_drain()
            self.replies.append(peer.buffered_amount)
            peer.send("drained")

    def close(self, peer: Peer, details: CloseDetails) -> None:
        with self.changed:
            self.closes.append((peer.id, details))
            self.changed.notify_all()

    def wait(self, predicate: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, TIMEOUT), "timed out"


@pytest.fixture
def setup(live_server: Any) -> Any:
    recorder = Recorder()
    app = FastAPI()
    router = H3Router()
    handler = router.ws("/ws", define_websocket_handler(recorder))
    app.include_router(router)
    return live_server(app), handler, recorder


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def test_awaited_sends_are_written_in_order(setup: Any) -> None:
    server, _, recorder = setup
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("awaited")
        assert await recv(ws) == "first"
        assert await recv(ws) == "second"
    assert recorder.replies == [0]  # awaiting send waited until written


async def test_close_is_idempotent_and_later_sends_are_dropped(setup: Any) -> None:
    server, _, recorder = setup
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("close-twice")
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert (ws.close_code, ws.close_reason) == (4001, "once")
    await asyncio.to_thread(recorder.wait, lambda: recorder.closes)
    assert [d for _, d in recorder.closes] == [CloseDetails(4001, "once")]


async def test_terminate_drops_the_connection_and_runs_close(setup: Any) -> None:
    server, handler, recorder = setup
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("terminate")
        with pytest.raises(ConnectionClosed):
            await recv(ws)
    await asyncio.to_thread(recorder.wait, lambda: recorder.closes)
    assert len(recorder.closes) == 1
    assert server.call(lambda: handler.peers) == {}


async def test_send_from_another_thread(setup: Any) -> None:
    server, _, _ = setup
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("from-thread")
        assert await recv(ws) == "sent from a thread"


async def test_wait_for_drain(setup: Any) -> None:
    server, _, recorder = setup
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("drain")
        received = [await recv(ws) for _ in range(51)]
        assert received == [f"chunk {i}" for i in range(50)] + ["drained"]
    assert recorder.replies == [0]


async def test_module_level_publish_from_a_plain_thread(setup: Any) -> None:
    server, _, recorder = setup
    async with (
        websockets.connect(server.ws_url + "/ws") as a,
        websockets.connect(server.ws_url + "/ws") as b,
    ):
        await asyncio.to_thread(recorder.wait, lambda: len(recorder.peers) == 2)
        await asyncio.to_thread(publish, "news", {"headline": "threads work"})
        assert await recv(a) == '{"headline":"threads work"}'
        assert await recv(b) == '{"headline":"threads work"}'


async def test_close_all_and_server_shutdown_send_1001(live_server: Any) -> None:
    recorder = Recorder()
    app = FastAPI()
    router = H3Router()
    router.ws("/ws", define_websocket_handler(recorder))
    app.include_router(router)
    server = live_server(app)
    clients = [await websockets.connect(server.ws_url + "/ws") for _ in range(3)]
    await asyncio.to_thread(recorder.wait, lambda: len(recorder.peers) == 3)
    await asyncio.to_thread(server.stop)
    for ws in clients:
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1001
    assert sorted(d.code for _, d in recorder.closes) == [1001, 1001, 1001]


async def test_transport_failure_reaches_error_hook(live_server: Any) -> None:
    """A send that fails for another reason than a disconnect is reported, once, before close."""
    errors: list[BaseException | None] = []
    closes: list[int] = []
    order: list[str] = []
    done = threading.Event()

    def on_error(peer: Peer, error: Exception) -> None:
        errors.append(error.__cause__)
        order.append("error")

    def on_close(peer: Peer, details: CloseDetails) -> None:
        closes.append(details.code)
        order.append("close")
        done.set()

    app = FastAPI()
    router = H3Router()
    router.ws(
        "/ws",
        define_websocket_handler(
            message=lambda p, m: p.send(m.text()), error=on_error, close=on_close
        ),
    )
    app.include_router(router)

    class BreakOnExplode:
        """Pure ASGI middleware whose send fails on one message."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def breaking_send(message: Any) -> None:
                if message.get("text") == "explode":
                    raise RuntimeError("transport broke")
                await send(message)

            await self.inner(scope, receive, breaking_send)

    app.add_middleware(BreakOnExplode)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/ws") as ws:
        await ws.send("fine")
        assert await recv(ws) == "fine"
        await ws.send("explode")
        assert await asyncio.to_thread(done.wait, TIMEOUT)
    assert closes == [1006]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert order == ["error", "close"]
    assert str(errors[0]) == "transport broke"


async def test_wait_for_drain_inside_open(live_server: Any) -> None:
    """The writer runs while ``open`` does, so ``open`` can wait for its sends."""

    async def on_open(peer: Peer) -> None:
        for i in range(50):
            peer.send(f"{i:03d}" + "x" * 65533)
        await peer.wait_for_drain(timeout=TIMEOUT)
        peer.send("drained in open")

    app = FastAPI()
    router = H3Router()
    router.ws("/ws", define_websocket_handler(open=on_open))
    app.include_router(router)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/ws", max_size=None) as ws:
        frames = [await recv(ws) for _ in range(51)]
    assert [f[:3] for f in frames[:50]] == [f"{i:03d}" for i in range(50)]
    assert frames[50] == "drained in open"


async def test_request_and_context_made_on_first_use_are_shared(live_server: Any) -> None:
    """Without an ``upgrade`` hook the request is made when asked for; ``context`` is its dict."""

    def on_open(peer: Peer) -> None:
        peer.context["opened"] = True  # before anything made the request

    def on_message(peer: Peer, message: Message) -> Any:
        request = peer.request
        same = request is peer.request and request.context is peer.context
        return peer.send(
            {
                "path": request.url.path,
                "scheme": request.url.scheme,
                "query": dict(request.query_params),
                "context": request.context,
                "same": same,
                "remote": peer.remote_address,
            }
        )

    app = FastAPI()
    router = H3Router()
    router.ws("/ws", define_websocket_handler(open=on_open, message=on_message))
    app.include_router(router)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/ws?a=1") as ws:
        await ws.send("?")
        info = json.loads(await recv(ws))
    assert info == {
        "path": "/ws",
        "scheme": "http",
        "query": {"a": "1"},
        "context": {"opened": True},
        "same": True,
        "remote": "127.0.0.1",
    }
