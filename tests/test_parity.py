"""crossws/h3 parity and FastAPI habits of event streams, real server."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
import websockets
from fastapi import BackgroundTasks, FastAPI, Request

from h3_fastapi import H3, EventStream, H3Router, Peer, define_websocket_handler, event_stream

TIMEOUT = 5


def view_of(peer: Peer) -> dict[str, Any]:
    ws = peer.websocket
    return {
        "readyState": ws.readyState,
        "ready_state": ws.ready_state,
        "protocol": ws.protocol,
        "extensions": ws.extensions,
        "url": str(ws.url),
        "bufferedAmount": ws.bufferedAmount,
        "binaryType": ws.binaryType,
    }


def make_app() -> FastAPI:
    router = H3Router()

    def upgrade(request: Any) -> Any:
        chosen = request.query_params.get("accept")
        return {"protocol": chosen} if chosen else None

    async def message(peer: Peer, m: Any) -> None:
        if m.text() == "view":
            await peer.websocket.send_text(json.dumps(view_of(peer)))  # Starlette API works
            peer.send(json.dumps({"event": m.event["type"]}))

    router.ws("/view", {"upgrade": upgrade, "message": message})
    router.ws(
        "/resolved/{kind}",
        define_websocket_handler(
            {"open": lambda peer: peer.send("static open")},
            resolve=lambda request: {
                "message": lambda peer, m: peer.send(f"{request.path_params['kind']}:{m}")
            },
            get_namespace=lambda request: "ns:" + request.path_params["kind"],
        ),
    )
    app = FastAPI()
    app.include_router(router)
    return app


async def test_whatwg_view_with_and_without_accepted_subprotocol(live_server: Any) -> None:
    server = live_server(make_app())
    url = server.ws_url + "/view?accept=chat.v2"
    async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
        await ws.send("view")
        view = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {
            "event": "websocket.receive"
        }
    assert view["protocol"] == "chat.v2"
    assert view["readyState"] == view["ready_state"] == 1
    assert view["url"] == url
    assert view["bufferedAmount"] == 0
    assert view["binaryType"] == "arraybuffer"
    assert "permessage-deflate" in view["extensions"]  # what the client asked for
    async with websockets.connect(
        server.ws_url + "/view?x=1", subprotocols=["chat.v1", "chat.v2"], compression=None
    ) as ws:
        assert ws.subprotocol is None
        await ws.send("view")
        view = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert view["protocol"] == "chat.v1"  # none accepted: the first one asked for (crossws)
    assert view["extensions"] == ""
    assert view["url"].endswith("/view?x=1")


async def test_resolve_and_get_namespace(live_server: Any) -> None:
    server = live_server(make_app())
    async with websockets.connect(server.ws_url + "/resolved/red") as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "static open"
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "red:hi"


async def test_drain_after_slow_reader_catches_up(live_server: Any) -> None:
    drained = threading.Event()
    chunk = "x" * 64 * 1024

    async def open_(peer: Peer) -> None:
        for _ in range(128):  # 8 MiB for a client that does not read yet
            peer.send(chunk)

    router = H3Router()
    router.ws(
        "/flood",
        {"open": open_, "drain": lambda peer: drained.set()},
        send_buffer_limit=64 * 1024 * 1024,
        drain_threshold=1024 * 1024,
    )
    app = FastAPI()
    app.include_router(router)
    server = live_server(app)
    url = server.ws_url + "/flood"
    async with websockets.connect(url, max_size=None, max_queue=1, compression=None) as ws:
        await asyncio.sleep(0.5)  # not reading: the server's buffer fills
        assert not drained.is_set()
        for _ in range(128):
            assert len(await asyncio.wait_for(ws.recv(), TIMEOUT)) == len(chunk)
        assert await asyncio.to_thread(drained.wait, TIMEOUT)


async def test_close_all_is_awaitable(live_server: Any) -> None:
    closes: list[int] = []
    handler = define_websocket_handler(close=lambda peer, d: closes.append(d.code))
    router = H3Router()
    router.ws("/all", handler)
    app = FastAPI()
    app.include_router(router)
    server = live_server(app)
    async with (
        websockets.connect(server.ws_url + "/all") as a,
        websockets.connect(server.ws_url + "/all") as b,
    ):
        await asyncio.sleep(0.1)

        async def close() -> None:
            await handler.close_all(4000, "bye")

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), server.loop))
        assert sorted(closes) == [4000, 4000]  # both close hooks ran before it returned
        await asyncio.wait_for(a.wait_closed(), TIMEOUT)
        await asyncio.wait_for(b.wait_closed(), TIMEOUT)
        assert a.close_code == b.close_code == 4000


async def test_namespace_for_under_prefix(live_server: Any) -> None:
    router = H3Router(prefix="/rooms")
    handler = router.ws("/{room}", {"open": lambda peer: peer.subscribe("news")})
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    server = live_server(app)
    assert handler.namespace_for(room="blue") == "/rooms/blue"  # before any connection
    async with (
        websockets.connect(server.ws_url + "/v1/rooms/blue") as blue,
        websockets.connect(server.ws_url + "/v1/rooms/red") as red,
    ):
        await asyncio.sleep(0.1)
        namespace = handler.namespace_for(room="blue")
        assert namespace == "/v1/rooms/blue"
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_publish(handler, "only blue", namespace), server.loop)
        )
        assert await asyncio.wait_for(blue.recv(), TIMEOUT) == "only blue"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(red.recv(), 0.2)
    with pytest.raises(ValueError):
        handler.namespace_for(colour="blue")


async def _publish(handler: Any, data: str, namespace: str) -> None:
    await handler.publish("news", data, namespace=namespace)


async def test_background_tasks_run_after_disconnect_and_head(live_server: Any) -> None:
    ran: list[str] = []
    done = threading.Event()
    app = FastAPI()
    router = H3Router()

    @router.get("/events")
    async def events(request: Request, background: BackgroundTasks) -> EventStream:
        stream = EventStream(request)
        stream.push("hello")
        stream.on_closed(lambda: ran.append("on_closed"))
        background.add_task(lambda: (ran.append("background"), done.set()))
        return stream

    @router.get("/gen")
    @event_stream
    async def gen(request: Request) -> Any:
        yield "tick"

    app.include_router(router)
    h3 = H3()
    h3.get("/page", lambda event: {"hello": "h3"})
    app.mount("/h3", h3)
    server = live_server(app)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
        client.stream("GET", "/events") as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break
    # the client left: the stream ends, on_closed runs, then the background task
    assert await asyncio.to_thread(done.wait, TIMEOUT)
    assert ran == ["on_closed", "background"]
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        for path in ("/gen", "/events"):
            head = await client.head(path)
            assert head.status_code == 200
            assert head.headers["content-type"].startswith("text/event-stream")
            assert head.content == b""
        head = await client.head("/h3/page")
        assert head.status_code == 200
        assert head.headers["content-type"] == "application/json"
        assert head.content == b""
