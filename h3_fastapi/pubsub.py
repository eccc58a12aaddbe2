"""Topics and the backplane that carries publishes between subscribers.

A ``PubSub`` keeps, for each topic, the local subscribers (WebSocket peers and
event streams) in subscription order, and delivers a publish to them. The
default ``MemoryPubSub`` stops at the process boundary; ``RedisPubSub`` (in
``h3_fastapi.redis``) also forwards publishes to every other process.

A publish is encoded once (``Outgoing``) and the same object is handed to every
subscriber, so a broadcast to 1,000 peers serialises the data once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Generator
from typing import Any, Protocol, runtime_checkable

from ._serialize import to_wire

__all__ = [
    "MemoryPubSub",
    "Outgoing",
    "PubSub",
    "Subscriber",
    "get_default_pubsub",
    "publish",
    "set_default_pubsub",
]


class Outgoing:
    """Data encoded once for every receiver: a WebSocket frame or an SSE ``data``."""

    __slots__ = ("_message", "data", "id", "size")

    def __init__(self, data: str | bytes, id: str | None = None) -> None:
        self.data = data
        self.size = len(data)
        # Event id given by a pub/sub that keeps history (SSE replay), else None.
        self.id = id
        self._message: dict[str, Any] | None = None

    @classmethod
    def encode(cls, value: Any) -> Outgoing:
        """Encode an application value (see ``peer.send``) once."""
        if isinstance(value, Outgoing):
            return value
        return cls(to_wire(value))

    @property
    def is_binary(self) -> bool:
        return isinstance(self.data, bytes)

    @property
    def message(self) -> dict[str, Any]:
        """The ASGI ``websocket.send`` event, built once and shared."""
        message = self._message
        if message is None:
            data = self.data
            if isinstance(data, bytes):
                message = {"type": "websocket.send", "bytes": data}
            else:
                message = {"type": "websocket.send", "text": data}
            self._message = message
        return message


class Subscriber(Protocol):
    """Anything that can receive publishes: a ``Peer`` or an ``EventStream``.

    ``namespace`` is the peer's namespace, or ``None`` for a subscriber that
    receives publishes from every namespace (event streams).
    """

    @property
    def namespace(self) -> str | None: ...

    def _deliver(self, outgoing: Outgoing) -> None: ...


class _Done:
    """An awaitable that is already finished (returned by non-blocking calls)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator

    def __repr__(self) -> str:
        return "<done>"


DONE = _Done()


@runtime_checkable
class PubSub(Protocol):
    """The pub/sub interface every backplane implements."""

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Start delivering ``topic`` to ``subscriber``."""

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Stop delivering ``topic`` to ``subscriber`` (no error if it was not subscribed)."""

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        namespace: str | None = None,
        exclude: Subscriber | None = None,
    ) -> Awaitable[None]:
        """Deliver ``data`` to every subscriber of ``topic`` except ``exclude``.

        With ``namespace``, WebSocket peers of other namespaces are skipped.
        Queues at once; awaiting the result waits until the publish has left
        this process (a no-op for memory).
        """
        ...

    async def close(self) -> None:
        """Release connections; subscribers stay registered locally."""


class MemoryPubSub:
    """In-process pub/sub: no server, nothing leaves the process.

    Safe to publish from any thread: delivery hops to each subscriber's loop.
    """

    def __init__(self) -> None:
        self.topics: dict[str, dict[Subscriber, None]] = {}

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        subscribers = self.topics.get(topic)
        if subscribers is None:
            subscribers = self.topics[topic] = {}
            self._topic_added(topic)
        subscribers[subscriber] = None

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        subscribers = self.topics.get(topic)
        if subscribers is None:
            return
        subscribers.pop(subscriber, None)
        if not subscribers:
            del self.topics[topic]
            self._topic_removed(topic)

    def subscribers(self, topic: str) -> list[Subscriber]:
        """The local subscribers of ``topic`` in subscription order."""
        return list(self.topics.get(topic, ()))

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        namespace: str | None = None,
        exclude: Subscriber | None = None,
    ) -> Awaitable[None]:
        self.deliver_local(topic, Outgoing.encode(data), namespace, exclude)
        return DONE

    def deliver_local(
        self,
        topic: str,
        outgoing: Outgoing,
        namespace: str | None = None,
        exclude: Subscriber | None = None,
    ) -> None:
        """Hand ``outgoing`` to this process's subscribers of ``topic``."""
        subscribers = self.topics.get(topic)
        if not subscribers:
            return
        # tuple() copies under the GIL, so a publish from another thread never
        # sees the dict change size mid-iteration.
        for subscriber in tuple(subscribers):
            if subscriber is exclude:
                continue
            if namespace is not None:
                own = subscriber.namespace
                if own is not None and own != namespace:
                    continue
            subscriber._deliver(outgoing)

    def replay(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Publishes to ``topic`` after ``last_event_id`` still in history (oldest first).

        Memory keeps no history yet, so this is empty.
        """
        return []

    async def close(self) -> None:
        return None

    # Extension points for backplanes that mirror local topics elsewhere.
    def _topic_added(self, topic: str) -> None:
        pass

    def _topic_removed(self, topic: str) -> None:
        pass


_default: PubSub | None = None
_default_lock = threading.Lock()


def get_default_pubsub() -> PubSub:
    """The process-wide pub/sub: ``RedisPubSub`` when ``H3_PUBSUB_URL`` is set, else memory."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                url = os.environ.get("H3_PUBSUB_URL", "").strip()
                if url and url != "memory://":
                    from .redis import RedisPubSub

                    _default = RedisPubSub(url)
                else:
                    _default = MemoryPubSub()
    return _default


def set_default_pubsub(pubsub: PubSub | None) -> None:
    """Replace the process-wide pub/sub (``None`` resets it to the env/memory default)."""
    global _default
    with _default_lock:
        _default = pubsub


def publish(topic: str, data: Any, *, namespace: str | None = None) -> Awaitable[None]:
    """Publish ``data`` to every subscriber of ``topic`` through the default pub/sub.

    Reaches WebSocket peers of every handler that uses the default pub/sub and
    event streams subscribed to ``topic``. Safe to call from any thread.
    """
    return get_default_pubsub().publish(topic, data, namespace=namespace)
