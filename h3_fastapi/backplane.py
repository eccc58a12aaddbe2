"""``BackplanePubSub``: local fan-out composed with a ``Backplane`` between processes.

One publish, step by step:

1. ``publish(topic, data)`` encodes ``data`` once and hands it to this
   process's subscribers at once (the ``MemoryPubSub`` it holds), without
   waiting on the backplane.
2. The envelope (``_envelope.encode``: origin, namespace, payload) is queued
   for this process's one ordered publisher (``_ordered.OrderedPublisher``),
   which sends batches through ``backplane.publish`` in FIFO order, so every
   receiver sees one publisher's messages in publish order.
3. The backplane holds one listening connection per process, subscribed to the
   topics that have local subscribers. What it receives comes back through
   ``received``: envelopes from this process's own origin are dropped (they
   were delivered in step 1), the others go to the local subscribers.

With history, step 2 returns an event id per publish, and the publishing
process delivers locally with that id once it is known (one round trip).
``subscribe_from`` (``_catch_up``) reads the backplane's history and hands it
over before the live publishes, none twice.

When the backplane is unreachable, connections to clients stay open and
publishes keep reaching this process's subscribers; what would have crossed
the backplane is dropped, not queued (at-most-once). Each outage is logged and
given to ``on_error`` once. Malformed data from the backplane is skipped with
one warning. No background task dies silently: a failure is logged, reported
and the task restarted (``supervise``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from . import _envelope
from ._catch_up import CatchUps
from ._compat import resolve, worker_thread_loop
from ._hooks import logger
from ._ops import ops
from ._ordered import OrderedPublisher, Publish
from ._outages import Outages
from .pubsub import DONE, Backplane, MemoryPubSub, Outgoing, Subscriber

__all__ = ["BackplanePubSub"]


class BackplanePubSub:
    """A ``PubSub`` that carries publishes between processes through ``backplane``.

    ``RedisPubSub``, ``RedisClusterPubSub``, ``PostgresPubSub`` and
    ``NatsPubSub`` are this with their backplane; pass any object that
    implements ``Backplane`` to add another transport.

    ``on_error(exc)`` (sync or async) is called when an outage begins, once per
    outage. ``reconnect_backoff`` is the first and longest wait before the
    publisher tries again after a failure. ``command_timeout`` bounds waiting
    for a subscription before an SSE replay. ``max_pending`` bounds the
    publishes waiting for the backplane. ``name`` names the backplane in logs.
    """

    def __init__(
        self,
        backplane: Backplane,
        *,
        on_error: Callable[[Exception], Any] | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 2.0),
        command_timeout: float = 5.0,
        max_pending: int = 10_000,
        name: str = "backplane",
    ) -> None:
        self.backplane = backplane
        self.local = MemoryPubSub()
        #: Hand an ``Outgoing`` to this process's subscribers of a topic (no backplane).
        self.deliver_local = self.local.deliver_local
        self.on_error = on_error
        self.reconnect_backoff = reconnect_backoff
        self.command_timeout = command_timeout
        self.max_pending = max_pending
        self.name = name
        #: Random id of this pub/sub in this process; its own envelopes coming
        #: back from the backplane are skipped. A forked child gets a new one.
        self.origin = uuid.uuid4().hex
        self._bind_lock = threading.Lock()
        # close() was called on this loop: do not start again on it.
        self._closed_loop: asyncio.AbstractEventLoop | None = None
        self._catch_ups = CatchUps(self)
        self._bad_messages = 0
        _instances.add(self)
        self._reset()

    def _reset(self) -> None:
        """Forget the loop and its state (before start and after close)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._publisher: OrderedPublisher | None = None
        self._connected = False
        self._down = False
        self.outages = Outages(self)
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    # --- the PubSub interface -------------------------------------------------

    @property
    def history(self) -> int:
        return self.backplane.history

    @property
    def topics(self) -> dict[str, dict[Subscriber, None]]:
        return self.local.topics

    def subscribers(self, topic: str) -> list[Subscriber]:
        """The local subscribers of ``topic`` in subscription order."""
        return self.local.subscribers(topic)

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        if self._catch_ups.holds(topic, subscriber):
            return
        new = topic not in self.local.topics
        self.local.subscribe(topic, subscriber)
        if new and self.bind_loop() is not None:
            self._on_loop(self._topic_changed, topic)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        stand_in = self._catch_ups.drop(topic, subscriber)
        self.local.unsubscribe(topic, subscriber if stand_in is None else stand_in)
        if topic not in self.local.topics and self._loop is not None:
            self._on_loop(self._topic_changed, topic)

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        namespace: str | None = None,
        exclude: Subscriber | None = None,
    ) -> Awaitable[None]:
        """Deliver to this process's subscribers now, and to every other process.

        Safe from any thread. Awaiting the result waits until the backplane
        took the publish; it never raises for backplane failures (they are
        logged and reported to ``on_error``). With history the local delivery
        waits for the event id (one round trip), except during an outage.
        """
        outgoing = Outgoing.encode(data)
        if not self.history:
            self.local.deliver_local(topic, outgoing, namespace, exclude)
        if self.bind_loop() is not None:
            item = Publish(topic, outgoing, namespace, exclude)
            if ops.on:
                ops.publishing(item)
            self._on_loop(self.enqueue, item)
            return item
        if self.history:
            self.local.deliver_local(topic, outgoing, namespace, exclude)
        return DONE

    def replay(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Always empty: the history is on the backplane, read by ``subscribe_from``."""
        return []

    async def fetch_history(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        """Publishes to ``topic`` after ``last_event_id`` in the backplane's history.

        Oldest first; empty without history, for an id that is not an event
        id, or while the backplane is unreachable.
        """
        return await self._catch_ups.fetch(topic, last_event_id)

    def subscribe_from(
        self, topic: str, subscriber: Subscriber, last_event_id: str | None
    ) -> Awaitable[Any]:
        """Subscribe ``subscriber``, first delivering what it missed after ``last_event_id``.

        The subscription starts at once; live publishes are held back until
        the missed ones have been read from the backplane and delivered, then
        follow in order, none twice. When ``last_event_id`` is no longer in
        the history (trimmed, flushed), nothing is replayed and the subscriber
        is told to resync. Awaiting the result gives the ``Recovery``.
        """
        return self._catch_ups.start(topic, subscriber, last_event_id)

    async def close(self) -> None:
        """Close the backplane's connections; local subscribers stay registered.

        Publishes after ``close`` only reach this process, until the pub/sub
        is used again from a new event loop (a restarted server).
        """
        loop = self._loop
        if loop is None:
            return
        if loop is not asyncio.get_running_loop():
            if loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.close(), loop))
            else:
                with self._bind_lock:
                    self._reset()
            return
        with self._bind_lock:
            self._closed_loop = loop
            self._loop = None
        publisher = self._publisher
        if publisher is not None:
            await publisher.stop()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(ConnectionError(f"{type(self).__name__} was closed"))
        try:
            await self.backplane.close()
        except Exception as exc:
            logger.debug("h3_fastapi: closing the %s failed: %r", self.name, exc)
        with self._bind_lock:
            self._reset()

    # --- state ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """``True`` while the backplane's listening connection is up."""
        return self._connected

    @property
    def is_down(self) -> bool:
        """``True`` while the backplane is known to be unreachable (publishes stay local)."""
        return self._down

    def on_loop_thread(self) -> bool:
        """``True`` when called on the thread of the loop the backplane runs on."""
        return threading.get_ident() == self._loop_thread

    @property
    def confirmed_topics(self) -> frozenset[str]:
        """Topics the backplane confirmed subscribed on its current connection."""
        return frozenset(self._confirmed)

    async def wait_subscribed(self, topic: str) -> None:
        """Wait until the backplane has confirmed this process's subscription to ``topic``.

        From then on publishes from other processes reach the local
        subscribers. Call it on the loop that serves the app; it waits through
        outages, so bound it with a timeout.
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

    # --- BackplaneReceiver: called by the backplane on the loop -----------------

    def received(self, topic: str, envelope: bytes, event_id: str | None) -> None:
        try:
            decoded = _envelope.decode(envelope)
        except _envelope.MalformedEnvelope as exc:
            self.malformed(topic, exc)
            return
        if decoded.origin == self.origin:
            return
        if decoded.extensions is not None and ops.on:  # a trace context (_ops.py)
            outgoing = Outgoing(decoded.data, event_id)
            ops.delivered(self, topic, outgoing, decoded.namespace, decoded.extensions)
            return
        self.deliver_local(topic, Outgoing(decoded.data, event_id), decoded.namespace)

    def subscribed(self, topic: str) -> None:
        if topic not in self.local.topics:
            return
        self._confirmed.add(topic)
        for future in self._waiters.pop(topic, ()):
            resolve(future)

    def connection_made(self) -> None:
        self._connected = True
        if ops.on:
            ops.backplane_up(self)
        self._confirmed.clear()
        if self._down:
            self._down = False
            # Back: let the publisher try at once.
            if self._publisher is not None:
                self._publisher.retry_now()
            self.outages.ended("publish")
        self.outages.ended("subscribe")

    def connection_lost(self, error: Exception) -> None:
        self._connected = False
        if ops.on:
            ops.backplane_down(self)
        self._confirmed.clear()
        self._down = True
        self.outages.failed("subscribe", error)

    def malformed(self, where: str, exc: Exception) -> None:
        """Data on the backplane that is not an envelope: one warning, then debug lines."""
        self._bad_messages += 1
        log = logger.warning if self._bad_messages == 1 else logger.debug
        log("h3_fastapi: ignored data on %r that is not an h3 envelope (%s)", where, exc)

    # --- loop binding -----------------------------------------------------------

    def bind_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the backplane runs on; the first call from a loop starts it there.

        ``None`` when called outside any loop (or on a loop it was closed on).
        """
        loop = self._loop
        if loop is not None and loop.is_running():
            return loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = worker_thread_loop()
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

    def _on_loop(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function(*args)`` on the backplane's loop: now if on it, else queued FIFO."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            function(*args)
        else:
            loop.call_soon_threadsafe(function, *args)

    def _start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._publisher = OrderedPublisher(self)
        self.backplane.start(self)
        for topic in list(self.local.topics):
            self.backplane.subscribe(topic)

    def _topic_changed(self, topic: str) -> None:
        if self._loop is None:
            return
        if topic in self.local.topics:
            self.backplane.subscribe(topic)
        else:
            self._confirmed.discard(topic)
            self.backplane.unsubscribe(topic)

    def enqueue(self, item: Any) -> None:
        """Queue a publish or history read for the ordered publisher (on the loop)."""
        publisher = self._publisher
        if publisher is None:
            item.give_up(self)
        else:
            publisher.enqueue(item)

    def after_fork(self) -> None:  # called by os.register_at_fork
        """In a forked child (gunicorn ``--preload``): new origin, no inherited connections."""
        self.origin = uuid.uuid4().hex
        self._bind_lock = threading.Lock()
        self._closed_loop = None
        self._catch_ups = CatchUps(self)
        self._reset()


_instances: weakref.WeakSet[BackplanePubSub] = weakref.WeakSet()


def after_fork_in_child() -> None:
    for pubsub in list(_instances):
        pubsub.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
