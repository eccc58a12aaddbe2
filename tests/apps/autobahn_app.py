"""Echo endpoints for the Autobahn|Testsuite run (``scripts/autobahn.sh``).

``/h3`` is an echo built with this library; ``/starlette`` is the same echo
written against raw Starlette. Both run on one uvicorn, so any case where
``/h3`` does worse than ``/starlette`` is ours, not the server's.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from h3_fastapi import define_websocket_handler

# On the loop, like the Starlette echo below: a ``def`` hook in the threadpool (the
# default) echoes a frame after uvicorn has already failed the connection for the
# next, invalid one (cases 4.1.5, 4.2.5: NON-STRICT instead of OK).
h3_echo = define_websocket_handler(
    message=lambda peer, message: peer.send(message.data), sync_hooks="loop"
)


async def starlette_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            if event.get("text") is not None:
                await websocket.send_text(event["text"])
            else:
                await websocket.send_bytes(event.get("bytes") or b"")
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        WebSocketRoute("/h3", h3_echo),
        WebSocketRoute("/starlette", starlette_echo),
    ]
)
