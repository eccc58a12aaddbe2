"""Testing against a real uvicorn: real sockets, real close codes, real timing.

Needs ``pytest-asyncio`` (``asyncio_mode = "auto"``), ``websockets`` and ``httpx``.
"""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from testing_testclient import app

from h3_fastapi import Server, serve


# --8<-- [start:fixture]
@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = await serve(app, port=0, log_level="warning").ready()  # port 0: any free port
    yield server
    await server.close()


# --8<-- [end:fixture]


# --8<-- [start:websocket]
async def test_chat_over_a_real_socket(server: Server) -> None:
    url = server.url.replace("http", "ws", 1) + "_ws"
    async with (
        websockets.connect(url + "?name=ada") as ada,
        websockets.connect(url + "?name=bob") as bob,
    ):
        assert await asyncio.wait_for(ada.recv(), 5) == "Welcome, ada!"
        assert await asyncio.wait_for(bob.recv(), 5) == "Welcome, bob!"
        await bob.send("hello")
        assert await asyncio.wait_for(ada.recv(), 5) == "bob: hello"


async def test_rejected_upgrade_is_a_real_http_response(server: Server) -> None:
    url = server.url.replace("http", "ws", 1) + "_ws"
    with pytest.raises(websockets.InvalidStatus) as rejected:
        await websockets.connect(url)
    assert rejected.value.response.status_code == 400


# --8<-- [end:websocket]


# --8<-- [start:shutdown]
async def test_shutdown_closes_peers_with_1001() -> None:
    server = await serve(app, port=0, log_level="warning").ready()
    url = server.url.replace("http", "ws", 1) + "_ws?name=ada"
    async with websockets.connect(url) as ada:
        await ada.recv()
        await server.close()  # returns once every connection is closed
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ada.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


# --8<-- [end:shutdown]


# --8<-- [start:http]
async def test_plain_http_with_httpx(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/_ws")
    assert response.status_code == 426


# --8<-- [end:http]
