"""WebSocket hooks, publish, upgrade and close behaviours on a real uvicorn with `websockets`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

import h3_fastapi
from tests.apps import chat_app

TIMEOUT = 5


@pytest.fixture
def server(live_server: Any) -> Any:
    chat_app.events.clear()
    return live_server(chat_app.app)


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def closed(peer_id: str) -> list[Any]:
    """Wait until the close hook ran for ``peer_id``; its close events."""

    def matches(events: list[Any]) -> bool:
        return any(e[0] == "close" and e[1] == peer_id for e in events)

    await asyncio.to_thread(chat_app.events.wait, matches, TIMEOUT)
    return [e for e in chat_app.events if e[0] == "close" and e[1] == peer_id]


async def test_welcome_ping_echo_and_publish(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/_ws") as a:
        welcome = await recv_json(a)
        assert welcome["namespace"] == "/_ws"
        assert len(welcome["welcome"]) == 36
        async with websockets.connect(server.ws_url + "/_ws") as b:
            welcome_b = await recv_json(b)
            assert await recv(a) == f"[system] {welcome_b['welcome']} joined"
            await a.send("ping")
            assert await recv(a) == "pong"
            await a.send("hello")
            assert await recv(a) == "hello"  # echo to sender
            assert await recv(b) == f"[{welcome['welcome']}] hello"  # others via chat
            # the sender does not get its own publish
            await a.send("ping")
            assert await recv(a) == "pong"


async def test_peers_in_connection_order_and_http_views(server: Any) -> None:
    clients = [await websockets.connect(server.ws_url + "/_ws") for _ in range(3)]
    try:
        ids = [(await recv_json(c))["welcome"] for c in clients]
        await clients[1].send("peers")
        while True:
            reply = await recv(clients[1])
            if not reply.startswith("[system]"):
                break
        assert json.loads(reply) == ids
        peers = httpx.get(server.url + "/peers").json()
        assert peers["/_ws"] == ids
        await clients[0].close()
        # the peer leaves `peers` before its close hook runs
        await closed(ids[0])
        assert httpx.get(server.url + "/peers").json()["/_ws"] == ids[1:]
    finally:
        for c in clients:
            await c.close()


async def test_http_publish_reaches_every_subscriber(server: Any) -> None:
    clients = [await websockets.connect(server.ws_url + "/_ws") for _ in range(3)]
    try:
        for c in clients:
            await recv_json(c)
        # drain join notices
        for i, c in enumerate(clients):
            for _ in range(len(clients) - 1 - i):
                await recv(c)
        r = httpx.get(server.url + "/publish", params={"topic": "chat", "message": "hi all"})
        assert r.status_code == 200
        for c in clients:
            assert await recv(c) == "hi all"
    finally:
        for c in clients:
            await c.close()


async def test_upgrade_rejected_with_status_headers_and_body(server: Any) -> None:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(server.ws_url + "/_ws?token=bad")
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-reason"] == "token"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"unauthorized: bad token"
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(server.ws_url + "/_ws?token=raise")
    assert info.value.response.status_code == 403
    assert info.value.response.headers["x-raised"] == "1"
    # FastAPI's answer to an HTTPException: JSON ``{"detail": ...}`` with its headers.
    assert json.loads(info.value.response.body) == {"detail": "forbidden by exception"}
    assert info.value.response.headers["content-type"] == "application/json"
    assert not [e for e in chat_app.events if e[0] == "open"]


async def test_subprotocol_only_when_chosen(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/_ws", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None
    url = server.ws_url + "/_ws?accept_protocol=chat.v2"
    async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"


async def test_handshake_headers_request_and_context(server: Any) -> None:
    url = server.ws_url + "/_ws?user=ada&token=t1&x=1"
    async with websockets.connect(url, additional_headers={"x-custom": "hello"}) as ws:
        assert ws.response.headers["set-cookie"] == "session=abc; Path=/"
        assert ws.response.headers["x-upgrade"] == "yes"
        welcome = await recv_json(ws)
        assert welcome["user"] == "ada"  # filled in upgrade via request.context
        await ws.send("request")
        info = await recv_json(ws)
        assert info["url"].startswith(f"http://127.0.0.1:{server.port}/_ws?")
        assert info["path"] == "/_ws"
        assert info["query"] == {"user": "ada", "token": "t1", "x": "1"}
        assert info["header"] == "hello"
        assert info["remote"] == "127.0.0.1"
        assert info["context"] == {"token": "t1"}
    opened = [e for e in chat_app.events if e[0] == "open"]
    assert opened[0][2] == {"user": "ada", "token": "t1"}


async def test_namespace_from_upgrade_isolates_publish(server: Any) -> None:
    async with (
        websockets.connect(server.ws_url + "/_ws?room=a") as a1,
        websockets.connect(server.ws_url + "/_ws?room=a") as a2,
        websockets.connect(server.ws_url + "/_ws?room=b") as b1,
    ):
        assert (await recv_json(a1))["namespace"] == "room:a"
        await recv_json(a2)
        assert (await recv_json(b1))["namespace"] == "room:b"
        assert (await recv(a1)).startswith("[system]")  # a2 joined room a
        await a1.send("x")
        assert await recv(a1) == "x"
        assert (await recv(a2)).endswith("] x")
        await b1.send("ping")
        assert await recv(b1) == "pong"  # b1 got nothing from room a


async def test_binary_round_trip_and_json_frames(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        await recv_json(ws)
        payload = bytes(range(256)) * 3
        await ws.send(payload)
        echoed = await recv(ws)
        assert isinstance(echoed, bytes) and echoed == payload
        await ws.send("model")
        assert await recv(ws) == '{"x":1,"y":2}'
        await ws.send("peers")
        frame = await recv(ws)
        assert isinstance(frame, str) and isinstance(json.loads(frame), list)


async def test_echo_handler_keeps_frame_type(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/echo") as ws:
        await ws.send("text")
        assert await recv(ws) == "text"
        await ws.send(b"\x00\xffbin")
        assert await recv(ws) == b"\x00\xffbin"


async def test_server_close_code_and_close_hook_once(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        peer_id = (await recv_json(ws))["welcome"]
        await ws.send("close-me")
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(ws)
        assert ws.close_code == 4000
        assert ws.close_reason == "as you wish"
    assert await closed(peer_id) == [("close", peer_id, (4000, "as you wish"))]


async def test_client_close_code_reaches_close_hook(server: Any) -> None:
    ws = await websockets.connect(server.ws_url + "/_ws")
    peer_id = (await recv_json(ws))["welcome"]
    await ws.close(4321, "bye now")
    assert await closed(peer_id) == [("close", peer_id, (4321, "bye now"))]


async def test_abrupt_tcp_drop_runs_close_once(server: Any) -> None:
    ws = await websockets.connect(server.ws_url + "/_ws")
    peer_id = (await recv_json(ws))["welcome"]
    ws.transport.abort()  # no close frame
    closes = await closed(peer_id)
    # uvicorn reports a drop after the handshake as 1005 (no status received)
    assert len(closes) == 1 and closes[0][2][0] in (1005, 1006)
    assert peer_id not in httpx.get(server.url + "/peers").json().get("/_ws", [])


async def test_hook_exception_reaches_error_and_closes_1011_others_fine(server: Any) -> None:
    async with (
        websockets.connect(server.ws_url + "/_ws") as bad,
        websockets.connect(server.ws_url + "/_ws") as good,
    ):
        bad_id = (await recv_json(bad))["welcome"]
        await recv_json(good)
        await bad.send("boom")
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(bad)
        assert bad.close_code == 1011
        await good.send("ping")
        assert await recv(good) == "pong"
    errors = [e for e in chat_app.events if e[0] == "error"]
    assert errors == [("error", bad_id, "RuntimeError('boom')")]


async def test_plain_get_on_websocket_route_is_426(server: Any) -> None:
    r = httpx.get(server.url + "/_ws")
    assert r.status_code == 426
    assert r.text == "WebSocket upgrade is required."


async def test_factory_gets_path_params_and_default_namespace(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/rooms/blue") as ws:
        assert await recv(ws) == "room blue ns /rooms/blue"
        await ws.send("hi")
        assert await recv(ws) == "blue:hi"


async def test_dependencies_run_for_upgrade(server: Any) -> None:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(server.ws_url + "/guarded")
    assert info.value.response.status_code == 401
    async with websockets.connect(server.ws_url + "/guarded?key=secret") as ws:
        assert await recv(ws) == "in"


async def test_add_api_websocket_route_plain_fastapi(server: Any) -> None:
    async with websockets.connect(server.ws_url + "/raw") as ws:
        await ws.send("shout")
        assert await recv(ws) == "SHOUT"


def test_unknown_handler_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_peer"):
        h3_fastapi.define_websocket_handler({}, max_peer=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="sync_hooks"):
        h3_fastapi.define_websocket_handler({}, sync_hooks="thread")  # type: ignore[typeddict-item]
