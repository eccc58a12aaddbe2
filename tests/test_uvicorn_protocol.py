"""h3_fastapi.uvicorn_protocol: the short frame path answers exactly as uvicorn's protocol.

Differential tests send the same raw bytes (good frames, split anywhere, and
bad ones) to an echo on uvicorn's websockets-sansio protocol and on ours, and
compare every frame the server sends back and its close code. Then what only
ours does: the ``h3.websocket.frames`` extension, publishes batched per
subscriber (in order, before a later close), and connections that negotiated
permessage-deflate staying on uvicorn's path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from uvicorn.config import Config
from websockets.asyncio.client import connect

from h3_fastapi import Message, Peer, define_websocket_handler
from h3_fastapi._frames import FRAMES_EXTENSION, encode_frame
from h3_fastapi.uvicorn_protocol import (
    BATCH_LIMIT,
    PAUSE_MESSAGES,
    PAUSE_SIZE,
    WebSocketProtocol,
)
from tests.apps.autobahn_app import app as echo_app
from tests.wire import frame, handshake, server_frames

H3_WS = "h3_fastapi.uvicorn_protocol:WebSocketProtocol"
TIMEOUT = 5


END = (0x81, b"END")


def _server_frames(sock: socket.socket, data: bytes) -> list[tuple[int, bytes]]:
    """Every frame the server sends until its close frame, the echo of ``END``, or EOF."""
    frames: list[tuple[int, bytes]] = []
    for first, payload in server_frames(sock, data):
        frames.append((first, payload))
        if first & 0x0F == 0x8 or frames[-1] == END:
            break
    return frames


def _exchange(port: int, path: str, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    """Send ``chunks`` and then an ``END`` text frame; what the server sent back.

    The echo of ``END`` says every frame before it was answered; a script that
    fails the connection gets the server's close frame instead.
    """
    sock, rest = handshake(port, path)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in [*chunks, frame(0x1, b"END")]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        return _server_frames(sock, rest)


def _close(code: int = 1000) -> bytes:
    return frame(0x8, struct.pack("!H", code))


def _unmasked(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


TEXT = "héllo wörld"
SCRIPTS: dict[str, list[bytes]] = {
    "text and binary": [frame(0x1, TEXT.encode()), frame(0x2, b"\x00\x01\x02")],
    "empty frames": [frame(0x1, b""), frame(0x2, b"")],
    "125, 126 and 64 KiB lengths": [
        frame(0x1, b"a" * 125) + frame(0x2, b"b" * 126) + frame(0x2, os.urandom(65536)),
    ],
    "many frames in one write": [b"".join(frame(0x1, f"m{i}".encode()) for i in range(50))],
    "split byte by byte": _bytewise(frame(0x1, b"x" * 300) + frame(0x2, b"yz")),
    "split inside the length and the mask": [
        (f := frame(0x2, b"q" * 1000))[:3],
        f[3:7],
        f[7:500],
        f[500:],
    ],
    "fragmented, a ping in between": [
        frame(0x1, b"frag", fin=False)
        + frame(0x9, b"ping!")
        + frame(0x0, b"ment", fin=False)
        + frame(0x0, b"ed", fin=True)
        + frame(0x1, b"after"),
    ],
    "ping and pong": [frame(0x9, b"p1") + frame(0xA, b"unsolicited") + frame(0x1, b"t")],
    "close with a reason": [frame(0x1, b"a") + frame(0x8, struct.pack("!H", 4000) + b"bye")],
    "invalid UTF-8": [frame(0x1, b"ok") + frame(0x1, b"\xff\xfe bad") + frame(0x1, b"never")],
    "invalid UTF-8 across fragments": [
        frame(0x1, b"ok \xe2", fin=False) + frame(0x0, b"\x28\xa1", fin=True)
    ],
    "unmasked frame": [frame(0x1, b"ok") + _unmasked(0x1, b"bare")],
    "RSV1 without an extension": [frame(0x1, b"ok") + bytes([0xC1]) + frame(0x1, b"z")[1:]],
    "reserved opcode": [frame(0x1, b"ok") + frame(0x3, b"?")],
    "continuation with nothing to continue": [frame(0x0, b"lost")],
    "new message inside a fragmented one": [
        frame(0x1, b"a", fin=False) + frame(0x1, b"b") + frame(0x0, b"c")
    ],
    "fragmented control frame": [frame(0x9, b"p", fin=False)],
    "control frame over 125 bytes": [frame(0x9, b"p" * 126)],
    "over ws_max_size in one frame": [frame(0x1, b"ok") + frame(0x2, b"z" * 70000)],
    "over ws_max_size across fragments": [
        frame(0x2, b"z" * 40000, fin=False) + frame(0x0, b"z" * 40000, fin=True)
    ],
    "a length of 2**63": [frame(0x1, b"ok") + bytes([0x82, 0xFF]) + b"\xff" * 8],
    "data after the close frame": [frame(0x8, struct.pack("!H", 1000)) + frame(0x1, b"late")],
}


@pytest.fixture
def servers(live_server: Any) -> dict[str, Any]:
    return {
        ws: live_server(echo_app, ws=ws, ws_max_size=65536 + 1024, ws_per_message_deflate=False)
        for ws in ("websockets-sansio", H3_WS)
    }


@pytest.mark.parametrize("path", ["/starlette", "/h3"])
@pytest.mark.parametrize("script", list(SCRIPTS))
async def test_same_answer_as_uvicorns_protocol(
    servers: dict[str, Any], script: str, path: str
) -> None:
    answers = {
        ws: await asyncio.to_thread(_exchange, server.port, path, SCRIPTS[script])
        for ws, server in servers.items()
    }
    assert answers[H3_WS] == answers["websockets-sansio"]
    assert answers[H3_WS][-1] == END or answers[H3_WS][-1][0] == 0x88


async def test_the_scripts_do_reach_the_short_path_and_the_fallback(servers: Any) -> None:
    """Guard for the test above: a good echo comes back, and a bad frame is a close."""
    port = servers[H3_WS].port
    good = await asyncio.to_thread(_exchange, port, "/h3", SCRIPTS["text and binary"])
    assert good == [(0x81, TEXT.encode()), (0x82, b"\x00\x01\x02"), END]
    bad = await asyncio.to_thread(_exchange, port, "/h3", SCRIPTS["invalid UTF-8"])
    assert bad[-1][0] == 0x88 and struct.unpack("!H", bad[-1][1][:2])[0] == 1007


# --- the extension, in process ---------------------------------------------------------


class _Transport:
    """What the protocol writes, as a list of writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _State:
    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.tasks: set[Any] = set()
        self.default_headers: list[tuple[bytes, bytes]] = []


