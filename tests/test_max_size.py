"""With the server's own limit set (uvicorn ``ws_max_size``), a huge
fragmented message is refused while its fragments arrive, before it is assembled."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from h3_fastapi import H3Router
from h3_fastapi.routing import Server, ws_max_size

LIMIT = 64 * 1024

router = H3Router()
router.ws("/echo", {"message": lambda peer, m: peer.send(m.text())}, max_message_size=LIMIT)
app = FastAPI()
app.include_router(router)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ws_max_size_of_the_app() -> None:
    assert ws_max_size(app) == LIMIT
    assert router.ws_max_size == LIMIT


def test_serve_gives_uvicorn_the_largest_message_limit() -> None:
    assert Server(app, "127.0.0.1", 0, {}).config.ws_max_size == LIMIT
    # An explicit server setting wins.
    assert Server(app, "127.0.0.1", 0, {"ws_max_size": 1024}).config.ws_max_size == 1024


@pytest.mark.slow  # measures RSS of a child server
async def test_fragmented_message_refused_without_rss_growth(spawn_server: Any) -> None:
    server = spawn_server("tests.test_max_size:app", "--ws-max-size", str(ws_max_size(app)))
    pid = server.proc.pid
    async with websockets.connect(server.ws_url + "/echo") as ws:
        await ws.send("warm")
        assert await ws.recv() == "warm"
    before = rss_kib(pid)
    fragment = b"x" * (256 * 1024)

    async def one() -> int | None:
        async with websockets.connect(server.ws_url + "/echo", compression=None) as ws:
            try:
                await ws.send(fragment for _ in range(60))  # 15 MiB in 60 fragments
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed:
                pass
            await asyncio.wait_for(ws.wait_closed(), 5)
            return ws.close_code

    codes = await asyncio.gather(*(one() for _ in range(6)))
    # The server closes 1009; a client still writing when it closes may get a reset
    # (its unread fragments are in the server's receive buffer) and see 1006.
    assert set(codes) <= {1009, 1006}
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 8, f"RSS grew {grown_mib:.1f} MiB"

    # A client that stops writing once past the limit (nothing of it left unread
    # on the server) reads the server's 1009.
    async with websockets.connect(server.ws_url + "/echo", compression=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(iter([b"x" * (60 * 1024), b"x" * (8 * 1024)]))  # 68 KiB: over
            await asyncio.wait_for(ws.recv(), 5)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
