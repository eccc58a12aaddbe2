"""The WebSocket and SSE acceptance behaviours on every ASGI server people deploy.

``tests/apps/matrix_app.py`` runs in a child process on uvicorn (websockets-sansio,
websockets, wsproto), hypercorn, granian and daphne; every test here runs on
each. Servers without the ASGI WebSocket denial-response extension cannot send
the upgrade hook's response; there the documented fallback applies: the
handshake is refused before accept and the client gets 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import free_port, need
from tests.processes import ChildProcess

pytestmark = pytest.mark.matrix
APP = "tests.apps.matrix_app:app"
TIMEOUT = 5


def _command(name: str, port: int) -> list[str]:
    py = sys.executable
    if name.startswith("uvicorn-"):
        ws = name.removeprefix("uvicorn-")
        return [py, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port),
                "--ws", ws, "--log-level", "warning"]  # fmt: skip
    if name == "hypercorn":
        return [py, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"]
    if name == "granian":
        return [py, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--log-level", "warning", APP]  # fmt: skip
    if name == "daphne":
        return [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", APP]
    raise ValueError(name)


# module that must be importable for each server
REQUIRES = {"hypercorn": "hypercorn", "granian": "granian", "daphne": "daphne"}
SERVERS = [
    "uvicorn-websockets-sansio",
    "uvicorn-websockets",
    "uvicorn-wsproto",
    "hypercorn",
    "granian",
    "daphne",
]
# Servers that implement the ASGI "websocket.http.response" extension, so the
# upgrade hook's own response (status, headers, body) reaches the client.
DENIAL_RESPONSE = {
    "uvicorn-websockets-sansio",
    "uvicorn-websockets",
    "uvicorn-wsproto",
    "hypercorn",
    "granian",
}
UVICORN = {"uvicorn-websockets-sansio", "uvicorn-websockets", "uvicorn-wsproto"}
# What each server passes on from a close frame. hypercorn tells the app 1006
# for any close the client starts; granian and daphne drop the reason; daphne
# also sends the server's close frame without its reason.
CLIENT_CODE_TO_APP = UVICORN | {"granian", "daphne"}
CLIENT_REASON_TO_APP = UVICORN
SERVER_REASON_TO_CLIENT = UVICORN | {"hypercorn", "granian"}


class Child(ChildProcess):
    """One ASGI server running the matrix app on a free port."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        super().__init__(_command(name, self.port), name=name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/stats", timeout=2).status_code == 200
            return False

        self.wait_port(self.port, timeout, ready=answers)


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[Child]:
    name: str = request.param
    module = REQUIRES.get(name)
    if module is not None:
        need(importlib.util.find_spec(module) is not None, f"{module} is not installed")
    child = Child(name)
    try:
        child.wait_ready()
        yield child
    finally:
        child.stop()


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def hello(ws: Any) -> str:
    """The peer id the server sends on open."""
    peer_id: str = json.loads(await recv(ws))["id"]
    return peer_id


async def close_hook_saw(server: Child, peer_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        response = await client.get(f"/closes/{peer_id}")
    assert response.status_code == 200, f"{server.name}: close hook never ran for {peer_id}"
    data: dict[str, Any] = response.json()
    return data


# --- WebSocket ------------------------------------------------------------------


async def test_echo_text_and_binary(server: Child) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        await hello(ws)
        await ws.send("hello ünïcödé")
        assert await recv(ws) == "hello ünïcödé"
        await ws.send(b"\x00\xffbinary")
        assert await recv(ws) == b"\x00\xffbinary"
        big = "x" * 200_000
        await ws.send(big)
        assert await recv(ws) == big


async def test_publish_reaches_others_not_the_sender(server: Child) -> None:
    url = f"{server.ws_url}/ws"
    async with connect(url) as a, connect(url) as b, connect(url) as c:
        for ws in (a, b, c):
            await hello(ws)
        await a.send("pub:news")
        assert await recv(b) == "news"
        assert await recv(c) == "news"
        await a.send("after")  # the sender's next frame is its own echo, not "news"
        assert await recv(a) == "after"


async def test_server_close_code_and_reason(server: Child) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        peer_id = await hello(ws)
        await ws.send("close:4001:bye now")
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4001
        if server.name in SERVER_REASON_TO_CLIENT:
            assert ws.close_reason == "bye now"
    # The close hook sees what the server asked for on every server.
    assert await close_hook_saw(server, peer_id) == {"code": 4001, "reason": "bye now"}


async def test_client_close_code_reaches_close_hook(server: Child) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        peer_id = await hello(ws)
        await ws.close(4002, "client leaving")
    seen = await close_hook_saw(server, peer_id)
    assert seen["code"] == (4002 if server.name in CLIENT_CODE_TO_APP else 1006)
    assert seen["reason"] == ("client leaving" if server.name in CLIENT_REASON_TO_APP else "")


async def test_upgrade_rejection(server: Child) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(f"{server.ws_url}/ws?token=bad")
    response = info.value.response
    if server.name in DENIAL_RESPONSE:
        assert response.status_code == 401
        assert response.headers["x-reason"] == "token"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.body == b"unauthorized: bad token"
    else:
        # No denial-response extension: closed before accept, the server says 403.
        assert response.status_code == 403
    # Either way the server keeps serving.
    async with connect(f"{server.ws_url}/ws") as ws:
        await hello(ws)


async def test_subprotocol_only_when_upgrade_picks_one(server: Child) -> None:
    async with connect(f"{server.ws_url}/ws?pick=b", subprotocols=["a", "b"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "b"
        await hello(ws)
    # Offered but not picked: none is accepted (crossws 0.4 default).
    async with connect(f"{server.ws_url}/ws", subprotocols=["a"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None
        await hello(ws)


async def test_plain_get_on_websocket_route_is_426(server: Child) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/ws")
    assert response.status_code == 426
    assert response.text == "WebSocket upgrade is required."


# --- SSE ---------------------------------------------------------------------------


async def test_sse_events_and_on_closed(server: Child) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        before = (await client.get("/stats")).json()["sse_closed"]
        async with client.stream("GET", "/sse", params={"count": 3}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "no-cache" in response.headers["cache-control"]
            assert response.headers["x-accel-buffering"] == "no"
            events: list[list[str]] = [[]]
            lines = response.aiter_lines()
            while len(events) <= 4:
                line = await asyncio.wait_for(anext(lines), TIMEOUT)
                if line:
                    events[-1].append(line)
                else:
                    events.append([])
        # Left after four events: the stream must notice and run on_closed.
        stats = (await client.get("/stats", params={"sse_closed": before + 1})).json()
    assert events[:4] == [
        ["id: 0", "event: tick", "data: event 0"],
        ["id: 1", "event: tick", "data: event 1"],
        ["id: 2", "event: tick", "data: event 2"],
        ["id: 3", "event: tick", "data: event 3"],
    ]
    assert stats["sse_closed"] == before + 1, f"{server.name}: on_closed did not run"