async def _open_protocol(app: Any) -> tuple[WebSocketProtocol, _Transport]:
    config = Config(app, ws=H3_WS, log_level="warning", ws_per_message_deflate=False)
    config.load()
    protocol = WebSocketProtocol(config, _State(), {})  # type: ignore[arg-type]
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(100):
        if protocol.handshake_complete:
            break
        await asyncio.sleep(0)
    assert protocol.handshake_complete
    assert transport.writes.pop(0).startswith(b"HTTP/1.1 101")
    return protocol, transport


async def _shut(protocol: WebSocketProtocol) -> None:
    """The client leaves: the app gets its disconnect and returns."""
    if not protocol.disconnected:
        protocol.connection_lost(None)
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), TIMEOUT)


async def _accepting_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    scope["state"]["frames"] = scope["extensions"][FRAMES_EXTENSION]
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _turn() -> None:
    """Let the loop run the callbacks scheduled so far (the end-of-turn batch write)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_batched_frames_go_out_in_one_write_at_the_end_of_the_turn() -> None:
    protocol, transport = await _open_protocol(_accepting_app)
    frames = protocol.scope["state"]["frames"]
    assert frames["batch"](encode_frame("a")) is True
    assert frames["batch"](encode_frame(b"b")) is True
    assert transport.writes == []  # not yet: the end of this turn
    await _turn()
    assert transport.writes == [encode_frame("a") + encode_frame(b"b")]
    assert frames["write"](encode_frame("now")) is True  # written at once
    assert transport.writes[-1] == encode_frame("now")
    await _shut(protocol)


async def test_a_direct_write_or_a_pong_goes_after_what_was_batched() -> None:
    protocol, transport = await _open_protocol(_accepting_app)
    frames = protocol.scope["state"]["frames"]
    frames["batch"](encode_frame("1"))
    frames["write"](encode_frame("2"))
    assert transport.writes == [encode_frame("1") + encode_frame("2")]
    frames["batch"](encode_frame("3"))
    protocol.data_received(frame(0x9, b"ping"))  # uvicorn answers the ping itself
    assert transport.writes[1:] == [encode_frame("3"), b"\x8a\x04ping"]
    await _turn()
    assert len(transport.writes) == 3  # nothing left over for the end of the turn
    await _shut(protocol)


async def test_a_batch_over_the_limit_is_written_at_once() -> None:
    protocol, transport = await _open_protocol(_accepting_app)
    batch = protocol.scope["state"]["frames"]["batch"]
    big = encode_frame(b"x" * (BATCH_LIMIT // 2 - 8))
    batch(big)
    batch(big)
    assert transport.writes == []
    batch(big)  # over the limit: the transport (and its flow control) gets it now
    assert transport.writes == [big * 3]
    await _shut(protocol)


async def test_frames_are_refused_under_flow_control_and_after_close() -> None:
    protocol, transport = await _open_protocol(_accepting_app)
    frames = protocol.scope["state"]["frames"]
    protocol.pause_writing()
    assert frames["write"](encode_frame("x")) is False
    assert frames["batch"](encode_frame("x")) is False
    protocol.resume_writing()
    assert frames["batch"](encode_frame("y")) is True
    protocol.connection_lost(None)
    assert frames["write"](encode_frame("z")) is False
    await _turn()
    assert transport.writes == []  # the batch of a connection that is gone is dropped
    await _shut(protocol)


async def _accept_then_wait(scope: Any, receive: Any, send: Any) -> None:
    """Accepts, then reads nothing until told to (``scope["state"]["read"]``)."""
    await receive()
    await send({"type": "websocket.accept"})
    read = scope["state"]["read"] = asyncio.Event()
    await read.wait()
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_reading_pauses_once_messages_pile_up_not_after_each() -> None:
    protocol, transport = await _open_protocol(_accept_then_wait)
    small = frame(0x1, b"m")
    protocol.data_received(small * (PAUSE_MESSAGES - 1))
    assert transport.reading  # uvicorn's own protocol pauses after the first
    protocol.data_received(small)
    assert not transport.reading
    assert protocol.queue.qsize() == PAUSE_MESSAGES
    protocol.scope["state"]["read"].set()  # the app reads them all: reading resumes
    for _ in range(100):
        if transport.reading:
            break
        await asyncio.sleep(0)
    assert transport.reading and protocol.queue.empty()
    protocol.data_received(frame(0x2, b"x" * (PAUSE_SIZE + 1)))  # a big one: at once
    assert not transport.reading
    await _shut(protocol)


# --- with h3-fastapi on a real server ----------------------------------------------------


class _Burst:
    async def open(self, peer: Peer) -> None:
        peer.subscribe("room")

    async def message(self, peer: Peer, message: Message) -> None:
        count, then = message.text().split()
        for i in range(int(count)):
            peer.publish("room", f"n{i}")
        if then == "close":
            for other in list(peer.peers):
                other.close(4001, "done")


burst_app = Starlette(routes=[WebSocketRoute("/ws", define_websocket_handler(_Burst))])


async def test_a_burst_of_publishes_arrives_in_order_then_the_close(live_server: Any) -> None:
    server = live_server(burst_app, ws=H3_WS, ws_per_message_deflate=False)
    async with connect(f"{server.ws_url}/ws") as sender, connect(f"{server.ws_url}/ws") as sub:
        await sender.send("1 keep")  # both subscribed once a publish goes round
        assert await asyncio.wait_for(sub.recv(), TIMEOUT) == "n0"
        await sender.send("2000 close")
        got = [await asyncio.wait_for(sub.recv(), TIMEOUT) for _ in range(2000)]
        assert got == [f"n{i}" for i in range(2000)]
        await asyncio.wait_for(sub.wait_closed(), TIMEOUT)
        assert sub.close_code == 4001


async def test_permessage_deflate_connections_take_uvicorns_path(live_server: Any) -> None:
    plain: list[bool] = []

    async def echo(peer: Peer, message: Message) -> None:
        write = peer._connection._frames  # type: ignore[attr-defined]
        plain.append(write.__self__._plain)
        await peer.send(message.text())

    app = Starlette(routes=[WebSocketRoute("/ws", define_websocket_handler(message=echo))])
    server = live_server(app, ws=H3_WS)  # uvicorn negotiates permessage-deflate by default
    async with connect(f"{server.ws_url}/ws", compression="deflate") as ws:
        await ws.send("squeeze me " * 100)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "squeeze me " * 100
        assert ws.protocol.extensions  # negotiated: frames are compressed by websockets
    async with connect(f"{server.ws_url}/ws", compression=None) as ws:
        await ws.send("plain")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "plain"
    assert plain == [False, True]
