"""SSE catch-up on a ``BackplanePubSub``: history first, then live, none twice.

``subscribe_from`` subscribes a stand-in (``_CatchUp``) at once, so nothing
published from then on is lost: live publishes are held in it. Once the
backplane confirms the subscription, the history after ``Last-Event-ID`` is
read (in the ordered publisher's queue, so it sees this process's earlier
publishes), delivered, and then the held live ones, skipping by event id what
the history already gave. Then the real subscriber takes the stand-in's place.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from ._compat import spawn
from ._hooks import logger
from ._ordered import HistoryRead
from ._positions import Recovery, Resolved, id_before, recover, tell
from .pubsub import Outgoing, Subscriber, parse_event_id

if TYPE_CHECKING:
    from .backplane import BackplanePubSub

__all__ = ["CatchUps"]


class _CatchUp:
    """Stands in for a subscriber while its missed events are read; holds live ones."""

    __slots__ = ("buffer", "subscriber")

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.buffer: deque[Outgoing] = deque()

    @property
    def namespace(self) -> str | None:
        return self.subscriber.namespace

    def deliver(self, outgoing: Outgoing) -> None:
        self.buffer.append(outgoing)


class _ThreadFuture:
    """Awaitable view, for any loop, of work running on the backplane's loop."""

    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.wrap_future(self._future).__await__()


class CatchUps:
    """The subscribers of one ``BackplanePubSub`` that are catching up."""

    def __init__(self, owner: BackplanePubSub) -> None:
        self.owner = owner
        self.pending: dict[tuple[str, Subscriber], _CatchUp] = {}

    def holds(self, topic: str, subscriber: Subscriber) -> bool:
        return (topic, subscriber) in self.pending

    def drop(self, topic: str, subscriber: Subscriber) -> Subscriber | None:
        """Forget a catch-up (unsubscribed meanwhile); its stand-in, if there was one."""
        return self.pending.pop((topic, subscriber), None)

    def start(
        self, topic: str, subscriber: Subscriber, last_event_id: str | None
    ) -> Awaitable[Recovery | None]:
        owner = self.owner
        if not owner.history or parse_event_id(last_event_id) is None:
            owner.subscribe(topic, subscriber)
            return Resolved(None)
        loop = owner.bind_loop()
        if loop is None or (topic, subscriber) in self.pending:
            owner.subscribe(topic, subscriber)
            return Resolved(None)
        assert last_event_id is not None
        stand_in = _CatchUp(subscriber)
        self.pending[(topic, subscriber)] = stand_in
        owner.subscribe(topic, stand_in)
        job = self._run(topic, stand_in, last_event_id)
        if owner.on_loop_thread():
            return spawn(job, what="SSE catch-up")
        return _ThreadFuture(asyncio.run_coroutine_threadsafe(job, loop))

    async def fetch(self, topic: str, last_event_id: str | None) -> list[Outgoing]:
        owner = self.owner
        if not owner.history or last_event_id is None or parse_event_id(last_event_id) is None:
            return []
        loop = owner.bind_loop()
        if loop is None or owner.is_down:
            return []
        if loop is not asyncio.get_running_loop():
            future = asyncio.run_coroutine_threadsafe(self.fetch(topic, last_event_id), loop)
            return await asyncio.wrap_future(future)
        result: asyncio.Future[list[Outgoing]] = loop.create_future()
        owner.enqueue(HistoryRead(topic, last_event_id.strip(), result))
        return await result

    async def _run(self, topic: str, stand_in: _CatchUp, last_event_id: str) -> Recovery | None:
        owner = self.owner
        read: list[Outgoing] | None = None
        try:
            if not owner.is_down:
                # Subscribed first, so every publish is in the history read
                # below or arrives live after it (or both: deduplicated by id).
                await asyncio.wait_for(owner.wait_subscribed(topic), owner.command_timeout)
                # From the last seen id on, it included: its presence proves no gap.
                before = id_before(last_event_id)
                read = await self.fetch(topic, before) if before is not None else []
        except asyncio.TimeoutError:
            logger.warning(
                "h3_fastapi: %s did not confirm %r in time; no replay", owner.name, topic
            )
        except Exception as exc:  # closed meanwhile: live events only
            logger.debug("h3_fastapi: no replay for %r: %r", topic, exc)
        finally:
            # Unreadable history (an outage): no verdict, live events only.
            missed, recovery = ([], None) if read is None else recover(topic, last_event_id, read)
            newest = parse_event_id(read[-1].id) if read else None
            self._hand_over(topic, stand_in, last_event_id, missed, recovery, newest)
        return recovery

    def _hand_over(
        self,
        topic: str,
        stand_in: _CatchUp,
        last_event_id: str,
        missed: list[Outgoing],
        recovery: Recovery | None,
        newest: tuple[int, int] | None,
    ) -> None:
        subscriber = stand_in.subscriber
        if self.pending.get((topic, subscriber)) is not stand_in:
            return  # unsubscribed meanwhile
        del self.pending[(topic, subscriber)]
        last = parse_event_id(last_event_id) or (0, 0)
        if recovery is not None:
            for outgoing in missed:
                subscriber.deliver(outgoing)
            tell(subscriber, recovery)
            # Live ones after what the history showed; after a resync, all of
            # them (a new epoch may restart its ids lower).
            last = newest or (last if recovery.recovered else (0, 0))
        subscribers = self.owner.local.topics.get(topic)
        if subscribers is not None and stand_in in subscribers:
            del subscribers[stand_in]
            subscribers[subscriber] = None
        buffer = stand_in.buffer
        while buffer:
            outgoing = buffer.popleft()
            key = parse_event_id(outgoing.id)
            if key is None or key > last:
                if key is not None:
                    last = key
                subscriber.deliver(outgoing)
