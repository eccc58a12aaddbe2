"""A peer's positioned subscription: each publication framed with its topic and position.

A WebSocket client that wants to resume after a reconnect must know the
position of the last message it got, so ``peer.subscribe(topic, since=...)``
(or ``positions=True``) sends each publish of that topic as the JSON text
``{"topic": ..., "position": "<id>", "data": "<text>"}`` (binary data as
``"binary"``, base64), and, after a catch-up, one
``{"topic", "recovered", "missed", "position"}`` frame between the missed and
the live ones. Presence events pass through as they are.

The subscriber registered in the pub/sub is a small ``PositionedSubscriber``
that compares and hashes equal to its peer: the connection leaves every topic
with ``pubsub.unsubscribe(topic, peer)`` when it closes, and that removes this
one too, with no change to the connection.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._positions import Recovery, Resolved
from .pubsub import Outgoing

if TYPE_CHECKING:
    from ._connection import _Connection
    from .peer import Peer

__all__ = ["PositionedSubscriber", "subscribe_positioned"]


class PositionedSubscriber:
    """Stands for ``peer`` on one topic and frames what it is given."""

    __slots__ = ("peer", "topic")

    def __init__(self, peer: Peer, topic: str) -> None:
        self.peer = peer
        self.topic = topic

    def __hash__(self) -> int:
        return hash(self.peer)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PositionedSubscriber):
            return other.peer is self.peer
        return other is self.peer

    @property
    def namespace(self) -> str | None:
        return self.peer.namespace

    def deliver(self, outgoing: Outgoing) -> None:
        if outgoing.id is None and _is_presence(outgoing.data):
            self.peer.deliver(outgoing)
            return
        frame: dict[str, Any] = {"topic": self.topic, "position": outgoing.id}
        data = outgoing.data
        if isinstance(data, bytes):
            frame["binary"] = base64.b64encode(data).decode("ascii")
        else:
            frame["data"] = data
        self.peer.deliver(Outgoing(json.dumps(frame, separators=(",", ":"))))

    def recovered(self, recovery: Recovery) -> None:
        self.peer.deliver(Outgoing(json.dumps(recovery.as_dict(), separators=(",", ":"))))


def _is_presence(data: str | bytes) -> bool:
    return isinstance(data, str) and data.startswith('{"presence":')


def subscribe_positioned(
    peer: Peer, connection: _Connection, topic: str, since: str | None
) -> tuple[PositionedSubscriber | None, Awaitable[Any]]:
    """Subscribe ``peer`` to ``topic`` with positions, resuming after ``since`` if given.

    Returns the subscriber made (``None`` when the peer is closed or already
    subscribed to ``topic``) and the awaitable ``Recovery`` (``None``: nothing
    to recover from).
    """
    topics = connection.subscribed()
    if not connection.is_open or topic in topics:
        return None, Resolved(None)
    topics.add(topic)
    subscriber = PositionedSubscriber(peer, topic)
    if since:
        return subscriber, connection.pubsub.subscribe_from(topic, subscriber, since)
    connection.pubsub.subscribe(topic, subscriber)
    return subscriber, Resolved(None)
