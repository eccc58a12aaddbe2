"""Resumable streams: an answer produced once, served to anyone, from any worker, from any point.

The pattern of AI apps: a ``POST`` starts a producer (an async generator, an
LLM answer say) that runs on its own, not tied to the request; a ``GET``
serves its events as SSE and can be reloaded, dropped, opened twice or sent
to another worker, and carries on exactly where the client stopped.

Everything goes through the pub/sub, so it works on every backplane that
keeps history (``MemoryPubSub(history=N)`` in one process, ``RedisPubSub(...,
history=N)`` across workers and hosts):

- the producer's events are published to the topic ``__h3:stream:<key>``:
  a start marker, one message per event, an end marker with the reason
  (``done``, ``cancelled``, ``idle``, ``error``). The history keeps them, and
  their positions are the SSE event ids;
- ``resumable_stream(request, key)`` subscribes an ``EventStream`` from the
  client's ``Last-Event-ID`` (header, or ``?last_event_id=`` for a reloaded
  page) or from the start, so what was missed comes first, then live events;
- ``cancel_resumable(key)`` and the listeners' "still listening" beats travel
  on ``__h3:stream:<key>:control``; the producer's worker stops it when told,
  or when no one has listened for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Awaitable
from typing import Any

from starlette.requests import HTTPConnection

from ._compat import spawn
from ._event_stream import EventStream, create_event_stream
from ._hooks import logger
from ._positions import Recovery
from ._serialize import to_text
from ._sse import EventStreamMessage
from .pubsub import Outgoing, PubSub, get_default_pubsub

__all__ = ["cancel_resumable", "resumable_stream", "start_resumable"]

_PREFIX = "__h3:stream:"
_CANCEL = "cancel"
_LISTEN = "listen"


def _topics(key: str) -> tuple[str, str]:
    return _PREFIX + key, _PREFIX + key + ":control"


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Control:
    """The producer's ear on the control topic: cancel requests and listener beats."""

    __slots__ = ("cancelled", "last_listen", "loop", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wake = asyncio.Event()
        self.cancelled = False
        self.last_listen = loop.time()

    @property
    def namespace(self) -> str | None:
        return None

    def deliver(self, outgoing: Outgoing) -> None:  # any thread
        if outgoing.data == _CANCEL:
            self.cancelled = True
            self.loop.call_soon_threadsafe(self.wake.set)
        elif outgoing.data == _LISTEN:
            self.loop.call_soon_threadsafe(self._listened)

    def _listened(self) -> None:
        self.last_listen = self.loop.time()


async def start_resumable(
    key: str,
    producer: AsyncIterable[Any],
    *,
    pubsub: PubSub | None = None,
    idle_timeout: float = 30.0,
) -> None:
    """Run ``producer`` in the background of this worker as the resumable stream ``key``.

    Each item it yields becomes one SSE event (a ``str``, an
    ``EventStreamMessage``/dict with ``data`` and ``event``, or any value, sent
    as JSON). Returns once the stream exists (its start is in the history), so
    a ``GET`` right after finds it in any worker. The producer is closed when
    ``cancel_resumable(key)`` is called anywhere, or when no client has
    listened for ``idle_timeout`` seconds. ``key`` must be unguessable if the
    answer is private (a uuid4), and new for each answer.
    """
    pubsub = _pubsub(pubsub)
    if not getattr(pubsub, "history", 0):
        raise ValueError("resumable streams need a pub/sub with history (history=N)")
    topic, control_topic = _topics(key)
    control = _Control(asyncio.get_running_loop())
    pubsub.subscribe(control_topic, control)
    wait_subscribed = getattr(pubsub, "wait_subscribed", None)
    if wait_subscribed is not None:
        await asyncio.wait_for(wait_subscribed(control_topic), 10)
    await pubsub.publish(topic, _dump({"start": key}))
    spawn(_produce(pubsub, key, producer, control, idle_timeout), what="resumable producer")


async def _produce(
    pubsub: PubSub, key: str, producer: AsyncIterable[Any], control: _Control, idle: float
) -> None:
    """Publish what ``producer`` yields until it ends, is cancelled, or goes unheard."""
    topic, control_topic = _topics(key)
    pump = asyncio.ensure_future(_pump(pubsub, topic, producer))
    reason = "done"
    loop = control.loop
    try:
        while not pump.done():
            waiter = asyncio.ensure_future(control.wake.wait())
            await asyncio.wait({pump, waiter}, timeout=min(idle / 3, 1.0))
            waiter.cancel()
            if control.cancelled or loop.time() - control.last_listen > idle:
                reason = "cancelled" if control.cancelled else "idle"
                pump.cancel()
                await asyncio.wait({pump})
                break
        if reason == "done" and pump.exception() is not None:
            reason = "error"
            logger.error("h3_fastapi: resumable stream %r failed", key, exc_info=pump.exception())
    finally:
        pubsub.unsubscribe(control_topic, control)
        await pubsub.publish(topic, _dump({"end": reason}))


async def _pump(pubsub: PubSub, topic: str, producer: AsyncIterable[Any]) -> None:
    iterator = aiter(producer)
    try:
        async for item in iterator:
            await pubsub.publish(topic, _dump(_event(item)))
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _event(item: Any) -> dict[str, Any]:
    if isinstance(item, EventStreamMessage):
        return {"data": to_text(item.data), "event": item.event}
    if isinstance(item, dict) and "data" in item:
        return {"data": to_text(item["data"]), "event": item.get("event")}
    return {"data": to_text(item)}


def cancel_resumable(key: str, *, pubsub: PubSub | None = None) -> Awaitable[None]:
    """Stop the producer of ``key``, whichever worker runs it; listeners get ``event: end``."""
    return _pubsub(pubsub).publish(_topics(key)[1], _CANCEL)


class _Listener:
    """Feeds a client's ``EventStream`` from the stream's topic, and ends it at the end."""

    __slots__ = ("from_start", "started", "stream")

    def __init__(self, stream: EventStream, from_start: bool) -> None:
        self.stream = stream
        self.from_start = from_start
        self.started = not from_start

    @property
    def namespace(self) -> str | None:
        return None

    def deliver(self, outgoing: Outgoing) -> None:  # any thread
        try:
            message = json.loads(outgoing.data)
        except ValueError:
            return
        if "start" in message:
            self.started = True
        elif not self.started:
            self._end("expired")  # the start was trimmed: the beginning is gone
        elif "end" in message:
            self._end(message["end"])
        else:
            event = message.get("event")
            self.stream.push(EventStreamMessage(message.get("data"), id=outgoing.id, event=event))

    def recovered(self, recovery: Recovery) -> None:
        if recovery.position is None:
            self._end("unknown")  # no such stream, or it expired
        elif not recovery.recovered:
            self._end("expired")

    def _end(self, reason: str) -> None:
        # No id: a reconnect resumes before the end and is told again.
        self.stream.push(EventStreamMessage(_dump({"reason": reason}), event="end"))
        self.stream.close()


def resumable_stream(
    request: HTTPConnection,
    key: str,
    *,
    pubsub: PubSub | None = None,
    idle_timeout: float = 30.0,
    **options: Any,
) -> EventStream:
    """The SSE response for the resumable stream ``key``: return it from a ``GET`` endpoint.

    Resumes after the client's ``Last-Event-ID`` header (an ``EventSource``
    reconnecting) or its ``?last_event_id=`` query parameter (a reloaded page
    that kept the id), else starts from the first event. Ends with
    ``event: end`` (data ``{"reason": ...}``: ``done``, ``cancelled``,
    ``idle``, ``error``, ``expired``, ``unknown``); close the ``EventSource``
    then. While it is open it tells the producer someone is listening.
    ``options`` go to ``create_event_stream``.
    """
    pubsub = _pubsub(pubsub)
    topic, control_topic = _topics(key)
    since = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    stream = create_event_stream(request, pubsub=pubsub, **options)
    listener = _Listener(stream, from_start=not since)
    pubsub.subscribe_from(topic, listener, since or "0-0")
    beats = spawn(_listening(pubsub, control_topic, stream, idle_timeout / 3), what="listener")
    stream.on_closed(beats.cancel)
    stream.on_closed(lambda: pubsub.unsubscribe(topic, listener))
    return stream


async def _listening(pubsub: PubSub, control_topic: str, stream: EventStream, every: float) -> None:
    while not stream.is_closed:
        pubsub.publish(control_topic, _LISTEN)
        await asyncio.sleep(every)  # a beat, not synchronisation


def _pubsub(pubsub: PubSub | None) -> PubSub:
    return pubsub if pubsub is not None else get_default_pubsub()
