"""Topics and the backplane that carries publishes between subscribers.

A ``PubSub`` keeps, for each topic, the local subscribers (WebSocket peers and
event streams) in subscription order, and delivers a publish to them. The
default ``MemoryPubSub`` stops at the process boundary; ``RedisPubSub`` (in
``h3_fastapi.redis``) also forwards publishes to every other process.

A publish is encoded once (``Outgoing``) and the same object is handed to every
subscriber, so a broadcast to 1,000 peers serialises the data once.

With ``history=N`` a pub/sub keeps the last N publishes of each topic and
stamps each with an event id (``Outgoing.id``, ``"<milliseconds>-<sequence>"``
like a Redis stream id), so an event stream that reconnects with
``Last-Event-ID`` can be given what it missed (``replay``/``subscribe_from``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Generator, Sequence
from typing import Any, Protocol, runtime_checkable

from ._frames import encode_frame
from ._hooks import logger
from ._serialize import to_text, to_wire
from ._sse import format_event
from ._threadpool import hook_thread_loop

__all__ = [
    "Backplane",
    "BackplaneReceiver",
    "MemoryPubSub",
    "Outgoing",
    "PubSub",
    "Subscriber",
    "check_history",
    "current_default",
    "get_default_pubsub",
    "parse_event_id",
    "publish",
    "pubsub_from_url",
    "set_default_pubsub",
]


class Outgoing:
    """Data encoded once for every receiver: a WebSocket frame or an SSE ``data``."""

    __slots__ = ("_event", "_frame", "_message", "data", "id", "size")

    def __init__(self, data: str | bytes, id: str | None = None) -> None:
        self.data = data
        self.size = len(data)
        # Event id given by a pub/sub that keeps history (SSE replay), else None.
        self.id = id
        self._message: dict[str, Any] | None = None
        self._event: bytes | None = None
        self._frame: bytes | None = None

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
    def event(self) -> bytes:
        """The SSE event (``id:`` and ``data:`` lines), encoded once for every stream."""
        event = self._event
        if event is None:
            text = format_event(to_text(self.data), self.id)
            event = self._event = text.encode("utf-8", "replace")
        return event

    @property
    def frame(self) -> bytes:
        """The WebSocket frame, encoded once for every peer (``h3.websocket.frames``)."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode_frame(self.data)
        return frame

    @property
    def message(self) -> dict[str, Any]:
        """The ASGI ``websocket.send`` event, built once and shared."""
        message = self._message
        if message is None:
            data = self.data
            if data.__class__ is str or not isinstance(data, bytes):
                message = {"type": "websocket.send", "text": data}
            else:
                message = {"type": "websocket.send", "bytes": data}
            self._message = message
        return message


