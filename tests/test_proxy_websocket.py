"""create_websocket_proxy: a real upstream WebSocket server behind a real proxy server.

The upstream is an ``H3Router`` app on uvicorn; the proxy is another, whose
routes are ``create_websocket_proxy`` hooks; clients are ``websockets``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from h3_fastapi import H3Router, Peer, create_websocket_proxy
from tests.conftest import LiveServer, free_port

TIMEOUT = 5


class Closes:
    """Close details the upstream saw, waited on with a condition (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int, str]] = []
        self.changed = threading.Condition()

    def add(self, route: str, code: int, reason: str) -> None:
        with self.changed:
            self.items.append((route, code, reason))
            self.changed.notify_all()

    async def wait_for(self, route: str) -> tuple[int, str]:
        def find() -> tuple[int, str] | None:
            with self.changed:
                self.changed.wait_for(lambda: any(r == route for r, _, _ in self.items), TIMEOUT)
                for r, code, reason in self.items:
                    if r == route:
                        return code, reason
            return None

        found = await asyncio.to_thread(find)
        assert found is not None, f"upstream {route} never closed; saw {self.items}"
        return found


class Upstream:
    def __init__(self, server: LiveServer, closes: Closes, gate: asyncio.Event) -> None:
        self.server = server
        self.closes = closes
        self.gate = gate
        self.ws_url = server.ws_url

    def open_gate(self) -> None:
        self.server.call(self.gate.set)


@pytest.fixture
def upstream(live_server: Callable[..., LiveServer]) -> Upstream:
    app = FastAPI()
    h3 = H3Router()
    closes = Closes()
    gate = asyncio.Event()

    def on_close(route: str) -> Callable[[Any, Any], None]:
        return lambda peer, details: closes.add(route, details.code, details.reason)

    def chat_message(peer: Any, message: Any) -> None:
        text = message.text()
        if text == "close-me":
            peer.close(4002, "later")
            return
        peer.publish("chat", text)
        peer.send(f"sent: {text}")

    def echo(peer: Any, message: Any) -> None:
        peer.send(message.raw_data)

    h3.ws(
        "/chat",
        {
            "open": lambda peer: peer.subscribe("chat"),
            "message": chat_message,
            "close": on_close("chat"),
        },
    )
    h3.ws("/echo", {"message": echo, "close": on_close("echo")})

    def pick(request: Any) -> dict[str, Any] | None:
        offered = request.scope.get("subprotocols") or []
        return {"protocol": "chat.v1"} if "chat.v1" in offered else None

    h3.ws("/proto", {"upgrade": pick, "message": echo})

    async def wait_gate(request: Any) -> None:
        await gate.wait()

    h3.ws("/gated", {"upgrade": wait_gate, "message": echo})

    def report_headers(peer: Any) -> None:
        headers = peer.request.headers
        peer.send(
            {
                "cookie": headers.get("cookie"),
                "origin": headers.get("origin"),
                "user-agent": headers.get("user-agent"),
                "x-added": headers.get("x-added"),
                "x-filtered": headers.get("x-filtered"),
                "protocol": headers.get("sec-websocket-protocol"),
            }
        )

    h3.ws("/headers", {"open": report_headers})
    app.include_router(h3)
    return Upstream(live_server(app), closes, gate)


