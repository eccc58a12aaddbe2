"""Limits and hostile input: message size, peer count, send buffer, origins, bad frames, bad JSON.

Each handler option is tested at its edge against a real uvicorn (in a thread,
so the test can see what the hooks saw). Raw sockets send what a well-behaved
client library refuses to: invalid UTF-8 and frames that announce petabytes.
"""

from __future__ import annotations

import asyncio
import json
import select
import threading
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from h3_fastapi import H3Router, Message, Peer, WSError, define_websocket_handler
from h3_fastapi.websocket import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SEND_BUFFER_LIMIT
from tests.recorders import Events as Recorder
from tests.wire import frame, handshake, server_close_code

TIMEOUT = 5
pytestmark = pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
H3_WS = "h3_fastapi.uvicorn_protocol:WebSocketProtocol"
WS_IMPLS = ["websockets-sansio", "wsproto", "websockets", H3_WS]


def recording_handler(rec: Recorder, **options: Any) -> Any:
    def message(peer: Peer, message: Message) -> Any:
        rec.add("message", message.raw_data)
        return peer.send(message.data)

    return define_websocket_handler(
        upgrade=lambda request: rec.add("upgrade", request.headers.get("origin")),
        open=lambda peer: rec.add("open", peer.id),
        message=message,
        close=lambda peer, details: rec.add("close", details.code),
        error=lambda peer, err: rec.add("error", err),
        **options,
    )


def app_with(path: str, handler: Any) -> FastAPI:
    app = FastAPI()
    router = H3Router()
    router.ws(path, handler)
    app.include_router(router)
    return app


async def close_code(ws: Any) -> int | None:
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    code: int | None = ws.close_code
    return code


# --- max_message_size -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ok", "too_big"),
    [
        ("a" * 1024, "a" * 1025),
        ("€" * 341, "€" * 342),  # 3 UTF-8 bytes each: 1023 ok, 1026 too big
        (b"\0" * 1024, b"\0" * 1025),
    ],
    ids=["ascii", "multibyte-text", "binary"],
)
async def test_max_message_size_closes_1009_and_close_hook_sees_it(
    live_server: Any, ok: str | bytes, too_big: str | bytes
) -> None:
    rec = Recorder()
    server = live_server(app_with("/ws", recording_handler(rec, max_message_size=1024)))
    async with connect(f"{server.ws_url}/ws") as ws:
        await ws.send(ok)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == ok
        await ws.send(too_big)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1009
    assert await rec.wait_for("close") == [1009]
    assert rec.of("message") == [ok]  # the oversized one never reached the hook
    assert rec.of("error") == []


def test_default_limits_are_safe() -> None:
    handler = define_websocket_handler(message=lambda p, m: None)
    assert handler.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 16 * 1024 * 1024
    assert handler.send_buffer_limit == DEFAULT_SEND_BUFFER_LIMIT == 4 * 1024 * 1024
    assert handler.max_peers is None
    assert handler.allowed_origins is None


# --- max_peers -------------------------------------------------------------------


async def test_max_peers_rejects_upgrade_with_503_then_admits_after_a_leave(
    live_server: Any,
) -> None:
    rec = Recorder()
    server = live_server(app_with("/ws", recording_handler(rec, max_peers=2)))
    url = f"{server.ws_url}/ws"
    async with connect(url) as first, connect(url):
        with pytest.raises(InvalidStatus) as info:
            await connect(url)
        assert info.value.response.status_code == 503
        assert b"Too many connections" in info.value.response.body
        assert len(rec.of("upgrade")) == 2  # the rejected one ran no hook
        await first.close()
        await rec.wait_for("close")
        async with connect(url) as third:
            await third.send("in")
            assert await asyncio.wait_for(third.recv(), TIMEOUT) == "in"
    await rec.wait_for("close", 3)
    assert len(rec.of("open")) == 3


