"""Redis backplane: ``RedisPubSub`` carries publishes between processes and hosts.

One publish, step by step:

1. ``publish(topic, data)`` encodes ``data`` once and hands it to this
   process's subscribers at once (``deliver_local``), without waiting on Redis.
2. The publish is queued for this process's one publisher task. The queue is
   FIFO, so every receiver sees one publisher's messages in the order they were
   published. The task PUBLISHes an envelope on the channel ``prefix + topic``:
   the origin (a random id per ``RedisPubSub``), the namespace, a text/binary
   flag and the payload.
3. Each process holds one subscriber connection, SUBSCRIBEd to the channels of
   the topics that have local subscribers (SUBSCRIBE when a topic gets its first
   local subscriber, UNSUBSCRIBE when its last one leaves). A message from
   another origin goes to ``deliver_local``; the process's own echo is dropped,
   so nothing is delivered twice.

With ``history=N``, step 2 is one Lua call that XADDs the envelope to a Redis
stream (``MAXLEN ~ N``, key ``prefix + topic``) and PUBLISHes it with the stream
id, which becomes the event id (``Outgoing.id``, SSE ``id:``). The publishing
process then delivers locally with that id, one round trip after ``publish``.

When Redis cannot be reached, connections to clients stay open and publishes
keep reaching this process's subscribers; what would have crossed Redis is
dropped, not queued (at-most-once). The error is logged once per outage, both
connections come back with backoff, and every topic is subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._hooks import logger
from .pubsub import DONE, MemoryPubSub, Outgoing, Subscriber, parse_event_id

__all__ = ["INSTALL_HINT", "RedisPubSub"]

INSTALL_HINT = "RedisPubSub needs the Redis client: pip install 'h3-fastapi[redis]'"

# XADD + PUBLISH in one step, so the stream order is the publish order and
# every receiver learns the stream id. KEYS[1] stream; ARGV: maxlen, channel,
# envelope (header "\n" payload).
_HISTORY_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[3])
redis.call('PUBLISH', ARGV[2], id .. '\\n' .. ARGV[3])
return id
"""

# Publishes sent to Redis in one pipeline at most.
_BATCH = 512
# Channels named in one SUBSCRIBE/UNSUBSCRIBE command at most.
_CHUNK = 1000


def _load_redis() -> Any:
    """``redis.asyncio`` or an ``ImportError`` that says how to install it."""
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return redis_asyncio


def _redacted(url: str) -> str:
    """``url`` without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def _worker_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The app's loop seen from an AnyIO worker thread (a plain ``def`` endpoint)."""
    try:
        from anyio import from_thread

        loop: asyncio.AbstractEventLoop = from_thread.run_sync(asyncio.get_running_loop)
        return loop
    except Exception:
        return None


class _Publish:
    """One queued publish; awaiting it waits until the PUBLISH was sent (or given up).

    Safe to await from any thread and any loop.
    """

    __slots__ = ("_done", "_waiters", "exclude", "namespace", "outgoing", "topic")

    def __init__(
        self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None
    ) -> None:
        self.topic = topic
        self.outgoing = outgoing
        self.namespace = namespace
        self.exclude = exclude
        self._done = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None

    def _finish(self) -> None:
        # ``_done`` first, ``_waiters`` read second; ``__await__`` does the
        # opposite, so a waiter is always resolved by one side (GIL ordering).
        self._done = True
        waiters = self._waiters
        if waiters:
            for loop, future in waiters:
                loop.call_soon_threadsafe(_resolve, future)

    def __await__(self) -> Generator[Any, None, None]:
        if self._done:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append((loop, future))
        if self._done:
            _resolve(future)
        yield from future

    def __repr__(self) -> str:
        return f"<publish {self.topic!r} {'sent' if self._done else 'queued'}>"


class _HistoryRead:
    """A queued XREVRANGE: the publishes to ``topic`` after ``after``."""

    __slots__ = ("after", "future", "topic")

    def __init__(self, topic: str, after: str, future: asyncio.Future[list[Outgoing]]) -> None:
        self.topic = topic
        self.after = after
        self.future = future


