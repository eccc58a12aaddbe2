"""``serve(app, server=X)`` on every server it supports, with docs/examples/servers.py.

Each server runs in this process on 127.0.0.1 (port 0) and is driven by real
clients: a WebSocket echo, an SSE stream, one ``Date`` and one ``Server`` per
response, the message limit, a clean shutdown with a stream still open; and
from a plain script until SIGTERM. Then the errors: an unknown server name, a
missing package, granian (refused with the command to run instead, and that
command checked on the same example app).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from h3_fastapi import Server, serve
from h3_fastapi import _servers as servers_module
from tests.conftest import ROOT, free_port, need
from tests.processes import ChildProcess
from tests.test_docs import example

TIMEOUT = 5
LIMIT = 64 * 1024
SERVERS = ["uvicorn", "hypercorn"]


@pytest.fixture(params=SERVERS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    name: str = request.param
    need(importlib.util.find_spec(name) is not None, f"{name} is not installed")
    handle = await serve(example("servers").app, port=0, server=name, log_level="warning").ready()
    try:
        yield handle
    finally:
        await asyncio.wait_for(handle.close(), 15)


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http", "ws", 1) + path


async def test_websocket_echo(server: Server) -> None:
    async with websockets.connect(ws_url(server, "echo")) as ws:
        for text in ("hello", "ünïcödé", "x" * 10_000):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text


async def test_sse_round_trip(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/countdown", params={"start": 3})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    assert data == ["3", "2", "1"]


async def test_one_date_and_one_server_header(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/countdown", params={"start": 1})
    assert response.headers.get_list("server") == [server.server]
    assert len(response.headers.get_list("date")) == 1


async def test_oversized_message_is_refused_with_1009(server: Server) -> None:
    async with websockets.connect(ws_url(server, "echo"), max_size=None) as ws:
        await ws.send("x" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_close_ends_an_open_stream_and_a_peer(server: Server) -> None:
    """``close()`` returns although an endless stream and a socket are open."""
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
        client.stream("GET", "/countdown", params={"start": 10**9}) as response,
        websockets.connect(ws_url(server, "echo")) as ws,
    ):
        lines = response.aiter_lines()
        assert (await asyncio.wait_for(anext(lines), TIMEOUT)).startswith("data:")
        await asyncio.wait_for(server.close(), 10)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)


async def _extensions_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers a WebSocket with the ASGI extensions its server offered."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": " ".join(sorted(scope["extensions"]))})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.mark.parametrize(
    ("options", "frames", "deflate"),
    [
        ({}, True, False),  # serve()'s default: h3-fastapi's protocol, no compression
        ({"ws_per_message_deflate": True}, True, True),
        ({"ws": "websockets-sansio"}, False, False),  # uvicorn's own protocol, if asked
    ],
)
async def test_uvicorn_runs_h3_fastapis_websocket_protocol(
    options: dict[str, Any], frames: bool, deflate: bool
) -> None:
    handle = await serve(_extensions_app, port=0, log_level="warning", **options).ready()
    try:
        # The client offers permessage-deflate (websockets does by default).
        async with websockets.connect(ws_url(handle, "")) as ws:
            offered = (await asyncio.wait_for(ws.recv(), TIMEOUT)).split()
            negotiated = bool(ws.protocol.extensions)
    finally:
        await asyncio.wait_for(handle.close(), 15)
    assert ("h3.websocket.frames" in offered) is frames
    assert negotiated is deflate


@pytest.mark.parametrize("name", SERVERS)
async def test_a_closed_server_starts_again(name: str) -> None:
    need(importlib.util.find_spec(name) is not None, f"{name} is not installed")
    handle = serve(example("servers").app, port=0, server=name, log_level="warning")
    for _ in range(2):
        await asyncio.wait_for(handle.ready(), 15)
        async with httpx.AsyncClient(base_url=handle.url, timeout=TIMEOUT) as client:
            response = await client.get("/countdown", params={"start": 1})
        assert response.status_code == 200
        await asyncio.wait_for(handle.close(), 15)
        handle.start()
    await asyncio.wait_for(handle.close(), 15)


@pytest.mark.matrix  # a child process per server, like the other server-matrix tests
@pytest.mark.parametrize("name", SERVERS)
def test_blocking_run_from_a_plain_script(name: str) -> None:
    """``python servers.py NAME PORT`` serves until SIGTERM, then exits cleanly."""
    need(importlib.util.find_spec(name) is not None, f"{name} is not installed")
    port = free_port()
    script = str(ROOT / "docs" / "examples" / "servers.py")
    env = {"PYTHONPATH": str(ROOT)}
    with ChildProcess([sys.executable, script, name, str(port)], env=env, name=name) as child:
        child.wait_port(port, timeout=30)
        response = httpx.get(f"http://127.0.0.1:{port}/countdown?start=2", timeout=TIMEOUT)
        assert response.headers.get_list("server") == [name]
        assert "data: 2" in response.text and "data: 1" in response.text
        child.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught (its documented way).
        expected = -signal.SIGTERM if name == "uvicorn" else 0
        assert child.wait(15) == expected, child.text
        if name == "uvicorn":
            assert "Application shutdown complete" in child.text


def test_the_message_limit_reaches_the_servers_own_setting() -> None:
    app = example("servers").app
    assert Server(app, "127.0.0.1", 0, {}).config.ws_max_size == LIMIT
    if importlib.util.find_spec("hypercorn") is not None:
        config = Server(app, "127.0.0.1", 0, {}, "hypercorn").config
        assert config.websocket_max_message_size == LIMIT
        assert not config.include_server_header and not config.include_date_header


def test_unknown_server_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown server 'daphne'.*'uvicorn', 'hypercorn'"):
        serve(example("servers").app, server="daphne", block=False)


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "hypercorn" else real(name, *args)

    monkeypatch.setattr(servers_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError, match=r"pip install 'h3-fastapi\[hypercorn\]'"):
        Server(example("servers").app, "127.0.0.1", 0, {}, "hypercorn")


def test_granian_is_refused_with_the_command_to_run() -> None:
    with pytest.raises(ValueError, match=r"granian --interface asgi .*docs/servers.md"):
        serve(example("servers").app, server="granian", block=False)


def test_hypercorn_rejects_an_unknown_option() -> None:
    need(importlib.util.find_spec("hypercorn") is not None, "hypercorn is not installed")
    with pytest.raises(TypeError, match="hypercorn has no setting 'ws_max_size'"):
        Server(example("servers").app, "127.0.0.1", 0, {"ws_max_size": 1}, "hypercorn")


@pytest.mark.matrix
async def test_the_granian_recipe_serves_the_example() -> None:
    """docs/servers.md's granian command, on the same app: echo, SSE, headers, limit."""
    need(importlib.util.find_spec("granian") is not None, "granian is not installed")
    port = free_port()
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop",
               "--host", "127.0.0.1", "--port", str(port), "servers:app"]  # fmt: skip
    cwd, env = ROOT / "docs" / "examples", {"PYTHONPATH": str(ROOT)}
    with ChildProcess(command, cwd=cwd, env=env, name="granian") as child:
        child.wait_port(port, timeout=30)
        url = f"ws://127.0.0.1:{port}/echo"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
            await ws.send("x" * (LIMIT + 1))  # granian has no limit: the handler's 1009
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(f"http://127.0.0.1:{port}/countdown?start=2")
        assert response.text.count("data: ") == 2
        assert response.headers.get_list("server") == ["granian"]
        assert len(response.headers.get_list("date")) == 1


@pytest.mark.matrix
async def test_the_uvicorn_recipe_serves_the_example_on_h3_fastapis_protocol() -> None:
    """docs/servers.md's uvicorn command with ``--ws h3_fastapi.uvicorn_protocol:...``."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "servers:app",
               "--ws", "h3_fastapi.uvicorn_protocol:WebSocketProtocol",
               "--ws-per-message-deflate", "false", "--ws-max-size", str(LIMIT),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    cwd, env = ROOT / "docs" / "examples", {"PYTHONPATH": str(ROOT)}
    with ChildProcess(command, cwd=cwd, env=env, name="uvicorn") as child:
        child.wait_port(port, timeout=30)
        url = f"ws://127.0.0.1:{port}/echo"
        async with websockets.connect(url, max_size=None) as ws:
            assert not ws.protocol.extensions  # no permessage-deflate: the short path
            for text in ("hello", "ünïcödé", "x" * 10_000):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text
            await ws.send("x" * (LIMIT + 1))  # refused by the server while it arrives
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
