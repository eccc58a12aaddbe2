"""A connected WebSocket client (crossws ``Peer``): the public face of a connection.

The connection itself (its state, outbox, reader and writer) is a private
record in ``_connection.py``; ``Peer`` only forwards to it, as crossws's
``Peer`` does to its ``_internal``. ``send`` queues at once (from a sync hook,
an async hook or another thread); the outbox is bounded, and a peer that
cannot keep up is closed with 1013 instead of growing memory.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, KeysView, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ._positioned import PositionedSubscriber, subscribe_positioned
from ._positions import Recovery, Resolved
from ._presence import Presence
from .pubsub import DONE, Outgoing

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from ._connection import _Connection

__all__ = ["CloseDetails", "Peer", "UpgradeRequest", "upgrade_request"]


class UpgradeRequest(Request):
    """The upgrade request as an HTTP ``Request`` (scheme ``http``/``https``).

    ``context`` is the peer's context dict: what ``upgrade`` puts there is on
    ``peer.context`` (crossws ``request.context``).
    """

    context: dict[str, Any]


async def _empty_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def upgrade_request(
    scope: Mapping[str, Any], context: dict[str, Any] | None = None
) -> UpgradeRequest:
    """The upgrade request of a WebSocket ``scope``, sharing ``context`` (a new dict by default).

    Made only when something asks for it (a hooks factory, ``upgrade``,
    ``get_namespace``, ``peer.request``): it copies the scope, about 1 KiB per peer.
    """
    http_scope = dict(scope)
    http_scope["type"] = "http"
    http_scope["scheme"] = "https" if scope.get("scheme") in ("wss", "https") else "http"
    http_scope.setdefault("method", "GET")
    request = UpgradeRequest(http_scope, _empty_receive)
    request.context = {} if context is None else context
    return request


@dataclass(frozen=True)
class CloseDetails:
    """Why a connection ended: the WebSocket close ``code`` and ``reason``.

    1000 normal, 1001 going away, 1005 no code given, 1006 dropped without a
    close frame, 1009 message too big, 1011 server error, 1012 server restart,
    1013 send buffer full.
    """

    code: int = 1005
    reason: str = ""


class Peer:
    """One WebSocket connection, as hooks see it.

    ``send``/``publish`` queue data at once and return an awaitable; nothing
    is lost by not awaiting it. ``str(peer)`` is its ``id``.
    """

    __slots__ = (
        "__weakref__",
        "_connection",
        "_context",
        "_id",
        "_positioned",
        "_request",
        "namespace",
    )

    def __init__(
        self, connection: _Connection, namespace: str, request: UpgradeRequest | None = None
    ) -> None:
        self._connection = connection
        self._id: str | None = None
        # topic -> the subscriber that frames it with positions (positioned topics only).
        self._positioned: dict[str, PositionedSubscriber] | None = None
        # Both made on first use when no hook needed them (the request copies the scope).
        self._request = request
        self._context = request.context if request is not None else None
        self.namespace: str = namespace

    @property
    def request(self) -> UpgradeRequest:
        """The upgrade request (an HTTP ``Request``); ``request.context`` is ``context``."""
        if self._request is None:
            self._request = upgrade_request(self._connection.scope, self.context)
        return self._request

    @property
    def context(self) -> dict[str, Any]:
        """Per-peer data, shared with ``request.context`` (what ``upgrade`` put there)."""
        if self._context is None:
            self._context = {}
        return self._context

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self._context = value

    @property
    def id(self) -> str:
        """A random uuid4 string, made on first use."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r} {self.remote_address}>"

    @property
    def remote_address(self) -> str | None:
        """The client's IP address, when the server reports it."""
        client = self._connection.scope.get("client")
        return client[0] if client else None

    @property
    def websocket(self) -> WebSocket:
        """The Starlette ``WebSocket`` for this connection (for lower-level access)."""
        return self._connection.starlette_websocket()

    @property
    def peers(self) -> KeysView[Peer]:
        """Open peers of this namespace in this process, in connection order."""
        return self._connection.peers.of(self.namespace)

    @property
    def topics(self) -> set[str]:
        """The topics this peer is subscribed to."""
        return self._connection.subscribed()

    @property
    def is_open(self) -> bool:
        """``True`` until ``close``/``terminate`` is called or the client leaves."""
        return self._connection.is_open

    @property
    def close_details(self) -> CloseDetails | None:
        """Why the connection ended; ``None`` while it is open or closing."""
        return self._connection.close_details

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this peer and not yet handed to the server."""
        return self._connection.buffered

    def send(self, data: Any) -> Awaitable[None]:
        """Queue ``data`` for this peer (see the serialisation rules) and return at once.

        Await the result to wait until it is written. Safe from any thread.
        After close, data is dropped silently.
        """
        connection = self._connection
        if data.__class__ is str:  # the common case, without the serialiser
            outgoing = Outgoing(data)
        elif connection.is_open:
            outgoing = Outgoing.encode(data)
        else:
            return DONE
        if connection.observed:  # ops or a drain hook see it on the way
            return connection.queue(outgoing, now=True)
        return connection.write(outgoing, outgoing.size)  # dropped once closing

    def deliver(self, outgoing: Outgoing) -> None:
        """The pub/sub entry point: queue an already-encoded publish (any thread)."""
        connection = self._connection
        if connection.observed:
            connection.queue(outgoing)
        else:
            connection.put(outgoing, outgoing.size)

    def publish(self, topic: str, data: Any) -> Awaitable[None]:
        """Send ``data`` to every subscriber of ``topic`` in this namespace except this peer."""
        pubsub = self._connection.pubsub
        positioned = self._positioned
        exclude = self if positioned is None else positioned.get(topic, self)
        return pubsub.publish(topic, data, namespace=self.namespace, exclude=exclude)

    def subscribe(
        self,
        topic: str,
        *,
        since: str | None = None,
        positions: bool = False,
        presence: bool | Mapping[str, Any] | None = None,
    ) -> Awaitable[Recovery | None]:
        """Receive publishes to ``topic``.

        ``since``: the position (event id) of the last publish the client got
        before it reconnected. What it missed is sent first, then a frame
        ``{"topic", "recovered", "missed", "position"}``: ``recovered`` is
        ``false`` when the position is no longer in the pub/sub's history and
        the client must resync. ``since`` or ``positions=True`` sends each
        publish as ``{"topic", "position", "data"}`` so the client knows its
        position. ``presence`` (``True`` or a dict of public info) makes the
        peer a member of the topic (``presence(topic)``), announced with join
        and leave events. Await the result for the ``Recovery`` (``None``
        when there was nothing to recover from).
        """
        connection = self._connection
        if since is None and not positions:
            connection.subscribe(topic)
            result: Awaitable[Recovery | None] = Resolved(None)
        else:
            subscriber, result = subscribe_positioned(self, connection, topic, since)
            if subscriber is not None:
                if self._positioned is None:
                    self._positioned = {}
                self._positioned[topic] = subscriber
        if presence not in (None, False) and connection.is_open:
            info = presence if isinstance(presence, Mapping) else {}
            Presence.of(connection.pubsub).join(
                topic, self.id, info, alive=lambda: self.is_open and topic in self.topics
            )
        return result

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving publishes to ``topic`` (and leave its presence)."""
        positioned = self._positioned.pop(topic, None) if self._positioned else None
        connection = self._connection
        if positioned is None:
            connection.unsubscribe(topic)
        elif topic in connection.subscribed():
            connection.subscribed().discard(topic)
            connection.pubsub.unsubscribe(topic, positioned)
        found = Presence.find(connection.pubsub)
        if found is not None:
            found.leave(topic, self.id)

    async def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> None:
        """Wait until at most ``threshold`` bytes are queued, or the peer is closed.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        await self._connection.wait_for_drain(threshold, timeout)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued has been sent. Safe from any thread."""
        self._connection.close(code, reason)

    def terminate(self) -> None:
        """Drop the connection now, without waiting for queued data."""
        self._connection.terminate()
