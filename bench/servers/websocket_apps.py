"""WebSocket servers under test: the same routes in h3-fastapi, raw Starlette and FastAPI.

``/echo`` sends every text message back (idle connections for the memory
workload use it too). ``/broadcast`` subscribes the connection; with
``?pub=1`` it relays what it receives to every subscriber instead.

Where ``def`` hooks run (issue 13): ``/echo-threadpool`` is a ``def`` hook in the
threadpool (the default), ``/echo-loop`` the same hook with ``sync_hooks="loop"``;
``/echo`` is the ``async def`` hook.

Typed messages (issue 12): ``/echo-typed`` validates every message into a small
Pydantic model and sends the model back; ``/echo-json`` parses and sends the same
JSON untyped (``message.json()``, a dict); FastAPI's ``/echo-typed`` writes the
same validation by hand.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from h3_fastapi import H3Router, Message, Peer, define_websocket_handler

# --- h3-fastapi: hooks classes, registered the documented way ---------------


class Echo:
    """The echo of the spec's first example."""

    async def message(self, peer: Peer, message: Message) -> None:
        await peer.send(message.text())


class EchoSync:
    """The same echo from a plain ``def`` hook (queued, flushed after the hook)."""

    def message(self, peer: Peer, message: Message) -> None:
        peer.send(message.text())


class Small(BaseModel):
    """The message of the typed echo: ``{"id": 1, "text": "..."}`` in and out."""

    id: int
    text: str


class EchoTyped:
    """A typed ``message`` hook: h3-fastapi validates the JSON into ``Small`` first."""

    async def message(self, peer: Peer, message: Small) -> None:
        await peer.send(message)


class EchoJson:
    """The same echo untyped: parse the JSON, send the dict back."""

    async def message(self, peer: Peer, message: Message) -> None:
        await peer.send(message.json())


class Broadcast:
    """Subscribers join ``bench``; the publisher's messages go to all of them.

    ``async def`` hooks, like the Starlette loop they are compared with: a ``def``
    hook runs in the threadpool (the default), one hop per message, and the
    fan-out of each publish then happens in its own loop turn instead of
    batching with the next frames (measured 36k against 51k deliveries/s).
    """

    async def open(self, peer: Peer) -> None:
        if peer.request.query_params.get("pub") != "1":
            peer.subscribe("bench")

    async def message(self, peer: Peer, message: Message) -> None:
        peer.publish("bench", message.text())


h3_router = H3Router()
h3_router.ws("/echo", Echo)
h3_router.ws("/echo-threadpool", EchoSync)
h3_router.ws("/echo-loop", EchoSync, sync_hooks="loop")
h3_router.ws("/echo-typed", EchoTyped, send=Small)
h3_router.ws("/echo-json", EchoJson)
h3_router.ws("/broadcast", Broadcast)

h3 = FastAPI()
h3.include_router(h3_router)

# The "metrics on" variants (bench/workloads.py): the same app, counting, /metrics mounted.
if os.environ.get("H3_BENCH_METRICS") == "1":
    from h3_fastapi import metrics_app

    h3.mount("/metrics", metrics_app())

# The same handlers as plain ASGI endpoints of a Starlette app (no FastAPI layer),
# to compare like with like against raw Starlette.
h3_starlette = Starlette(
    routes=[
        WebSocketRoute("/echo", define_websocket_handler(Echo)),
        WebSocketRoute("/broadcast", define_websocket_handler(Broadcast)),
    ]
)


# --- raw Starlette ------------------------------------------------------------


async def starlette_echo(websocket: WebSocket) -> None:
    """Receive a text message, send it back, until the client leaves."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


sockets: set[WebSocket] = set()


async def starlette_broadcast(websocket: WebSocket) -> None:
    """The usual loop: ``for ws in sockets: await ws.send_text(m)``."""
    await websocket.accept()
    if websocket.query_params.get("pub") == "1":
        try:
            while True:
                m = await websocket.receive_text()
                for ws in tuple(sockets):  # a copy: a subscriber may leave mid-loop
                    try:
                        await ws.send_text(m)
                    except Exception:
                        sockets.discard(ws)
        except WebSocketDisconnect:
            return
    sockets.add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        sockets.discard(websocket)


starlette = Starlette(
    routes=[
        WebSocketRoute("/echo", starlette_echo),
        WebSocketRoute("/broadcast", starlette_broadcast),
    ]
)


# --- FastAPI @app.websocket -----------------------------------------------------

fastapi = FastAPI()


@fastapi.websocket("/echo")
async def fastapi_echo(websocket: WebSocket) -> None:
    """The FastAPI tutorial's echo endpoint."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@fastapi.websocket("/echo-typed")
async def fastapi_echo_typed(websocket: WebSocket) -> None:
    """The typed echo written by hand: validate each message, send the model's JSON."""
    await websocket.accept()
    try:
        while True:
            message = Small.model_validate_json(await websocket.receive_text())
            await websocket.send_text(message.model_dump_json())
    except WebSocketDisconnect:
        pass
