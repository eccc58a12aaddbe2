"""The example app: both h3 seed examples, the chat demo and the SSE clock in one app.

| path | what |
|---|---|
| ``/`` | chat page (or the page at ``H3_DEMO_URL``, proxied) |
| ``/chat`` | the chat page from this package, always |
| ``/_ws`` | chat WebSocket (h3's seed example) |
| ``/sse`` | ``Hello world`` every second (h3's seed example) |
| ``/clock`` | live clock page; its stream is ``/clock/events`` |
| ``/answer`` | a resumable AI answer (fake tokens): reload mid-answer, it carries on |
| ``/asyncapi`` | the WebSocket and SSE routes as an AsyncAPI 3.0 page (``/asyncapi.json``) |

Pub/sub is in memory unless ``H3_PUBSUB_URL`` names a Redis server; with
Redis, several workers share one chat.
"""

import os

from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from h3_fastapi import H3, add_asyncapi

from . import clock, resumable, sse_seed, websocket_seed

# The first message of an HTTP response, a refused handshake and an accepted one.
_STARTS = ("http.response.start", "websocket.http.response.start", "websocket.accept")


class WorkerHeader:
    """Pure ASGI middleware: ``x-worker-pid`` on every response and WebSocket handshake.

    With ``--workers 2`` it tells which process served a connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (b"x-worker-pid", str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] in _STARTS:
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


app = H3(title="h3-fastapi example app")
app.add_middleware(WorkerHeader)

app.get("/", websocket_seed.page)
app.get("/chat", lambda: HTMLResponse(websocket_seed.chat_page))
app.use("/_ws", websocket_seed.websocket)
app.get("/sse", sse_seed.hello)
app.include_router(clock.router)
app.include_router(resumable.router)
add_asyncapi(app)
