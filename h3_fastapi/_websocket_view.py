"""``peer.websocket``: the Starlette ``WebSocket`` of a peer, plus crossws's WHATWG-like view.

crossws gives every peer a ``websocket`` shaped like the browser's
``WebSocket`` (``readyState``, ``protocol``, ``extensions``, ``url``,
``bufferedAmount``, ``binaryType``). Here the same object is also the
Starlette ``WebSocket`` of the connection, already accepted: its ``send_*``
methods and ``close`` go through the peer's outbox (so they keep order with
``peer.send``), and ``receive_*`` raises, because the connection's reader owns
the incoming side (frames reach the ``message`` hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.types import Message as ASGIMessage
from starlette.websockets import WebSocket, WebSocketState

if TYPE_CHECKING:
    from ._connection import _Connection

__all__ = ["PeerWebSocket"]

# WHATWG ``WebSocket.readyState``.
CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3


class PeerWebSocket(WebSocket):
    """The accepted Starlette ``WebSocket`` of a peer, with the WHATWG-like attributes."""

    def __init__(self, connection: _Connection, scope: dict[str, Any]) -> None:
        super().__init__(scope, connection.receive, connection.send)
        self._connection = connection
        self.client_state = WebSocketState.CONNECTED
        self.application_state = WebSocketState.CONNECTED

    # --- WHATWG-like view (crossws ``peer.websocket``) ---------------------------

    @property
    def readyState(self) -> int:
        """0 connecting, 1 open, 2 closing, 3 closed."""
        return self._connection.ready_state()

    ready_state = readyState

    @property
    def protocol(self) -> str:
        """The accepted subprotocol; when none was accepted, the first the client asked for."""
        accepted = self._connection.protocol
        if accepted:
            return accepted
        asked = self.scope.get("subprotocols") or ()
        return str(asked[0]) if asked else ""

    @property
    def extensions(self) -> str:
        """The client's ``Sec-WebSocket-Extensions``; ``""`` when none.

        ASGI servers do not report what they negotiated, so this is what was asked.
        """
        return self.headers.get("sec-websocket-extensions", "")

    @property
    def bufferedAmount(self) -> int:
        """Bytes queued for the peer and not yet handed to the server."""
        return self._connection.buffered

    buffered_amount = bufferedAmount

    @property
    def binaryType(self) -> str:
        """Always ``"arraybuffer"``: binary frames arrive as ``bytes``."""
        return "arraybuffer"

    binary_type = binaryType

    # --- Starlette ``WebSocket`` over the peer's outbox ---------------------------

    async def send(self, message: ASGIMessage) -> None:
        """``websocket.send`` goes to the peer's outbox; ``websocket.close`` closes the peer."""
        kind = message["type"]
        if kind == "websocket.send":
            connection = self._connection
            if self.application_state is not WebSocketState.CONNECTED or not connection.is_open:
                raise RuntimeError('Cannot call "send" once the peer is closing or closed.')
            text = message.get("text")
            data = text if text is not None else message.get("bytes") or b""
            await connection.peer.send(data)
        elif kind == "websocket.close":
            self.application_state = WebSocketState.DISCONNECTED
            self._connection.close(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"{kind!r} is not possible on an accepted peer.")

    async def receive(self) -> ASGIMessage:
        """Not available: the library reads the connection and calls the ``message`` hook."""
        raise RuntimeError(
            "peer.websocket cannot receive: frames go to the message hook of the handler."
        )
