"""Cross-process helpers: ``tests/apps/scale_app.py`` in several uvicorn processes.

Shared by ``test_backplanes.py`` (the same tests over every backplane) and
``test_redis.py`` (a Redis restart under connected clients): the process
group (``Cluster``), WebSocket clients (``FrameClient`` for 1,990,000 frames,
``join_chat``), the per-client checker of the 200 x 50 test (``ChatMember``)
and an SSE reader.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests.conftest import ChildServer, free_port

TIMEOUT = 10


class Cluster:
    """``scale_app`` in several uvicorn processes on their own ports, one backplane.

    ``service`` is the server behind ``url`` (a test may kill and restart it).
    """

    def __init__(self, url: str, count: int, service: Any = None) -> None:
        env = {"SCALE_URL": url, "SCALE_PREFIX": f"scale{free_port()}:"}
        self.url = url
        self.service = service
        # Clients busy reading ~10,000 frames answer pings late on a loaded
        # machine; uvicorn's 20 s keepalive must not be what the test measures.
        args = ["--ws-ping-interval", "600", "--ws-ping-timeout", "600"]
        self.servers = [
            ChildServer("tests.apps.scale_app:app", free_port(), args, env) for _ in range(count)
        ]
        for server in self.servers:  # they started together; wait for each
            server.wait_ready(30)

    async def status(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as client:
            replies = await asyncio.gather(*(client.get(s.url + "/status") for s in self.servers))
        return [r.json() for r in replies]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


async def ws_connect(url: str) -> ClientConnection:
    return await websockets.connect(
        url, compression=None, ping_interval=None, proxy=None, open_timeout=30, max_queue=None
    )


async def join_chat(url: str, path: str = "/chat") -> tuple[ClientConnection, int]:
    """Connect and wait for ``ready`` (sent once Redis confirmed the subscription)."""
    ws = await ws_connect(url + path)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert hello["confirmed"], hello
    return ws, hello["ready"]


class FrameClient(asyncio.Protocol):
    """A WebSocket client on the ``websockets`` library's sans-I/O protocol.

    ``on_frame(frame)`` is called for each text or binary frame as it is
    parsed. The library's asyncio client spends about 40 µs per received frame
    (a future per ``recv``); the 200 x 50 test receives 1,990,000 frames, so it
    drives the same library's protocol directly (about 9 µs per frame).
    """

    def __init__(self, url: str, on_frame: Callable[[Frame], None]) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.on_frame = on_frame
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def connect(cls, url: str, on_frame: Callable[[Frame], None]) -> FrameClient:
        parts = parse_uri(url)
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(url, on_frame), parts.host, parts.port)
        await asyncio.wait_for(client.opened, 30)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self.on_frame(event)
            elif not self.opened.done():
                error = self.protocol.handshake_exc
                if error is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(error)
        self._flush()  # pongs, close frames

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.protocol.send_text(data.encode())
        else:
            self.protocol.send_binary(data)
        self._flush()

    async def close(self) -> None:
        if not self.closed.done():
            self.protocol.send_close(1000)
            self._flush()
            await asyncio.wait_for(self.closed, TIMEOUT)

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()


class ChatMember:
    """One of the 200 clients: checks every frame as it arrives."""

    def __init__(self, me: int, clients: int, per_client: int) -> None:
        self.me = me
        self.clients = clients
        self.expected = [0] * clients
        self.remaining = (clients - 1) * per_client
        self.markers: set[int] = set()
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[int] = loop.create_future()
        self.received_all: asyncio.Future[None] = loop.create_future()
        self.markers_done: asyncio.Future[None] = loop.create_future()

    def on_frame(self, frame: Frame) -> None:
        try:
            self._check(frame)
        except Exception as exc:  # report it on the futures the test awaits
            for future in (self.ready, self.received_all, self.markers_done):
                if not future.done():
                    future.set_exception(exc)

    def _check(self, frame: Frame) -> None:
        binary = frame.opcode is Opcode.BINARY
        text = frame.data.decode()
        if not self.ready.done():
            hello = json.loads(text)
            assert hello["confirmed"], hello
            self.ready.set_result(hello["ready"])
            return
        if self.remaining:
            sender, seq = map(int, text.split(":"))
            assert sender != self.me, "a client got its own message back"
            assert binary == (sender % 2 == 1), "frame type changed on the way"
            assert seq == self.expected[sender], f"{self.me}: {sender}:{seq} out of order"
            self.expected[sender] += 1
            self.remaining -= 1
            if not self.remaining:
                self.received_all.set_result(None)
            return
        # After all 9,950: only the other clients' end markers, each once.
        assert text.startswith("end:") and not binary, f"{self.me}: extra frame {text!r}"
        sender = int(text[4:])
        assert sender != self.me and sender not in self.markers, f"marker {sender} twice"
        self.markers.add(sender)
        if len(self.markers) == self.clients - 1:
            self.markers_done.set_result(None)


async def sse_events(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[dict[str, str]]:
    """Events of an SSE response, after a ``{"status": "200"}`` item for the headers.

    A comment line gives a ``{"comment": ...}`` item.
    """
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client:
        async with client.stream("GET", url, headers=headers or {}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            yield {"status": str(response.status_code)}
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    yield {"comment": line[1:].strip()}
                elif line == "":
                    if event:
                        yield event
                    event = {}
                else:
                    name, _, value = line.partition(": ")
                    event[name] = value


async def next_event(events: AsyncIterator[dict[str, str]]) -> dict[str, str]:
    return await asyncio.wait_for(anext(events), TIMEOUT)


async def next_data(events: AsyncIterator[dict[str, str]]) -> dict[str, str]:
    """The next event with data (comments are not events for an SSE client)."""
    while True:
        event = await next_event(events)
        if "data" in event:
            return event


async def open_events(url: str, headers: dict[str, str] | None = None) -> Any:
    """An SSE stream of ``scale_app``, once its subscription is confirmed."""
    events = sse_events(url, headers)
    assert await next_event(events) == {"status": "200"}
    assert await next_event(events) == {"comment": "subscribed"}
    return events


async def every_process(cluster: Cluster, check: Callable[[dict[str, Any]], bool]) -> bool:
    return all(check(s) for s in await cluster.status())
