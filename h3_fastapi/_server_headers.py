"""``Date`` and ``Server`` added only where a response has none.

ASGI servers add their own ``Date`` and ``Server`` to every response, next to
any the app set. A proxied response already carries the upstream's, so the
client would see two of each (``server: upstream, uvicorn``). h3 adds ``Date``
only when none is set; ``serve()`` does the same: it turns uvicorn's own headers
off and wraps the app in ``DefaultHeaders``, which fills in what is missing.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DefaultHeaders"]

# Messages that start a response, including a refused WebSocket upgrade's.
_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


class _Clock:
    """The IMF-fixdate of the current second, formatted once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.value = formatdate(second, usegmt=True).encode("ascii")
            self.second = second
        return self.value


class DefaultHeaders:
    """ASGI wrapper: add ``date`` (and ``server``) to responses that have none.

    ``server=None`` adds no ``Server`` header; ``date=False`` no ``Date``.
    """

    __slots__ = ("app", "clock", "date", "server")

    def __init__(self, app: ASGIApp, *, date: bool = True, server: str | None = None) -> None:
        self.app = app
        self.date = date
        self.server = None if server is None else server.encode("latin-1")
        self.clock = _Clock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_defaults(message: Message) -> None:
            if message["type"] in _RESPONSE_STARTS:
                headers = list(message.get("headers") or ())
                names = {name.lower() for name, _ in headers}
                added = False
                if self.date and b"date" not in names:
                    headers.append((b"date", self.clock.now()))
                    added = True
                if self.server is not None and b"server" not in names:
                    headers.append((b"server", self.server))
                    added = True
                if added:
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_defaults)
