"""The one ordered publisher of a ``BackplanePubSub`` in a process.

Publishes (and history reads, which must see every earlier publish of this
process) wait in one FIFO queue; one task sends them to the backplane in
batches, in order, never retried. While the backplane is known to be down the
queue is drained locally (at-most-once across processes). The task is
supervised: a failure it did not expect is logged, reported to ``on_error``,
the batch in hand resolved, and the task started again, so a publish never
hangs on a dead task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from . import _envelope
from ._compat import resolve, spawn
from ._hooks import logger
from ._ops import ops
from ._supervise import supervise
from .pubsub import Outgoing, Subscriber

if TYPE_CHECKING:
    from .backplane import BackplanePubSub

__all__ = ["HistoryRead", "OrderedPublisher", "Publish"]

# Envelopes handed to ``backplane.publish`` in one call at most.
BATCH = 512


class Publish:
    """One queued publish; awaiting it waits until the backplane took it (or it was given up).

    Safe to await from any thread and any loop.
    """

    __slots__ = (
        "_done",
        "_waiters",
        "exclude",
        "extensions",
        "namespace",
        "outgoing",
        "started",
        "topic",
    )

    def __init__(
        self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None
    ) -> None:
        self.topic = topic
        self.outgoing = outgoing
        self.namespace = namespace
        self.exclude = exclude
        # Set by _ops.publishing when metrics or tracing are on: the envelope's
        # extensions (a trace context) and when publish() was called (the lag).
        self.extensions: dict[str, Any] | None = None
        self.started = 0.0
        self._done = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None

    def finish(self) -> None:
        # ``_done`` first, ``_waiters`` read second; ``__await__`` does the
        # opposite, so a waiter is always resolved by one side (GIL ordering).
        self._done = True
        waiters = self._waiters
        if waiters:
            for loop, future in waiters:
                loop.call_soon_threadsafe(resolve, future)

    def give_up(self, owner: BackplanePubSub) -> None:
        """Not sent: with history the local delivery was waiting for an id; do it now."""
        if not self._done:
            if owner.history:
                owner.deliver_local(self.topic, self.outgoing, self.namespace, self.exclude)
            self.finish()

    def __await__(self) -> Generator[Any, None, None]:
        if self._done:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append((loop, future))
        if self._done:
            resolve(future)
        yield from future

    def __repr__(self) -> str:
        return f"<publish {self.topic!r} {'sent' if self._done else 'queued'}>"


class HistoryRead:
    """A queued history read: the publishes to ``topic`` after event id ``after``."""

    __slots__ = ("after", "future", "topic")

    def __init__(self, topic: str, after: str, future: asyncio.Future[list[Outgoing]]) -> None:
        self.topic = topic
        self.after = after
        self.future = future

    def give_up(self, owner: BackplanePubSub) -> None:
        if not self.future.done():
            self.future.set_result([])


Item = Publish | HistoryRead


class OrderedPublisher:
    """The FIFO queue and the one task that empties it into the backplane."""

    def __init__(self, owner: BackplanePubSub) -> None:
        self.owner = owner
        self.queue: deque[Item] = deque()
        self.wake = asyncio.Event()
        low = owner.reconnect_backoff[0]
        self.retry_at = 0.0
        self.delay = low
        what = f"{owner.name} publisher"
        self.task = spawn(supervise(what, self._run, owner.outages.report), what=what)

    def enqueue(self, item: Item) -> None:
        owner = self.owner
        if len(self.queue) >= owner.max_pending:
            overflow = OverflowError(f"more than {owner.max_pending} publishes wait")
            owner.outages.failed("publish", overflow)
            item.give_up(owner)
            return
        self.queue.append(item)
        if not self.wake.is_set():
            self.wake.set()

    def retry_now(self) -> None:
        self.retry_at = 0.0
        self.delay = self.owner.reconnect_backoff[0]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])
        self._give_up(list(self.queue))
        self.queue.clear()

    def _give_up(self, items: list[Item]) -> None:
        for item in items:
            item.give_up(self.owner)

    async def _run(self) -> None:
        """Send batches for ever; an unexpected failure is reported and the loop goes on."""
        queue = self.queue
        while True:
            if not queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                self._give_up(batch)
                raise
            except Exception as exc:
                logger.error("h3_fastapi: %s publisher failed", self.owner.name, exc_info=exc)
                self.owner.outages.report(exc)
                self._give_up(batch)

    async def _send(self, batch: list[Item]) -> None:
        owner = self.owner
        loop = asyncio.get_running_loop()
        if owner.is_down or loop.time() < self.retry_at:
            self._give_up(batch)  # known to be down: stay local
            return
        # Consecutive publishes go in one call; a history read goes alone, in turn.
        start = 0
        while start < len(batch):
            item = batch[start]
            if isinstance(item, HistoryRead):
                await self._read(item)
                start += 1
                continue
            end = start
            while end < len(batch) and isinstance(batch[end], Publish):
                end += 1
            publishes: list[Publish] = batch[start:end]  # type: ignore[assignment]
            if not await self._publish(publishes):
                self._give_up(batch[end:])
                return
            start = end

    async def _publish(self, publishes: list[Publish]) -> bool:
        owner = self.owner
        origin = owner.origin
        wire = [
            (p.topic, _envelope.encode(origin, p.namespace, p.outgoing.data, p.extensions))
            for p in publishes
        ]
        try:
            results = await owner.backplane.publish(wire)
        except Exception as exc:
            self.retry_at = asyncio.get_running_loop().time() + self.delay
            self.delay = min(self.delay * 2, owner.reconnect_backoff[1])
            owner.outages.failed("publish", exc)
            self._give_up(list(publishes))
            return False
        self.delay = owner.reconnect_backoff[0]
        failure: Exception | None = None
        for item, result in zip(publishes, results, strict=True):
            if isinstance(result, Exception):
                failure = result
                result = None
            if owner.history:
                outgoing = Outgoing(item.outgoing.data, result)
                owner.deliver_local(item.topic, outgoing, item.namespace, item.exclude)
            item.finish()
        if ops.on:
            ops.published(owner, publishes)
        if failure is not None:
            owner.outages.failed("publish", failure)
        else:
            owner.outages.ended("publish")
        return True

    async def _read(self, item: HistoryRead) -> None:
        owner = self.owner
        try:
            entries = await owner.backplane.read_history(item.topic, item.after)
        except Exception as exc:
            owner.outages.failed("publish", exc)
            entries = []
        found = []
        for event_id, raw in entries:
            try:
                decoded = _envelope.decode(raw)
            except _envelope.MalformedEnvelope as exc:
                owner.malformed(f"history of {item.topic}", exc)
                continue
            found.append(Outgoing(decoded.data, event_id))
        if not item.future.done():
            item.future.set_result(found)