def serve_proxy(
    live_server: Callable[..., LiveServer], routes: dict[str, dict[str, Any]]
) -> LiveServer:
    """A proxy app: each path relays to ``target`` with the given options."""
    app = FastAPI()
    h3 = H3Router()
    for path, options in routes.items():
        options = dict(options)
        target = options.pop("target")
        h3.ws(path, create_websocket_proxy(target, **options))
    app.include_router(h3)
    return live_server(app)


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def close_code(ws: Any) -> tuple[int | None, str | None]:
    """Read until the proxy closes us; the close code and reason it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await recv(ws)
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, None)


async def test_chat_between_two_clients_through_the_proxy(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(live_server, {"/chat": {"target": upstream.ws_url + "/chat"}})
    async with (
        websockets.connect(proxy.ws_url + "/chat") as alice,
        websockets.connect(proxy.ws_url + "/chat") as bob,
    ):
        # Both are subscribed upstream once each has had an answer.
        await alice.send("alice here")
        assert await recv(alice) == "sent: alice here"
        await bob.send("bob here")
        reply = await recv(bob)
        if reply == "alice here":  # bob's upstream joined before alice spoke
            reply = await recv(bob)
        assert reply == "sent: bob here"
        assert await recv(alice) == "bob here"
        await alice.send("hi bob")
        assert await recv(alice) == "sent: hi bob"
        assert await recv(bob) == "hi bob"


async def test_text_and_binary_relay_and_close_codes(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {
            "/echo": {"target": upstream.ws_url + "/echo"},
            "/chat": {"target": upstream.ws_url + "/chat"},
        },
    )
    blob = bytes(range(256)) * 800
    async with websockets.connect(proxy.ws_url + "/echo") as ws:
        await ws.send("héllo")
        assert await recv(ws) == "héllo"
        await ws.send(blob)
        echoed = await recv(ws)
        assert isinstance(echoed, bytes) and echoed == blob
        await ws.close(4001, "bye")
    # The client's close code and reason reach the upstream.
    assert await upstream.closes.wait_for("echo") == (4001, "bye")
    # The upstream's close code and reason reach the client.
    async with websockets.connect(proxy.ws_url + "/chat") as ws:
        await ws.send("close-me")
        assert await close_code(ws) == (4002, "later")


async def test_subprotocol_chosen_upstream_is_relayed(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(live_server, {"/proto": {"target": upstream.ws_url + "/proto"}})
    async with websockets.connect(
        proxy.ws_url + "/proto", subprotocols=["chat.v2", "chat.v1"]
    ) as ws:
        assert ws.subprotocol == "chat.v1"
        await ws.send("x")
        assert await recv(ws) == "x"
    async with websockets.connect(proxy.ws_url + "/proto", subprotocols=["other"]) as ws:
        assert ws.subprotocol is None


async def test_messages_before_upstream_opens_are_buffered_in_order(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(live_server, {"/gated": {"target": upstream.ws_url + "/gated"}})
    # The handshake completes while the upstream is still held at its gate.
    async with websockets.connect(proxy.ws_url + "/gated", open_timeout=TIMEOUT) as ws:
        for i in range(5):
            await ws.send(f"m{i}")
        await ws.send(b"\x00\x01")
        upstream.open_gate()
        assert [await recv(ws) for _ in range(6)] == ["m0", "m1", "m2", "m3", "m4", b"\x00\x01"]


async def test_buffer_limit_closes_1009(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {"/gated": {"target": upstream.ws_url + "/gated", "buffer_limit": 1000}},
    )
    try:
        async with websockets.connect(proxy.ws_url + "/gated") as ws:
            await ws.send("a" * 600)
            await ws.send("b" * 600)
            code, _ = await close_code(ws)
            assert code == 1009
    finally:
        upstream.open_gate()  # let the held upstream handshake finish


async def test_unreachable_or_refused_upstream_closes_1011(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {
            "/down": {"target": f"ws://127.0.0.1:{free_port()}/x"},
            "/guarded": {"target": upstream.ws_url + "/echo", "deny_private": True},
            "/allowed": {
                "target": upstream.ws_url.replace("127.0.0.1", "localhost") + "/echo",
                "allow_hosts": ["localhost"],
            },
        },
    )
    for path in ("/down", "/guarded"):
        async with websockets.connect(proxy.ws_url + path) as ws:
            code, _ = await close_code(ws)
            assert code == 1011, path
    async with websockets.connect(proxy.ws_url + "/allowed") as ws:
        await ws.send("through")
        assert await recv(ws) == "through"


async def test_client_headers_forwarded_and_filtered(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {
            "/headers": {
                "target": upstream.ws_url + "/headers",
                "headers": {"x-added": "yes"},
                "filter_headers": ["x-filtered"],
            }
        },
    )
    async with websockets.connect(
        proxy.ws_url + "/headers",
        additional_headers={"cookie": "sid=1", "x-filtered": "no"},
        origin="http://app.test",
        user_agent_header="tester/1.0",
    ) as ws:
        seen = json.loads(await recv(ws))
    assert seen == {
        "cookie": "sid=1",
        "origin": "http://app.test",
        "user-agent": "tester/1.0",
        "x-added": "yes",
        "x-filtered": None,
        "protocol": None,
    }


# --- crossws options: target / headers / forward_protocol of the peer --------------


async def test_target_and_headers_may_be_functions_of_the_peer(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    seen: list[Any] = []

    def route(peer: Any) -> str:
        seen.append(peer)
        return f"{upstream.ws_url}/{peer.request.query_params['to']}"

    async def route_async(peer: Any) -> str:
        await asyncio.sleep(0)  # a real await point: the resolver is awaited
        return route(peer)

    async def identity(peer: Any) -> dict[str, str]:
        return {"x-added": f"user={peer.request.query_params['user']}"}

    proxy = serve_proxy(
        live_server,
        {
            "/sync": {"target": route, "headers": lambda peer: {"x-added": peer.id}},
            "/async": {"target": route_async, "headers": identity},
        },
    )
    async with websockets.connect(proxy.ws_url + "/sync?to=echo") as ws:
        await ws.send(b"\x01binary")
        assert await recv(ws) == b"\x01binary"
    async with websockets.connect(proxy.ws_url + "/sync?to=headers") as ws:
        reported = json.loads(await recv(ws))
    # The resolvers get the Peer itself (crossws passes the peer).
    assert all(isinstance(peer, Peer) for peer in seen) and len(seen) == 2
    assert reported["x-added"] == seen[1].id
    async with websockets.connect(proxy.ws_url + "/async?to=headers&user=ada") as ws:
        assert json.loads(await recv(ws))["x-added"] == "user=ada"
    async with websockets.connect(proxy.ws_url + "/async?to=echo&user=ada") as ws:
        await ws.send("text")
        assert await recv(ws) == "text"


async def test_target_function_that_raises_closes_1011(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    def broken(peer: Any) -> str:
        raise LookupError("no such room")

    proxy = serve_proxy(
        live_server,
        {"/broken": {"target": broken}, "/notws": {"target": lambda peer: "http://x.test/"}},
    )
    for path in ("/broken", "/notws"):
        async with websockets.connect(proxy.ws_url + path) as ws:
            assert await close_code(ws) == (1011, "Upstream unavailable"), path


def test_a_static_target_must_be_a_websocket_url() -> None:
    with pytest.raises(ValueError, match="ws://"):
        create_websocket_proxy("http://127.0.0.1/x")


@pytest.mark.parametrize(
    ("forward_protocol", "offered", "accepted", "upstream_saw"),
    [
        # True (default): the client's offers go upstream verbatim.
        (True, ["a", "b"], None, "a, b"),
        # False: nothing offered upstream, nothing accepted from the client.
        (False, ["chat.v1"], None, None),
        # A fixed subprotocol or list, whatever the client asked.
        ("fixed.v1", ["a"], None, "fixed.v1"),
        (["x", "y", "x"], [], None, "x, y"),
        # A rewrite map: mapped tokens swapped, others verbatim, duplicates dropped.
        ({"a": "chat.v1", "b": "chat.v1"}, ["a", "b", "c"], None, "chat.v1, c"),
        # A function of the peer, sync or async: the client gets its first offer.
        (lambda peer: ["chat.v1", peer.request.query_params["v"]], ["a", "b"], "a", "chat.v1, 2"),
        (lambda peer: None, ["a"], "a", None),
    ],
)
async def test_forward_protocol_offers_upstream(
    live_server: Callable[..., LiveServer],
    upstream: Upstream,
    forward_protocol: Any,
    offered: list[str],
    accepted: str | None,
    upstream_saw: str | None,
) -> None:
    # /headers accepts no subprotocol: with a static setup the client gets none.
    proxy = serve_proxy(
        live_server,
        {"/h": {"target": upstream.ws_url + "/headers", "forward_protocol": forward_protocol}},
    )
    async with websockets.connect(proxy.ws_url + "/h?v=2", subprotocols=offered or None) as ws:
        assert ws.subprotocol == accepted
        assert json.loads(await recv(ws))["protocol"] == upstream_saw


async def test_async_forward_protocol_function(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    async def choose(peer: Any) -> str:
        return "chat.v1"

    proxy = serve_proxy(
        live_server,
        {"/p": {"target": upstream.ws_url + "/proto", "forward_protocol": choose}},
    )
    async with websockets.connect(proxy.ws_url + "/p", subprotocols=["mine", "other"]) as ws:
        assert ws.subprotocol == "mine"  # crossws: the client's first offer
        await ws.send("through")
        assert await recv(ws) == "through"


async def test_subprotocol_upstream_chose_is_mapped_back_for_the_client(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {
            "/mapped": {
                "target": upstream.ws_url + "/proto",
                "forward_protocol": {"app.v1": "chat.v1"},
            },
            "/fixed": {"target": upstream.ws_url + "/proto", "forward_protocol": "chat.v1"},
            "/off": {"target": upstream.ws_url + "/proto", "forward_protocol": False},
        },
    )
    # The upstream picks chat.v1, which stands for the client's app.v1.
    async with websockets.connect(proxy.ws_url + "/mapped", subprotocols=["x", "app.v1"]) as ws:
        assert ws.subprotocol == "app.v1"
    # Nothing the client offered maps to what the upstream accepts: no subprotocol.
    async with websockets.connect(proxy.ws_url + "/mapped", subprotocols=["x"]) as ws:
        assert ws.subprotocol is None
    # A fixed offer the upstream accepted: the client gets its own first choice.
    async with websockets.connect(proxy.ws_url + "/fixed", subprotocols=["mine", "b"]) as ws:
        assert ws.subprotocol == "mine"
    async with websockets.connect(proxy.ws_url + "/off", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None
        await ws.send("x")
        assert await recv(ws) == "x"


# --- connect timeout, buffer, close codes ------------------------------------------


async def test_connect_timeout_closes_1011(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    async def resolver_that_never_settles(peer: Any) -> str:
        await asyncio.Event().wait()
        return upstream.ws_url + "/echo"

    proxy = serve_proxy(
        live_server,
        {
            "/gated": {"target": upstream.ws_url + "/gated", "connect_timeout": 0.3},
            "/old-name": {"target": upstream.ws_url + "/gated", "open_timeout": 0.3},
            "/resolver": {"target": resolver_that_never_settles, "connect_timeout": 0.3},
            "/proto": {"target": upstream.ws_url + "/gated", "connect_timeout": 0.3},
        },
    )
    try:
        for path in ("/gated", "/old-name", "/resolver"):
            async with websockets.connect(proxy.ws_url + path) as ws:
                assert await close_code(ws) == (1011, "Upstream connect timeout"), path
        # Dialled during the handshake (the client asked for a subprotocol): the
        # client is accepted without one, then closed the same way.
        async with websockets.connect(proxy.ws_url + "/proto", subprotocols=["p"]) as ws:
            assert ws.subprotocol is None
            assert await close_code(ws) == (1011, "Upstream connect timeout")
    finally:
        upstream.open_gate()


async def test_max_buffer_size_counts_utf8_bytes_and_zero_disables_it(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(
        live_server,
        {
            "/small": {"target": upstream.ws_url + "/gated", "max_buffer_size": 1000},
            "/unbounded": {"target": upstream.ws_url + "/gated", "max_buffer_size": 0},
        },
    )
    try:
        async with websockets.connect(proxy.ws_url + "/small") as ws:
            await ws.send("é" * 300)  # 600 bytes on the wire, 300 characters
            await ws.send("é" * 300)
            assert await close_code(ws) == (1009, "Proxy buffer limit exceeded")
        async with websockets.connect(proxy.ws_url + "/unbounded") as ws:
            chunks = [bytes([i]) * 600_000 for i in range(3)]  # 1.8 MB > the 1 MiB default
            for chunk in chunks:
                await ws.send(chunk)
            upstream.open_gate()
            assert [await recv(ws) for _ in chunks] == chunks
    finally:
        upstream.open_gate()


def test_old_and_new_option_names_are_not_both_accepted() -> None:
    with pytest.raises(TypeError, match="max_buffer_size"):
        create_websocket_proxy("ws://x.test", max_buffer_size=5, buffer_limit=6)
    with pytest.raises(TypeError, match="connect_timeout"):
        create_websocket_proxy("ws://x.test", connect_timeout=5, open_timeout=6)
    with pytest.raises(TypeError, match="forward_protocol"):
        create_websocket_proxy("ws://x.test", forward_protocol=False, protocols=["a"])


async def test_upstream_close_without_code_or_without_frame(
    live_server: Callable[..., LiveServer],
) -> None:
    """An empty close frame reaches the client as 1000; a dropped TCP link as 1011."""

    async def handler(ws: Any) -> None:
        what = await ws.recv()
        if what == "no-code":
            await ws.close(None)  # an empty close frame (1005 on the proxy's side)
        elif what == "drop":
            ws.transport.abort()

    async with serve(handler, "127.0.0.1", 0) as raw:
        port = raw.sockets[0].getsockname()[1]
        proxy = serve_proxy(live_server, {"/raw": {"target": f"ws://127.0.0.1:{port}/"}})
        async with websockets.connect(proxy.ws_url + "/raw") as ws:
            await ws.send("no-code")
            assert await close_code(ws) == (1000, "")
        async with websockets.connect(proxy.ws_url + "/raw") as ws:
            await ws.send("drop")
            assert await close_code(ws) == (1011, "Upstream connection lost")


async def test_client_close_codes_reach_the_upstream(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy = serve_proxy(live_server, {"/echo": {"target": upstream.ws_url + "/echo"}})
    async with websockets.connect(proxy.ws_url + "/echo") as ws:
        await ws.send("x")
        assert await recv(ws) == "x"
        await ws.close(1001, "r" * 120)
    assert await upstream.closes.wait_for("echo") == (1001, "r" * 120)