class Subscriber(Protocol):
    """Anything that can receive publishes: a ``Peer`` or an ``EventStream``.

    ``namespace`` is the peer's namespace, or ``None`` for a subscriber that
    receives publishes from every namespace (event streams).
    """

    @property
    def namespace(self) -> str | None: ...

    def deliver(self, outgoing: Outgoing) -> None:
        """Take one publish; called from any thread, must not block or raise."""


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

    def replay(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Publishes to ``topic`` after ``last_event_id`` this pub/sub can give at once.

        Empty for a pub/sub whose history is elsewhere (read by ``subscribe_from``).
        """
        ...

    def subscribe_from(
        self, topic: str, subscriber: Subscriber, last_event_id: str | None
    ) -> Awaitable[Any]:
        """``subscribe``, first delivering what was missed after ``last_event_id``.

        Awaiting the result gives a ``Recovery`` (``None`` when there was
        nothing to recover from). A subscriber with a ``recovered(recovery)``
        method is told in order, between the missed and the live publishes.
        """
        ...

    async def close(self) -> None:
        """Release connections; subscribers stay registered locally."""


class BackplaneReceiver(Protocol):
    """What a ``Backplane`` reports to (``BackplanePubSub`` implements it).

    Every method is called on the event loop the backplane was started on.
    """

    def received(self, topic: str, envelope: bytes, event_id: str | None) -> None:
        """An envelope published to ``topic`` (by any process, this one included)."""

    def subscribed(self, topic: str) -> None:
        """The server confirmed the subscription to ``topic`` on the current connection."""

    def connection_made(self) -> None:
        """The listening connection is up (again); every topic is being subscribed."""

    def connection_lost(self, error: Exception) -> None:
        """The listening connection failed; the backplane reconnects by itself."""

    def malformed(self, where: str, error: Exception) -> None:
        """Data on the wire that is not an envelope: skipped, with one warning in all."""


@runtime_checkable
class Backplane(Protocol):
    """The wire between processes under a ``BackplanePubSub``: the seam for new transports.

    A backplane moves opaque envelopes (bytes) per topic; local fan-out,
    ordering, origins, outage reports and SSE catch-up are done above it once
    for every transport. ``history`` is how many publishes per topic it keeps
    for replay (0: none, and ``publish`` returns no event ids).

    ``start`` is called once on the event loop that will run the backplane and
    must return at once (connect in a task, reconnect after failures, and
    subscribe every wanted topic again on each new connection).
    ``subscribe``/``unsubscribe`` are called on that loop, must not block, and
    are idempotent. ``publish`` sends a batch in order and returns, per
    envelope, its event id (with history), ``None``, or the exception that
    envelope met; it raises when the whole batch failed.
    """

    history: int

    def start(self, receiver: BackplaneReceiver) -> None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    async def publish(
        self, batch: Sequence[tuple[str, bytes]]
    ) -> Sequence[str | Exception | None]: ...

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        """``(event id, envelope)`` kept for ``topic`` after ``after``, oldest first."""
        ...

    async def close(self) -> None: ...


# Redis stream ids are two unsigned 64-bit numbers: nothing larger is an id.
_MAX_ID_PART = 2**64 - 1
_EVENT_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def parse_event_id(event_id: str | None) -> tuple[int, int] | None:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; ``None`` for anything else.

    Event ids from a pub/sub with history (memory or a Redis stream) have this
    form and sort by the tuple. A bare number is taken as ``(number, 0)``.
    Only ASCII digits, and each part within a Redis stream id's range
    (0 to 2**64 - 1): anything else from a client is treated as no id.
    """
    if not event_id or len(event_id) > 64:
        return None
    match = _EVENT_ID.fullmatch(event_id.strip())
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms > _MAX_ID_PART or seq > _MAX_ID_PART:
        return None
    return ms, seq


def check_history(history: int, history_ttl: float | None) -> None:
    """Refuse history options no pub/sub can honour (every pub/sub takes both)."""
    if history < 0:
        raise ValueError("history must be >= 0")
    if history_ttl is not None and not history_ttl > 0:
        raise ValueError("history_ttl must be > 0 seconds (or None: kept)")


# With ``history_ttl``, idle topics' history is looked for once per this many publishes.
_EXPIRE_EVERY = 256


class MemoryPubSub:
    """In-process pub/sub: no server, nothing leaves the process.

    Safe to publish from any thread: delivery hops to each subscriber's loop.
    With ``history=N`` the last N publishes of each topic are kept, each with
    an event id, for ``replay``/``subscribe_from`` (SSE ``Last-Event-ID``).
    With ``history_ttl`` (seconds) the history of a topic with no publish for
    that long is dropped, so finished resumable streams and dead topics do
    not stay in memory (``None``: kept, at most N per topic).
    """

    def __init__(self, *, history: int = 0, history_ttl: float | None = None) -> None:
        check_history(history, history_ttl)
        self.topics: dict[str, dict[Subscriber, None]] = {}
        self.history = history
        self.history_ttl = history_ttl
        self._recorded = 0
        # topic -> (parsed id, publish) oldest first, at most ``history`` long.
        self._history: dict[str, deque[tuple[tuple[int, int], Outgoing]]] = {}
        self._history_lock = threading.RLock()
        self._last_id = (0, 0)

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
        outgoing = Outgoing.encode(data)
        if self.history:
            # Under the lock so ``subscribe_from`` never sees a publish both
            # in history and live, or in neither.
            with self._history_lock:
                outgoing = self._record(topic, outgoing)
                self.deliver_local(topic, outgoing, namespace, exclude)
        else:
            self.deliver_local(topic, outgoing, namespace, exclude)
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
        # sees the dict change size mid-iteration. The copy is taken now: the
        # subscribers are those of the moment of the publish, also when delivery
        # hops onto the loop below (a peer that subscribes in between, in another
        # hook's thread, must not get a message published before it subscribed,
        # ahead of what it sent itself before subscribing).
        receivers = tuple(subscribers)
        loop = hook_thread_loop()
        if loop is not None and not self.history:
            # Called from a ``def`` hook's thread: one hop onto the loop for all the
            # subscribers, not one each (1,000 peers: 1,000 ``call_soon_threadsafe``).
            # With history the caller holds the history lock across delivery: no hop.
            loop.call_soon_threadsafe(self._deliver, receivers, topic, outgoing, namespace, exclude)
            return
        self._deliver(receivers, topic, outgoing, namespace, exclude)

    @staticmethod
    def _deliver(
        receivers: tuple[Subscriber, ...],
        topic: str,
        outgoing: Outgoing,
        namespace: str | None,
        exclude: Subscriber | None,
    ) -> None:
        for subscriber in receivers:
            if subscriber is exclude:
                continue
            if namespace is not None:
                own = subscriber.namespace
                if own is not None and own != namespace:
                    continue
            try:
                subscriber.deliver(outgoing)
            except Exception:  # one subscriber's bug must not starve the others
                logger.exception("h3_fastapi: a subscriber of %r failed to take a publish", topic)

    def replay(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Publishes to ``topic`` after ``last_event_id``, when that id is still in history.

        Empty without ``history``, without an id, for an id this pub/sub did
        not make (not ``"<ms>-<seq>"``), and for an id no longer kept (the
        client missed more than is kept, or the id is from an earlier process:
        ``subscribe_from`` tells such a subscriber to resync).
        """
        if not self.history or parse_event_id(last_event_id) is None:
            return []
        assert last_event_id is not None
        with self._history_lock:
            missed: list[Outgoing] = self._recover(topic, last_event_id)[0]
            return missed

    def subscribe_from(
        self, topic: str, subscriber: Subscriber, last_event_id: str | None
    ) -> Awaitable[Any]:
        """Subscribe ``subscriber``, first delivering what it missed after ``last_event_id``.

        The missed publishes and then live ones reach the subscriber in order,
        none twice and none lost in between. When ``last_event_id`` is no
        longer in the history, nothing is replayed and the subscriber is told
        to resync (its optional ``recovered(recovery)`` method). The result may
        be awaited for the ``Recovery`` (``None`` without history or id).
        """
        from ._positions import Resolved, tell

        if not self.history or parse_event_id(last_event_id) is None:
            self.subscribe(topic, subscriber)
            return Resolved(None)
        assert last_event_id is not None
        with self._history_lock:
            missed, recovery = self._recover(topic, last_event_id)
            for outgoing in missed:
                subscriber.deliver(outgoing)
            tell(subscriber, recovery)
            self.subscribe(topic, subscriber)
        return Resolved(recovery)

    def _recover(self, topic: str, last_event_id: str) -> Any:
        """``(missed, Recovery)`` from the kept history (caller holds the lock)."""
        from ._positions import recover

        seen = parse_event_id(last_event_id)
        kept = self._history.get(topic) or ()
        read = [outgoing for key, outgoing in kept if seen is not None and key >= seen]
        if not read and kept:
            read = [kept[-1][1]]  # only to name the newest position
        return recover(topic, last_event_id, read)

    async def close(self) -> None:
        return None

    # --- history ----------------------------------------------------------

    def _next_id(self) -> tuple[int, int]:
        """A new event id, greater than every earlier one (caller holds the lock)."""
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = self._last_id
        key = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        self._last_id = key
        return key

    def _record(self, topic: str, outgoing: Outgoing) -> Outgoing:
        """Stamp a copy of ``outgoing`` with a new id and keep it (caller holds the lock)."""
        key = self._next_id()
        stamped = Outgoing(outgoing.data, f"{key[0]}-{key[1]}")
        kept = self._history.get(topic)
        if kept is None:
            kept = self._history[topic] = deque(maxlen=self.history)
        kept.append((key, stamped))
        ttl = self.history_ttl
        if ttl is not None:
            self._recorded += 1
            if self._recorded % _EXPIRE_EVERY == 0:
                self._expire(key[0] - int(ttl * 1000))
        return stamped

    def _expire(self, oldest_ms: int) -> None:
        """Drop the history of topics not published to since ``oldest_ms`` (lock held)."""
        for topic in [t for t, kept in self._history.items() if kept[-1][0][0] < oldest_ms]:
            del self._history[topic]

    # Extension points for backplanes that mirror local topics elsewhere.
    def _topic_added(self, topic: str) -> None:
        pass

    def _topic_removed(self, topic: str) -> None:
        pass


_default: PubSub | None = None
_default_lock = threading.Lock()


def get_default_pubsub() -> PubSub:
    """The process-wide pub/sub: from ``H3_PUBSUB_URL`` when it is set, else memory."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = pubsub_from_url(os.environ.get("H3_PUBSUB_URL", "").strip())
    return _default


def pubsub_from_url(url: str) -> PubSub:
    """The pub/sub a URL names, by scheme (empty or ``memory://``: ``MemoryPubSub``).

    ``redis://``, ``rediss://``, ``unix://``: ``RedisPubSub``;
    ``redis+cluster://``, ``rediss+cluster://``: ``RedisClusterPubSub``;
    ``postgresql://``, ``postgres://``: ``PostgresPubSub``; ``nats://``, ``tls://``:
    ``NatsPubSub``.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if not url or scheme == "memory":
        return MemoryPubSub()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisPubSub

        return RedisPubSub(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from .redis_cluster import RedisClusterPubSub

        return RedisClusterPubSub(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresPubSub

        return PostgresPubSub(url)
    if scheme in ("nats", "tls"):
        from .nats import NatsPubSub

        return NatsPubSub(url)
    raise ValueError(f"H3_PUBSUB_URL: no pub/sub for the scheme {scheme or url[:20]!r}")


def current_default() -> PubSub | None:
    """The process-wide pub/sub if one was created (for closing it at shutdown)."""
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