class _CatchUp:
    """Stands in for a subscriber while its missed events are read from Redis.

    Live publishes are held here and handed over after the missed ones.
    """

    __slots__ = ("buffer", "subscriber")

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.buffer: deque[Outgoing] = deque()

    @property
    def namespace(self) -> str | None:
        return self.subscriber.namespace

    def _deliver(self, outgoing: Outgoing) -> None:
        self.buffer.append(outgoing)


class _ThreadFuture:
    """Awaitable view, for any loop, of work running on the backplane's loop."""

    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.wrap_future(self._future).__await__()


class RedisPubSub(MemoryPubSub):
    """Pub/sub across processes and hosts through Redis PUBLISH/SUBSCRIBE.

    ``url`` is a ``redis://`` (or ``rediss://``, ``unix://``) URL. Topics map to
    channels ``prefix + topic``; give unrelated apps sharing a Redis different
    prefixes. ``history=N`` keeps the last N publishes of each topic in a Redis
    stream for SSE ``Last-Event-ID`` replay (``subscribe_from``).

    ``on_error(exc)`` (sync or async) is called when an outage begins, at the
    moment the error is logged: once per outage, not once per message.
    ``reconnect_backoff`` is the first and the longest wait between reconnect
    attempts (seconds, doubling with jitter). A Redis that stops answering
    without closing the connection is noticed within two to three
    ``health_check_interval``. ``command_timeout`` bounds one
    publish round trip; ``max_pending`` bounds the publishes waiting for Redis.

    Each process opens one connection for subscriptions and one for
    publishing, on the event loop that first uses the pub/sub. Nothing
    connects until then, so the object can be built at import time; without
    the ``redis`` package installed it raises ``ImportError`` here.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "h3:",
        history: int = 0,
        on_error: Callable[[Exception], Any] | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 2.0),
        health_check_interval: float = 15.0,
        command_timeout: float = 5.0,
        max_pending: int = 10_000,
    ) -> None:
        super().__init__(history=history)
        self._redis = _load_redis()
        self.url = url
        self.prefix = prefix
        self.on_error = on_error
        self.reconnect_backoff = reconnect_backoff
        self.health_check_interval = health_check_interval
        self.command_timeout = command_timeout
        self.max_pending = max_pending
        #: Random id of this pub/sub in this process; its own messages coming
        #: back from Redis are skipped. A forked child gets a new one.
        self.origin = uuid.uuid4().hex
        self._origin_bytes = self.origin.encode()
        self._bind_lock = threading.Lock()
        _instances.add(self)
        # close() was called on this loop: do not start again on it.
        self._closed_loop: asyncio.AbstractEventLoop | None = None
        # Subscribers whose missed events are being read (see subscribe_from).
        self._catch_ups: dict[tuple[str, Subscriber], _CatchUp] = {}
        self._reset()

    def _reset(self) -> None:
        """Forget the loop, tasks and connections (before start and after close)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Future[Any]] = set()
        self._sub_client: Any = None
        self._pub_client: Any = None
        self._queue: deque[_Publish | _HistoryRead] = deque()
        self._wake: asyncio.Event | None = None
        self._dirty: set[str] = set()
        self._dirty_event: asyncio.Event | None = None
        # Topics SUBSCRIBEd on the current connection / confirmed by Redis.
        self._on_server: set[str] = set()
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._channel_topics: dict[bytes, str] = {}
        self._connected = False
        self._sub_down = False
        self._pub_retry_at = 0.0
        self._pub_delay = self.reconnect_backoff[0]
        self._pub_stale = False
        self._failing: set[str] = set()
        self._last_heard = 0.0
        self._headers: dict[tuple[str | None, bool], bytes] = {}
        self._parsed: dict[bytes, tuple[bytes, str | None, bool]] = {}
        self._bad_messages = 0

    # --- public ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        """``True`` while the subscriber connection to Redis is up."""
        return self._connected

    @property
    def confirmed_topics(self) -> frozenset[str]:
        """Topics whose channel Redis has confirmed subscribed on the current connection."""
        return frozenset(self._confirmed)

    async def wait_subscribed(self, topic: str) -> None:
        """Wait until Redis has confirmed this process's subscription to ``topic``.

        From then on publishes from other processes reach the local
        subscribers. Call it on the loop that serves the app (a hook, an
        endpoint); it waits through outages, so bound it with a timeout.
        """
        if topic in self._confirmed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(topic, []).append(future)
        try:
            await future
        finally:
            waiters = self._waiters.get(topic)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[topic]

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        if (topic, subscriber) in self._catch_ups:
            return
        super().subscribe(topic, subscriber)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        catch_up = self._catch_ups.pop((topic, subscriber), None)
        if catch_up is not None:
            super().unsubscribe(topic, catch_up)
            return
        super().unsubscribe(topic, subscriber)

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        namespace: str | None = None,
        exclude: Subscriber | None = None,
    ) -> Awaitable[None]:
        """Deliver to this process's subscribers now, and to every other process through Redis.

        Safe from any thread. Awaiting the result waits until the PUBLISH was
        sent; it never raises for Redis failures (they are logged and reported
        to ``on_error``). With ``history`` the local delivery waits for the
        stream id (one round trip), except while Redis is unreachable.
        """
        outgoing = Outgoing.encode(data)
        if not self.history:
            self.deliver_local(topic, outgoing, namespace, exclude)
        item = _Publish(topic, outgoing, namespace, exclude)
        if self._submit(item):
            return item
        if self.history:
            self.deliver_local(topic, outgoing, namespace, exclude)
        return DONE

    def replay(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Always empty: the history is in Redis and is read asynchronously.

        Use ``subscribe_from`` (or ``await fetch_history(...)``) instead.
        """
        return []

    async def fetch_history(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Publishes to ``topic`` after ``last_event_id`` in the Redis stream, oldest first.

        At most ``history`` of them; empty without history, for an id that is
        not a stream id, or while Redis is unreachable.
        """
        if not self.history or parse_event_id(last_event_id) is None or last_event_id is None:
            return []
        loop = self._loop_for_call()
        if loop is None or self._sub_down:
            return []
        if loop is not asyncio.get_running_loop():
            future = asyncio.run_coroutine_threadsafe(
                self.fetch_history(topic, last_event_id), loop
            )
            return await asyncio.wrap_future(future)
        result: asyncio.Future[list[Outgoing]] = loop.create_future()
        self._enqueue(_HistoryRead(topic, last_event_id.strip(), result))
        return await result

    def subscribe_from(
        self, topic: str, subscriber: Subscriber, last_event_id: str | None
    ) -> Awaitable[None]:
        """Subscribe ``subscriber``, first delivering what it missed after ``last_event_id``.

        The subscription starts at once; live publishes are held back until
        the missed ones have been read from the Redis stream and delivered,
        then follow in order, none twice. Awaiting the result waits for that.
        """
        if not self.history or parse_event_id(last_event_id) is None:
            self.subscribe(topic, subscriber)
            return DONE
        loop = self._loop_for_call()
        if loop is None or (topic, subscriber) in self._catch_ups:
            self.subscribe(topic, subscriber)
            return DONE
        assert last_event_id is not None
        catch_up = _CatchUp(subscriber)
        self._catch_ups[(topic, subscriber)] = catch_up
        MemoryPubSub.subscribe(self, topic, catch_up)
        job = self._catch_up(topic, catch_up, last_event_id)
        if threading.get_ident() == self._loop_thread:
            return loop.create_task(job)
        return _ThreadFuture(asyncio.run_coroutine_threadsafe(job, loop))

    async def close(self) -> None:
        """Close both Redis connections; local subscribers stay registered.

        Publishes after ``close`` only reach this process, until the pub/sub
        is used again from a new event loop (a restarted server).
        """
        loop = self._loop
        if loop is None:
            return
        running = asyncio.get_running_loop()
        if loop is not running:
            if loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.close(), loop))
            else:
                with self._bind_lock:
                    self._reset()
            return
        with self._bind_lock:
            self._closed_loop = loop
            self._loop = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._give_up(list(self._queue))
        self._queue.clear()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(ConnectionError("RedisPubSub was closed"))
        for client in (self._sub_client, self._pub_client):
            if client is not None:
                try:
                    await client.aclose()
                except Exception as exc:
                    logger.debug("h3_fastapi: closing a Redis client failed: %r", exc)
        with self._bind_lock:
            self._reset()

    # --- loop binding -----------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``): new origin, no inherited connections."""
        self.origin = uuid.uuid4().hex
        self._origin_bytes = self.origin.encode()
        self._bind_lock = threading.Lock()
        self._closed_loop = None
        self._catch_ups.clear()
        self._reset()

    def _loop_for_call(self) -> asyncio.AbstractEventLoop | None:
        """The loop the backplane runs on; the first call from a loop starts it there."""
        loop = self._loop
        if loop is not None and loop.is_running():
            return loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = _worker_thread_loop()
        if running is None or running is self._closed_loop:
            return None
        with self._bind_lock:
            if self._loop is running:
                return running
            if self._loop is not None:  # the old loop has stopped: start over here
                self._reset()
            self._loop = running
        try:
            here = asyncio.get_running_loop() is running
        except RuntimeError:
            here = False
        if here:
            self._start()
        else:
            running.call_soon_threadsafe(self._start)
        return running

    def _start(self) -> None:
        """Open the backplane on the current loop: one subscriber, one publisher task."""
        redis_asyncio = self._redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._dirty_event = asyncio.Event()
        self._dirty = set(self.topics)
        common: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": self.command_timeout,
            "socket_keepalive": True,
        }
        tag = self.origin[:12]
        self._sub_client = redis_asyncio.Redis.from_url(
            self.url, socket_timeout=None, client_name=f"h3-sub-{tag}", **common
        )
        self._pub_client = self._publisher_client()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscriber_loop(), name="h3-redis-subscriber"),
            loop.create_task(self._publisher_loop(), name="h3-redis-publisher"),
        ]

    def _publisher_client(self) -> Any:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return self._redis.Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=self.command_timeout,
            socket_connect_timeout=self.command_timeout,
            socket_keepalive=True,
            client_name=f"h3-pub-{self.origin[:12]}",
        )

    def _submit(self, item: _Publish) -> bool:
        loop = self._loop_for_call()
        if loop is None:
            return False
        if threading.get_ident() == self._loop_thread:
            self._enqueue(item)
        else:
            loop.call_soon_threadsafe(self._enqueue, item)
        return True

    # --- subscriptions ------------------------------------------------------

    def _topic_added(self, topic: str) -> None:
        if self._loop_for_call() is not None:
            self._changed(topic)

    def _topic_removed(self, topic: str) -> None:
        if self._loop is not None:
            self._changed(topic)

    def _changed(self, topic: str) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._mark_dirty(topic)
        else:
            loop.call_soon_threadsafe(self._mark_dirty, topic)

    def _mark_dirty(self, topic: str) -> None:
        self._dirty.add(topic)
        if self._dirty_event is not None:
            self._dirty_event.set()

    def _channel(self, topic: str) -> bytes:
        channel = (self.prefix + topic).encode("utf-8", "surrogatepass")
        self._channel_topics[channel] = topic
        return channel

    async def _subscriber_loop(self) -> None:
        """Keep one subscriber connection up; after a failure reconnect with backoff."""
        low, high = self.reconnect_backoff
        delay = low
        while True:
            pubsub = None
            try:
                pubsub = self._sub_client.pubsub()
                await pubsub.connect()
                self._session_started()
                delay = low
                await self._session(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._session_ended(exc)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    def _session_started(self) -> None:
        loop = asyncio.get_running_loop()
        self._connected = True
        self._last_heard = loop.time()
        self._on_server.clear()
        self._confirmed.clear()
        self._dirty = set(self.topics)
        assert self._dirty_event is not None
        self._dirty_event.set()
        if self._sub_down:
            self._sub_down = False
            # Redis is back: let the publisher try at once, on a new connection.
            self._pub_retry_at = 0.0
            self._pub_delay = self.reconnect_backoff[0]
            self._recovered("publish")
        self._recovered("subscribe")

    def _session_ended(self, exc: Exception) -> None:
        self._connected = False
        self._on_server.clear()
        self._confirmed.clear()
        if not self._sub_down:
            self._sub_down = True
            self._pub_stale = True
        self._outage("subscribe", exc)

    async def _session(self, pubsub: Any) -> None:
        """Read messages and send (un)subscriptions on one connection until it fails."""
        reader = asyncio.ensure_future(self._read_messages(pubsub))
        writer = asyncio.ensure_future(self._write_subscriptions(pubsub))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.wait({reader, writer})
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        raise ConnectionError("Redis subscriber connection ended")

    async def _write_subscriptions(self, pubsub: Any) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE for changed topics; PING when it has been quiet."""
        event = self._dirty_event
        assert event is not None
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        last_ping = loop.time()
        while True:
            now = loop.time()
            if now - self._last_heard > 2 * interval:
                raise ConnectionError(f"Redis sent nothing for {2 * interval:g}s (PING unanswered)")
            if now - last_ping >= interval:
                await pubsub.ping()
                last_ping = now
            if not self._dirty:
                event.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), interval - (now - last_ping))
                continue
            dirty, self._dirty = self._dirty, set()
            on_server = self._on_server
            topics = self.topics
            add = [t for t in dirty if t in topics and t not in on_server]
            drop = [t for t in dirty if t not in topics and t in on_server]
            for chunk in _chunks(add):
                await pubsub.subscribe(*[self._channel(t) for t in chunk])
                on_server.update(chunk)
            for chunk in _chunks(drop):
                await pubsub.unsubscribe(*[self._channel(t) for t in chunk])
                on_server.difference_update(chunk)

    async def _read_messages(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_heard = loop.time()
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._receive(message["channel"], message["data"])
            elif kind == "subscribe":
                self._confirm(message["channel"])
            elif kind == "unsubscribe":
                topic = self._channel_topics.get(message["channel"])
                if topic is not None:
                    self._confirmed.discard(topic)
                    if topic not in self.topics:
                        del self._channel_topics[message["channel"]]

    def _confirm(self, channel: bytes) -> None:
        topic = self._channel_topics.get(channel)
        if topic is None:
            return
        self._confirmed.add(topic)
        for future in self._waiters.pop(topic, ()):
            _resolve(future)

    def _receive(self, channel: bytes, raw: bytes) -> None:
        """A message from Redis: deliver it here unless this process published it."""
        topic = self._channel_topics.get(channel)
        if topic is None:
            return
        try:
            newline = raw.index(b"\n")
            origin, namespace, outgoing = self._decode(raw[newline + 1 :], raw[:newline])
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            self._bad_message(channel, exc)
            return
        if origin == self._origin_bytes:
            return
        self.deliver_local(topic, outgoing, namespace)

    def _bad_message(self, channel: bytes, exc: Exception) -> None:
        self._bad_messages += 1
        log = logger.warning if self._bad_messages == 1 else logger.debug
        log("h3_fastapi: ignored a message on %r that is not an h3 envelope (%r)", channel, exc)

    # --- envelope ---------------------------------------------------------

    def _envelope(self, item: _Publish) -> bytes:
        """``header "\\n" payload``; the header is JSON ``[origin, namespace, binary]``."""
        data = item.outgoing.data
        binary = isinstance(data, bytes)
        key = (item.namespace, binary)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) > 256:
                self._headers.clear()
            header = json.dumps([self.origin, item.namespace, binary]).encode()
            self._headers[key] = header
        payload = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        return header + b"\n" + payload

    def _decode(self, envelope: bytes, event_id: bytes) -> tuple[bytes, str | None, Outgoing]:
        newline = envelope.index(b"\n")
        header = envelope[:newline]
        parsed = self._parsed.get(header)
        if parsed is None:
            origin, namespace, binary = json.loads(header)
            if not isinstance(origin, str) or not isinstance(namespace, (str, type(None))):
                raise TypeError("bad envelope header")
            if len(self._parsed) > 256:
                self._parsed.clear()
            parsed = self._parsed[header] = (origin.encode(), namespace, bool(binary))
        origin_bytes, namespace, binary = parsed
        payload = envelope[newline + 1 :]
        data: str | bytes = payload if binary else payload.decode("utf-8", "surrogatepass")
        return origin_bytes, namespace, Outgoing(data, event_id.decode() or None)

    # --- publishing ---------------------------------------------------------

    def _enqueue(self, item: _Publish | _HistoryRead) -> None:
        if self._loop is None or self._wake is None:
            self._give_up([item])
            return
        queue = self._queue
        if len(queue) >= self.max_pending:
            self._outage(
                "publish", OverflowError(f"more than {self.max_pending} publishes wait for Redis")
            )
            self._give_up([item])
            return
        queue.append(item)
        if not self._wake.is_set():
            self._wake.set()

    async def _publisher_loop(self) -> None:
        """The one publisher of this process: FIFO, pipelined, never retried."""
        queue = self._queue
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), _BATCH))]
            if self._sub_down or loop.time() < self._pub_retry_at:
                self._give_up(batch)  # Redis is known to be down: stay local
                continue
            if self._pub_stale:
                self._pub_stale = False
                old, self._pub_client = self._pub_client, self._publisher_client()
                self._background(_close_quietly(old))
            try:
                results = await self._send(batch)
            except asyncio.CancelledError:
                self._give_up(batch)
                raise
            except Exception as exc:
                self._pub_retry_at = loop.time() + self._pub_delay
                self._pub_delay = min(self._pub_delay * 2, self.reconnect_backoff[1])
                self._pub_stale = True
                self._outage("publish", exc)
                self._give_up(batch)
                continue
            self._pub_delay = self.reconnect_backoff[0]
            self._complete(batch, results)

    async def _send(self, batch: list[_Publish | _HistoryRead]) -> list[Any]:
        client = self._pub_client
        history = self.history
        if len(batch) == 1 and not history:
            item = batch[0]
            assert isinstance(item, _Publish)
            return [
                await client.publish(self._channel_name(item.topic), b"\n" + self._envelope(item))
            ]
        pipe = client.pipeline(transaction=False)
        for item in batch:
            if isinstance(item, _HistoryRead):
                key = self._channel_name(item.topic)
                pipe.xrevrange(key, "+", "(" + item.after, count=history)
            elif history:
                channel = self._channel_name(item.topic)
                pipe.eval(_HISTORY_SCRIPT, 1, channel, history, channel, self._envelope(item))
            else:
                pipe.publish(self._channel_name(item.topic), b"\n" + self._envelope(item))
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _channel_name(self, topic: str) -> bytes:
        return (self.prefix + topic).encode("utf-8", "surrogatepass")

    def _complete(self, batch: list[_Publish | _HistoryRead], results: list[Any]) -> None:
        failure: Exception | None = None
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                failure = result
            if isinstance(item, _HistoryRead):
                if not item.future.done():
                    ok = not isinstance(result, Exception)
                    item.future.set_result(self._parse_history(result) if ok else [])
                continue
            if self.history:
                event_id = None if isinstance(result, Exception) else _text(result)
                outgoing = Outgoing(item.outgoing.data, event_id)
                self.deliver_local(item.topic, outgoing, item.namespace, item.exclude)
            item._finish()
        if failure is not None:
            self._outage("publish", failure)
        else:
            self._recovered("publish")

    def _parse_history(self, entries: Iterable[Any]) -> list[Outgoing]:
        """XREVRANGE entries (newest first) -> publishes, oldest first."""
        found = []
        for entry_id, fields in entries:
            envelope = fields.get(b"m")
            if envelope is None:
                continue
            try:
                _, _, outgoing = self._decode(envelope, entry_id)
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                self._bad_message(b"<history>", exc)
                continue
            found.append(outgoing)
        found.reverse()
        return found

    def _give_up(self, items: list[_Publish | _HistoryRead]) -> None:
        """Redis is unreachable: resolve queued work without it (history: deliver locally)."""
        for item in items:
            if isinstance(item, _HistoryRead):
                if not item.future.done():
                    item.future.set_result([])
                continue
            if self.history:
                self.deliver_local(item.topic, item.outgoing, item.namespace, item.exclude)
            item._finish()

    async def _catch_up(self, topic: str, catch_up: _CatchUp, last_event_id: str) -> None:
        """Read what the subscriber missed, then hand it over with the held-back live ones."""
        task = asyncio.current_task()
        if task is not None:  # keep a reference: nobody may await it
            self._chores.add(task)
        missed: list[Outgoing] = []
        try:
            if not self._sub_down:
                # Subscribed first, so every publish is in the stream read
                # below or arrives live after it (or both: deduplicated by id).
                await asyncio.wait_for(self.wait_subscribed(topic), self.command_timeout)
                missed = await self.fetch_history(topic, last_event_id)
        except asyncio.TimeoutError:
            logger.warning("h3_fastapi: Redis did not confirm %r in time; no replay", topic)
        except Exception as exc:  # closed meanwhile: live events only
            logger.debug("h3_fastapi: no replay for %r: %r", topic, exc)
        finally:
            self._hand_over(topic, catch_up, last_event_id, missed)
            self._chores.discard(task)

    def _hand_over(
        self, topic: str, catch_up: _CatchUp, last_event_id: str, missed: list[Outgoing]
    ) -> None:
        subscriber = catch_up.subscriber
        if self._catch_ups.get((topic, subscriber)) is not catch_up:
            return  # unsubscribed meanwhile
        del self._catch_ups[(topic, subscriber)]
        last = parse_event_id(last_event_id) or (0, 0)
        for outgoing in missed:
            key = parse_event_id(outgoing.id)
            if key is not None and key > last:
                last = key
                subscriber._deliver(outgoing)
        subscribers = self.topics.get(topic)
        if subscribers is not None and catch_up in subscribers:
            del subscribers[catch_up]
            subscribers[subscriber] = None
        buffer = catch_up.buffer
        while buffer:
            outgoing = buffer.popleft()
            key = parse_event_id(outgoing.id)
            if key is None or key > last:
                if key is not None:
                    last = key
                subscriber._deliver(outgoing)

    def _background(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # --- outages ------------------------------------------------------------

    def _outage(self, stage: str, exc: Exception) -> None:
        """A Redis failure: log and report it once per outage, not per message."""
        first = not self._failing
        self._failing.add(stage)
        if not first:
            logger.debug("h3_fastapi: Redis %s still failing: %r", stage, exc)
            return
        logger.error(
            "h3_fastapi: Redis backplane %s unreachable (%s: %s: %s); publishes reach only "
            "this process until it is back",
            _redacted(self.url),
            stage,
            type(exc).__name__,
            exc,
        )
        callback = self.on_error
        if callback is None:
            return
        try:
            result = callback(exc)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                self._background(_report_errors(result))
        except Exception:
            logger.exception("h3_fastapi: RedisPubSub on_error callback raised")

    def _recovered(self, stage: str) -> None:
        if stage not in self._failing:
            return
        self._failing.discard(stage)
        if not self._failing:
            logger.warning(
                "h3_fastapi: Redis backplane %s is back; %d topics subscribed again",
                _redacted(self.url),
                len(self.topics),
            )


_instances: weakref.WeakSet[RedisPubSub] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pubsub in list(_instances):
        pubsub._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(client: Any) -> None:
    try:
        await client.aclose()
    except Exception:
        pass


async def _report_errors(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("h3_fastapi: RedisPubSub on_error callback raised")
