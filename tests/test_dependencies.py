"""FastAPI dependencies and errors of a WebSocket upgrade, on a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
import websockets
from fastapi import Depends, FastAPI, Header, HTTPException, Query, WebSocket, WebSocketException
from starlette.responses import PlainTextResponse
from websockets.exceptions import InvalidStatus

from h3_fastapi import H3Router, Peer

TIMEOUT = 5
events: list[Any] = []
closed = threading.Event()


async def db_session() -> AsyncIterator[dict[str, Any]]:
    session = {"open": True}
    events.append("session opened")
    try:
        yield session
    finally:
        session["open"] = False
        events.append("session closed")
        closed.set()


def current_user(token: Annotated[str | None, Query()] = None) -> str:
    if token is None:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    if token == "ws-exception":
        raise WebSocketException(1008, "policy says no")
    if token != "alice-token":
        raise HTTPException(403, {"reason": "bad token"})
    return "alice"


class Denied(Exception):
    def __init__(self) -> None:
        self.response = PlainTextResponse("thrown response", status_code=418, headers={"x-t": "1"})


router = H3Router(prefix="/v1")


@router.ws("/rooms/{room}")
class Room:
    def upgrade(
        self,
        request: Any,
        room: str,
        user: Annotated[str, Depends(current_user)],
        session: Annotated[dict[str, Any], Depends(db_session)],
        limit: Annotated[int, Query()] = 10,
        x_client: Annotated[str | None, Header()] = None,
    ) -> Any:
        if room == "teapot":
            raise Denied()
        assert request.path_params == {"room": room}
        return {"context": {"seen_by_upgrade": (user, room, limit, x_client)}}

    async def message(self, peer: Peer, message: Any) -> None:
        ctx = peer.context
        await peer.send(
            json.dumps(
                {
                    "user": ctx["user"],
                    "room": ctx["room"],
                    "limit": ctx["limit"],
                    "session_open": ctx["session"]["open"],
                    "upgrade": ctx["seen_by_upgrade"],
                }
            )
        )

    def close(self, peer: Peer, details: Any) -> None:
        events.append(("close hook", peer.context["session"]["open"]))


def api_key(websocket: WebSocket) -> None:
    if websocket.headers.get("x-api-key") != "s3cret":
        raise HTTPException(401, "bad key", headers={"x-why": "key"})


router.ws("/internal", {"open": lambda peer: peer.send("in")}, dependencies=[Depends(api_key)])

app = FastAPI()
app.include_router(router)


@pytest.fixture
def server(live_server: Any) -> Any:
    events.clear()
    closed.clear()
    return live_server(app)


async def rejected(url: str, **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url, **kwargs)
    return info.value.response


async def test_yield_dependency_value_in_message_and_cleanup_after_close(server: Any) -> None:
    url = server.ws_url + "/v1/rooms/blue?token=alice-token&limit=3"
    async with websockets.connect(url, additional_headers={"x-client": "cli"}) as ws:
        await ws.send("hi")
        got = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert got == {
        "user": "alice",
        "room": "blue",
        "limit": 3,
        "session_open": True,
        "upgrade": ["alice", "blue", 3, "cli"],
    }
    await asyncio.to_thread(closed.wait, TIMEOUT)
    # the close hook saw the session still open; it was closed after
    assert events == ["session opened", ("close hook", True), "session closed"]


async def test_http_exception_gives_fastapi_json_with_headers(server: Any) -> None:
    response = await rejected(server.ws_url + "/v1/rooms/blue")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"detail": "Not authenticated"}
    response = await rejected(server.ws_url + "/v1/rooms/blue?token=nope")
    assert response.status_code == 403
    assert json.loads(response.body) == {"detail": {"reason": "bad token"}}


async def test_websocket_exception_and_thrown_response(server: Any) -> None:
    response = await rejected(server.ws_url + "/v1/rooms/blue?token=ws-exception")
    assert response.status_code == 403
    assert json.loads(response.body) == {"detail": "policy says no"}
    response = await rejected(server.ws_url + "/v1/rooms/teapot?token=alice-token")
    assert response.status_code == 418
    assert response.headers["x-t"] == "1"
    assert response.body == b"thrown response"


async def test_bad_query_parameter_gives_422(server: Any) -> None:
    response = await rejected(server.ws_url + "/v1/rooms/blue?token=alice-token&limit=many")
    assert response.status_code == 422
    detail = json.loads(response.body)["detail"]
    assert detail[0]["loc"] == ["query", "limit"]
    assert detail[0]["type"] == "int_parsing"


async def test_route_dependencies_through_fastapi(server: Any) -> None:
    response = await rejected(server.ws_url + "/v1/internal")
    assert response.status_code == 401
    assert response.headers["x-why"] == "key"
    assert json.loads(response.body) == {"detail": "bad key"}
    url = server.ws_url + "/v1/internal"
    async with websockets.connect(url, additional_headers={"x-api-key": "s3cret"}) as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "in"


async def test_app_exception_handler_is_used(live_server: Any) -> None:
    custom = FastAPI()

    @custom.exception_handler(HTTPException)
    async def teapot(request: Any, exc: HTTPException) -> PlainTextResponse:
        return PlainTextResponse(f"custom {exc.status_code}", status_code=451)

    custom.include_router(router)
    server = live_server(custom)
    response = await rejected(server.ws_url + "/v1/rooms/blue")
    assert response.status_code == 451
    assert response.body == b"custom 401"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
async def test_rejections_are_quiet_but_broken_apps_are_not(live_server: Any, ws: str) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/broken":
            await receive()
            return  # neither accepts nor denies
        await app(scope, receive, send)

    server = live_server(broken, ws=ws)
    records = _Records()  # after start: uvicorn configures its loggers when it starts
    logging.getLogger("uvicorn.error").addHandler(records)
    try:
        for _ in range(3):
            assert (await rejected(server.ws_url + "/v1/rooms/blue")).status_code == 401
        await asyncio.sleep(0.2)
        assert records.messages == []
        await rejected(server.ws_url + "/broken")
        await asyncio.sleep(0.2)
        assert "ASGI callable returned without completing handshake." in records.messages
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)


# --- FastAPI's per-connection wrapper is skipped only where nothing needs it --------

routes_seen: list[Any] = []
key_checks: list[str | None] = []


def counted_key(x_key: Annotated[str | None, Header()] = None) -> None:
    key_checks.append(x_key)
    if x_key != "k":
        raise HTTPException(401, "no key")


plain = H3Router()


@plain.ws("/plain")
class Plain:
    def upgrade(self, request: Any) -> None:
        routes_seen.append(request.scope.get("route"))

    async def message(self, peer: Peer, message: Any) -> None:
        await peer.send(message.text())


direct_app = FastAPI()
direct_app.include_router(plain)
direct_app.include_router(plain, prefix="/guarded", dependencies=[Depends(counted_key)])


async def echo_once(url: str, **kwargs: Any) -> str:
    async with websockets.connect(url, **kwargs) as ws:
        await ws.send("ping")
        return str(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def test_route_without_dependencies_is_served_without_fastapi_wrapper(
    live_server: Any,
) -> None:
    routes_seen.clear()
    key_checks.clear()
    server = live_server(direct_app)
    for _ in range(3):
        assert await echo_once(server.ws_url + "/plain") == "ping"
    route = routes_seen[0]
    assert all(seen is route for seen in routes_seen)
    # From the second connection on, the route calls the handler as plain ASGI.
    assert route.app is route.endpoint

    # include_router's dependencies keep FastAPI's wrapper: they run for every connection.
    for _ in range(3):
        assert (
            await echo_once(server.ws_url + "/guarded/plain", additional_headers={"x-key": "k"})
            == "ping"
        )
    response = await rejected(server.ws_url + "/guarded/plain")
    assert response.status_code == 401
    assert key_checks == ["k", "k", "k", None]
    guarded = routes_seen[-1]
    assert guarded is not route
    assert guarded.app is not guarded.endpoint
