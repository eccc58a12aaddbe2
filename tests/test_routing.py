"""Ways in: H3 app, H3Router forms, use(), serve(), TestClient."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from h3_fastapi import (
    H3,
    H3Router,
    Message,
    Peer,
    WebSocketHandler,
    define_websocket,
    define_websocket_handler,
    serve,
)

TIMEOUT = 5


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


def build_h3_app() -> H3:
    app = H3()
    app.get("/", lambda request: f"<h1>{request.url.path}</h1>")
    app.get("/text", lambda: "plain")
    app.post("/json", lambda request: {"method": request.method})
    app.all("/any", lambda request: PlainTextResponse(request.method))

    @app.get("/fastapi-style")
    def fastapi_style(q: int = 1) -> dict[str, int]:
        return {"q": q}

    app.get(
        "/_ws",
        define_websocket_handler(
            {
                "open": lambda peer: peer.send("welcome"),
                "message": lambda peer, message: peer.send(message.text()),
            },
            lambda request: "<p>page for plain GET</p>",
        ),
    )
    app.use("/echo", define_websocket_handler(message=lambda p, m: p.send(m.data)))
    inner = FastAPI()
    inner.get("/ping")(lambda: {"pong": True})
    app.use("/sub", inner)

    @app.ws("/upper")
    class Upper:
        def message(self, peer: Peer, message: Message) -> Any:
            return peer.send(message.text().upper())

    return app


async def test_h3_app_call_style(live_server: Any) -> None:
    server = live_server(build_h3_app())
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/")
        assert r.text == "<h1>/</h1>" and r.headers["content-type"].startswith("text/html")
        r = await http.get("/text")
        assert r.text == "plain" and r.headers["content-type"].startswith("text/plain")
        assert (await http.post("/json")).json() == {"method": "POST"}
        assert (await http.delete("/any")).text == "DELETE"
        assert (await http.put("/any")).text == "PUT"
        assert (await http.get("/fastapi-style?q=7")).json() == {"q": 7}
        page = await http.get("/_ws")
        assert page.status_code == 200 and page.text == "<p>page for plain GET</p>"
        assert (await http.get("/echo")).status_code == 426
        assert (await http.get("/sub/ping")).json() == {"pong": True}
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert await recv(ws) == "welcome"
        await ws.send("hi")
        assert await recv(ws) == "hi"
    async with websockets.connect(server.ws_url + "/echo") as ws:
        await ws.send(b"\x01")
        assert await recv(ws) == b"\x01"
    async with websockets.connect(server.ws_url + "/upper") as ws:
        await ws.send("up")
        assert await recv(ws) == "UP"


def test_router_forms_and_hooks_sources() -> None:
    router = H3Router()

    @router.ws("/obj")
    class WithState:
        def __init__(self) -> None:
            self.count = 0

        async def message(self, peer: Peer, message: Message) -> None:
            self.count += 1
            await peer.send(f"{self.count}:{message}")

    per_connection = router.ws("/per-conn", lambda request: PerConnection(request))
    as_dict = router.ws("/dict", define_websocket(message=lambda p, m: p.send("dict")))
    as_kwargs = router.ws("/kwargs", message=lambda p, m: p.send("kwargs"))
    assert isinstance(as_kwargs, WebSocketHandler)

    async def async_factory(request: Request) -> dict[str, Any]:
        return {"open": lambda peer: peer.send(request.path_params["name"])}

    router.ws("/async/{name}", async_factory)
    assert isinstance(WithState, WebSocketHandler)
    assert isinstance(per_connection, WebSocketHandler) and isinstance(as_dict, WebSocketHandler)

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/obj") as ws:
            ws.send_text("a")
            assert ws.receive_text() == "1:a"
            ws.send_text("b")
            assert ws.receive_text() == "2:b"
        with client.websocket_connect("/per-conn?who=x") as ws:
            assert ws.receive_text() == "hello x"
        with client.websocket_connect("/dict") as ws:
            ws.send_text("?")
            assert ws.receive_text() == "dict"
        with client.websocket_connect("/kwargs") as ws:
            ws.send_text("?")
            assert ws.receive_text() == "kwargs"
        with client.websocket_connect("/async/zed") as ws:
            assert ws.receive_text() == "zed"
        assert client.get("/obj").status_code == 426


class PerConnection:
    """A class taking the request: a new hooks object for each connection."""

    def __init__(self, request: Request) -> None:
        self.who = request.query_params["who"]

    def open(self, peer: Peer) -> None:
        peer.send(f"hello {self.who}")


def test_define_websocket_rejects_unknown_hooks() -> None:
    with pytest.raises(TypeError, match="unknown WebSocket hooks: mesage"):
        define_websocket(mesage=lambda p, m: None)
    hooks = {"open": print}
    assert define_websocket(hooks) is hooks


def test_hook_must_be_callable() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        define_websocket_handler({"message": "not callable"})


async def test_serve_returns_a_handle_with_url_ready_close() -> None:
    app = H3()
    app.get("/", lambda: "served")
    server = serve(app, port=0, log_level="warning")
    await server.ready()
    assert server.url.startswith("http://127.0.0.1:") and server.port != 0
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.url)).text == "served"
    await server.close()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(server.url)