async def test_max_peers_holds_under_concurrent_async_upgrades(live_server: Any) -> None:
    """20 clients at once, ``max_peers=5``, an ``upgrade`` that waits: exactly 5 get in."""
    rec = Recorder()
    gate = threading.Event()

    async def upgrade(request: Any) -> None:
        rec.add("upgrade")
        # Parked until the test has seen every other client turned away.
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, TIMEOUT)

    handler = define_websocket_handler(
        upgrade=upgrade,
        open=lambda peer: rec.add("open", peer.id),
        close=lambda peer, details: rec.add("close", details.code),
        max_peers=5,
    )
    server = live_server(app_with("/ws", handler))
    url = f"{server.ws_url}/ws"

    async def client() -> Any:
        return await connect(url, open_timeout=TIMEOUT)

    clients = [asyncio.create_task(client()) for _ in range(20)]
    try:
        await rec.wait_for("upgrade", 5)
        done: set[asyncio.Task[Any]] = set()
        # Nothing but the 15 rejections can finish while the gate is shut.
        while len(done) < 15:
            more, _ = await asyncio.wait(
                [c for c in clients if c not in done],
                timeout=TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            assert more, f"only {len(done)} clients were answered while 5 upgrades wait"
            done |= more
        assert len(done) == 15
        statuses = [c.exception().response.status_code for c in done]  # type: ignore[union-attr]
        assert statuses == [503] * 15
        assert len(rec.of("upgrade")) == 5
        gate.set()
        admitted = await asyncio.gather(*(c for c in clients if c not in done))
        await rec.wait_for("open", 5)
        assert len(rec.of("open")) == 5
        for ws in admitted:
            await ws.close()
        await rec.wait_for("close", 5)
    finally:
        gate.set()
        for client in clients:
            if not client.done():
                client.cancel()
            elif not client.cancelled() and client.exception() is None:
                await client.result().close()


# --- send_buffer_limit --------------------------------------------------------------


async def test_peer_that_stops_reading_is_closed_1013_others_keep_going(
    live_server: Any,
) -> None:
    rec = Recorder()
    chunk = b"\xab" * 65536
    flooded = threading.Event()

    async def message(peer: Peer, message: Message) -> None:
        if message.text() != "flood":
            peer.send(message.data)
            return
        # Send 64 KiB at a time for as long as the peer is open (at most 64 MiB).
        for _ in range(1024):
            if not peer.is_open:
                break
            peer.send(chunk)
            await asyncio.sleep(0)  # let the writer run, as a real producer would
        flooded.set()

    handler = define_websocket_handler(
        message=message,
        close=lambda peer, details: rec.add("close", (details.code, peer.buffered_amount)),
        send_buffer_limit=256 * 1024,
    )
    server = live_server(app_with("/ws", handler))
    # A raw socket that sends "flood" and never reads: the kernel buffers fill
    # up, then the peer's outbox does.
    slow, _ = await asyncio.to_thread(handshake, server.port, "/ws")
    with slow:
        async with connect(f"{server.ws_url}/ws") as other:
            slow.sendall(frame(0x1, b"flood"))
            closes = await rec.wait_for("close", timeout=20)
            assert closes[0][0] == 1013
            assert closes[0][1] == 0  # the outbox was freed
            assert await asyncio.to_thread(flooded.wait, TIMEOUT)
            await other.send("still fine")
            assert await asyncio.wait_for(other.recv(), TIMEOUT) == "still fine"


async def test_a_close_the_client_never_reads_still_ends_within_the_close_timeout(
    live_server: Any,
) -> None:
    """The 1013 close frame itself cannot be written to a client that reads nothing:
    the connection is dropped after the close timeout and ``close`` runs."""
    rec = Recorder()
    chunk = b"\xab" * 65536

    def flood(peer: Peer) -> None:  # on the loop, each frame written at once until full
        for _ in range(256):
            if not peer.is_open:
                break
            peer.send(chunk)

    handler = define_websocket_handler(
        open=flood,
        close=lambda peer, details: rec.add("close", details.code),
        send_buffer_limit=65536,
        sync_hooks="loop",
    )
    server = live_server(app_with("/ws", handler))
    slow, _ = await asyncio.to_thread(handshake, server.port, "/ws", 32 * 1024)
    with slow:
        closes = await rec.wait_for("close", timeout=TIMEOUT)
    assert closes == [1013]


# --- allowed_origins ------------------------------------------------------------------


async def test_disallowed_origin_gets_403_before_any_hook(live_server: Any) -> None:
    rec = Recorder()
    handler = recording_handler(rec, allowed_origins=["https://good.example"])
    server = live_server(app_with("/ws", handler))
    url = f"{server.ws_url}/ws"
    for origin in ["https://evil.example", "http://good.example", "https://good.example:444"]:
        with pytest.raises(InvalidStatus) as info:
            await connect(url, origin=origin)  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
    assert rec.events == []  # not even the upgrade hook ran
    async with connect(url, origin="https://good.example") as ws:  # type: ignore[arg-type]
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    async with connect(url) as ws:  # no Origin header: not a browser, allowed
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    assert rec.of("upgrade") == ["https://good.example", None]


async def test_star_allows_any_origin(live_server: Any) -> None:
    rec = Recorder()
    server = live_server(app_with("/ws", recording_handler(rec, allowed_origins="*")))
    async with connect(f"{server.ws_url}/ws", origin="https://evil.example") as ws:  # type: ignore[arg-type]
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    assert rec.of("upgrade") == ["https://evil.example"]


# --- bad frames (raw sockets) ----------------------------------------------------------


# What each uvicorn WebSocket implementation does on a protocol error: the
# code the client gets (None: TCP dropped without a close frame; uvicorn's
# wsproto server does that) and the code it hands the app, which is what the
# close hook sees (uvicorn's legacy websockets server always says 1006).
CLIENT_SEES_CLOSE_FRAME = {
    "websockets-sansio": True,
    "websockets": True,
    "wsproto": False,
    H3_WS: True,
}
APP_SEES = {"websockets-sansio": None, "wsproto": None, "websockets": 1006, H3_WS: None}


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_invalid_utf8_text_frame_closes_1007(
    live_server: Any, ws_impl: str, fragmented: bool
) -> None:
    rec = Recorder()
    server = live_server(app_with("/ws", recording_handler(rec)), ws=ws_impl)
    sock, rest = await asyncio.to_thread(handshake, server.port, "/ws")
    with sock:
        await rec.wait_for("open")
        bad = b"ok " + b"\xed\xa0\x80 surrogate, \xff never valid"
        if fragmented:
            frames = frame(0x1, bad[:4], fin=False) + frame(0x0, bad[4:], fin=True)
        else:
            frames = frame(0x1, bad)
        sock.sendall(frames)
        code = await asyncio.to_thread(server_close_code, sock, rest)
    closes = await rec.wait_for("close")
    print(ws_impl, "client saw", code, "close hook saw", closes)
    assert code == (1007 if CLIENT_SEES_CLOSE_FRAME[ws_impl] else None)
    assert closes == [APP_SEES[ws_impl] or 1007]
    assert rec.of("message") == []
    assert rec.of("error") == []


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_frame_announcing_huge_length_is_cut_off_at_the_size_limit(
    live_server: Any, ws_impl: str
) -> None:
    rec = Recorder()
    limit = 65536
    server = live_server(app_with("/ws", recording_handler(rec)), ws=ws_impl, ws_max_size=limit)
    sock, rest = await asyncio.to_thread(handshake, server.port, "/ws")

    def send_until_closed() -> int:
        # A binary frame header announcing 2**62 bytes, then at most twice the
        # limit in small pieces, pausing for the server's answer between them:
        # websockets rejects the header at once, wsproto once the data it
        # buffered passes the limit. (Flooding on would only fill kernel
        # buffers, and uvicorn's legacy websockets server then waits out its
        # 10 s close timeout before telling the app.)
        sent = 0
        sock.sendall(frame(0x2, b"", length=1 << 62))
        while sent < 2 * limit:
            if select.select([sock], [], [], 0.002)[0]:
                break  # the server answered (its close frame)
            try:
                sock.sendall(b"x" * 4096)
            except (ConnectionResetError, BrokenPipeError):
                # Closed between the select and this send: the data we kept sending
                # reached a closed socket, whose kernel answers with a reset. What
                # the server sent before it is still ours to read.
                break
            sent += 4096
        return sent

    with sock:
        await rec.wait_for("open")
        sent = await asyncio.to_thread(send_until_closed)
        code = await asyncio.to_thread(server_close_code, sock, rest)
    closes = await rec.wait_for("close")
    print(ws_impl, "sent", sent, "client saw", code, "close hook saw", closes)
    assert code == 1009
    assert closes == [APP_SEES[ws_impl] or 1009]
    assert rec.of("message") == []
    async with connect(f"{server.ws_url}/ws") as ws:  # still serving
        await ws.send("after")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "after"


async def test_message_over_server_max_size_closes_1009(live_server: Any) -> None:
    """The server's own frame limit (uvicorn --ws-max-size) sits under max_message_size."""
    rec = Recorder()
    server = live_server(
        app_with("/ws", recording_handler(rec)), ws="websockets-sansio", ws_max_size=65536
    )
    async with connect(f"{server.ws_url}/ws", max_size=None) as ws:
        await ws.send(b"\0" * 65537)
        assert await close_code(ws) == 1009
    assert await rec.wait_for("close") == [1009]
    assert rec.of("message") == []


# --- invalid JSON ---------------------------------------------------------------------


async def test_invalid_json_is_a_value_error_the_app_can_answer(live_server: Any) -> None:
    rec = Recorder()

    def message(peer: Peer, message: Message) -> Any:
        try:
            value = message.json()
        except ValueError as exc:
            rec.add("bad", str(exc))
            return peer.send({"error": str(exc)})
        return peer.send({"ok": value})

    handler = define_websocket_handler(
        message=message, close=lambda peer, details: rec.add("close", details.code)
    )
    server = live_server(app_with("/ws", handler))
    async with connect(f"{server.ws_url}/ws") as ws:
        bad_inputs: list[str | bytes] = ["{nope", "", "[1, 2", b"\xff\xfe", "[" * 100_000]
        for bad in bad_inputs:
            await ws.send(bad)
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply["error"].startswith("WebSocket message is not valid JSON")
        await ws.send('{"still": "open"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"ok": {"still": "open"}}
    assert await rec.wait_for("close") == [1000]


async def test_uncaught_invalid_json_goes_to_error_hook_and_closes_1011(
    live_server: Any,
) -> None:
    rec = Recorder()
    handler = define_websocket_handler(
        message=lambda peer, message: peer.send(message.json()),
        error=lambda peer, err: rec.add("error", err),
        close=lambda peer, details: rec.add("close", details.code),
    )
    server = live_server(app_with("/ws", handler))
    async with connect(f"{server.ws_url}/ws") as ws:
        await ws.send("not json")
        assert await close_code(ws) == 1011
    (error,) = await rec.wait_for("error")
    assert isinstance(error, WSError)
    assert isinstance(error.__cause__, ValueError)
    assert await rec.wait_for("close") == [1011]


# --- Message decoding properties ---------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


@given(json_values)
def test_json_round_trips_from_text_and_binary_frames(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert Message(text).json() == value
    assert Message(text.encode("utf-8")).json() == value


@given(st.one_of(st.text(), st.binary()))
def test_json_of_anything_returns_or_raises_value_error(data: str | bytes) -> None:
    message = Message(data)
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError, match="not valid JSON"):
            message.json()
    else:
        # Compared as JSON text: NaN never equals itself.
        assert json.dumps(message.json()) == json.dumps(expected)
    # text() and bytes() never raise, whatever arrived.
    message.text()
    message.bytes()


def test_deeply_nested_json_is_a_value_error_not_a_recursion_error() -> None:
    assert Message("[" * 500 + "]" * 500).json() is not None  # deep but fine
    for raw in ("[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"a":' * 100_000):
        with pytest.raises(ValueError, match="not valid JSON"):
            Message(raw).json()
        with pytest.raises(ValueError, match="not valid JSON"):
            Message(raw.encode()).json()
