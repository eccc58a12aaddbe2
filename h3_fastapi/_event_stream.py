"""Server-Sent Events: h3's ``EventStream`` as a Starlette response.

An ``EventStream`` owns an ``outbox`` of events that are already encoded to
bytes. ``push`` appends to it at once (from a sync function, a coroutine or
another thread) and the response itself, once the server calls it, drains the
outbox into the ASGI ``send``; events that queued up while the client was
behind go out in one send. One extra task per stream listens for the client
leaving, so ``on_closed`` runs promptly even when nothing is being pushed.

The outbox is bounded (``max_buffer``): a client that stops reading gets its
stream closed instead of growing the server's memory. Server shutdown closes
open streams first, so uvicorn never waits on an endless response.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import threading
import typing
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Any

from fastapi.dependencies.utils import get_typed_annotation
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import _shutdown
from ._compat import spawn, uncancel, worker_thread_loop
from ._hooks import logger, run_callback
from ._ops import ops
from ._outbox import Outbox
from ._serialize import to_text
from ._sse import EventStreamMessage, encode, format_comment, format_event
from ._typing import stream_producer
from .pubsub import DONE, Outgoing, PubSub, get_default_pubsub

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "EventStream",
    "EventStreamMessage",
    "create_event_stream",
    "event_stream",
    "format_comment",
    "format_event",
]

# Bytes a stream may hold for a client that is not reading before it is closed.
DEFAULT_MAX_BUFFER = 1024 * 1024

# Seconds a stream closed by server shutdown may take to get its last bytes out.
SHUTDOWN_FLUSH_TIMEOUT = 0.5


class _State(enum.Enum):
    """Where a stream is; it only moves forward."""

    NEW = 0  # made, not yet returned to the server
    OPEN = 1
    CLOSING = 2  # ``close`` called: the queue is still being written
    CLOSED = 3


_NEW, _OPEN, _CLOSING, _CLOSED = _State
# A tuple, not a set: ``in`` compares by identity in C, a set would call
# ``Enum.__hash__`` (Python code) on every ``push``.
_ENDED = (_CLOSING, _CLOSED)

_get_ident = threading.get_ident

_PING = b": ping\n\n"
# Awaiting ``push`` waits only once this much is queued (or half of ``max_buffer``,
# if less): a producer runs ahead of the writer by up to this, and what piles up
# goes out in one ASGI send.
_HIGH_WATER = 64 * 1024

_BASE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"private, no-cache, no-store, no-transform, must-revalidate, max-age=0"),
    (b"x-accel-buffering", b"no"),
]


class _Closed:
    """Returned by ``close``: await it to wait until the stream has ended."""

    __slots__ = ("_wait",)

    def __init__(self, wait: Callable[[], Awaitable[None]]) -> None:
        self._wait = wait

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


class _StreamWriter(Outbox[bytes]):
    """The stream's outbox: byte chunks joined when the client is behind, plus ``pause``.

    ``queue`` returns an awaitable that waits only while the stream is backed
    up (``high_water`` bytes or more queued): below it, the producer goes on
    at once and its events pile up into one send. Pushed while paused, data
    is held (and counted against the limit) until ``release_held``. A task
    awaiting a write writes the queue itself while the response's writer is
    parked, so it costs no task switch.
    """

    _join = b"".join
    _size = len
    _to_message = staticmethod(_body)
    _yield_after_write_here = True

    __slots__ = ("from_threads", "held", "high_water", "on_overflow", "paused", "taking")

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        super().__init__(limit)
        self.high_water = min(_HIGH_WATER, max(limit // 2, 1))
        # Data pushed and calls made in other threads, in order, for the loop (see ``hop``).
        self.from_threads: deque[Any] = deque()
        self.taking = False
        self._items = deque()
        self._hold_wake = True  # no writer until the response starts
        self.held: list[bytes] = []
        self.paused = False
        self.on_overflow = on_overflow

    def start(self, send: Send) -> None:
        """The response runs: writes go to ``send`` and the writer may be woken."""
        self.send = send
        self._hold_wake = False

    def queue(self, data: bytes, unpaused: bool = False) -> Awaitable[None]:
        """Queue ``data`` (any thread), or hold it back while paused unless ``unpaused``.

        The result waits until ``data`` is written only when ``high_water``
        bytes or more are queued; otherwise it is already done.
        """
        if self.paused and not unpaused:
            if not self.hop(self.queue, data, unpaused):
                self.hold(data)
            return DONE
        written = self.put(data, len(data))
        return written if self._buffered >= self.high_water else DONE

    def hop(self, func: Callable[..., Any], *args: Any) -> bool:
        """Called off the loop's thread: run ``func(*args)`` on the loop, return ``True``.

        Like ``Outbox.hop``, but through one ordered queue that ``push_from_thread``
        shares: a thread's pushes and calls run in the order it made them, and a
        burst of them costs one ``call_soon_threadsafe``.
        """
        if self._loop is None or _get_ident() == self._thread:
            return False
        self.push_from_thread((func, args))
        return True

    def push_from_thread(self, item: Any) -> None:
        """Called off the loop's thread: queue data (``bytes``) or a call (``(func, args)``).

        Appended first, the flag read after; the loop clears the flag before
        it takes, so nothing is left behind (``deque`` is thread safe).
        """
        self.from_threads.append(item)
        if not self.taking:
            self.taking = True
            self._loop.call_soon_threadsafe(self._take_from_threads)  # type: ignore[union-attr]

    def _take_from_threads(self) -> None:
        self.taking = False
        from_threads = self.from_threads
        while from_threads:
            item = from_threads.popleft()
            if item.__class__ is bytes:
                self.queue(item)
                continue
            func, args = item
            try:
                func(*args)
            except Exception:
                logger.exception("h3_fastapi: event stream call from another thread raised")

    def hold(self, data: bytes) -> None:
        """Keep ``data`` back while paused (it counts against the limit)."""
        self.held.append(data)
        self._buffered += len(data)
        if self._buffered > self._limit and self._buffered > len(data):
            self._overflow()

    def release_held(self) -> None:
        """Queue what was held back, in order."""
        if self.held and not self._closed:
            self._items.extend(self.held)  # type: ignore[union-attr]
            self._queued += len(self.held)
            self.held.clear()
            self.wake_writer()

    def shut(self) -> None:
        self.held.clear()
        super().shut()

    def _overflow(self) -> None:
        logger.warning(
            "h3_fastapi: event stream client is not reading; over max_buffer=%d bytes, closing",
            self._limit,
        )
        self.on_overflow()

    def _writer_here(self) -> bool | None:
        # Parked means the response runs (``start`` came first) and nobody writes.
        return True if self._wake is not None else None


class _StreamLifetime(Response):
    """What the server drives of an event stream: its run as an ASGI response, and its end.

    The response starts, a listener watches for the client leaving, the write
    loop drains the outbox, timers send heartbeats and cut a stuck client, and
    the end (``_finish``) runs exactly once whatever caused it. ``EventStream``
    below adds the h3 API on top (``push``, ``subscribe``, ``close``, ...);
    this split keeps each class one job.
    """

    request: HTTPConnection
    ping_interval: float | None
    send_timeout: float | None

    def _start_lifetime(self, max_buffer: int) -> None:
        self._state = _NEW
        self._started = False
        self._writer = _StreamWriter(max_buffer, self._abort)
        self._callbacks: list[Callable[[], Any]] = []
        self._callbacks_run: asyncio.Future[Any] | None = None  # the on_closed callbacks running
        self._done: asyncio.Future[None] | None = None
        self._aborting = False
        self._last_write = 0.0
        self._timer: asyncio.TimerHandle | None = None  # ping or shutdown deadline
        self._task: asyncio.Task[Any] | None = None  # the task running the response
        self._listener: asyncio.Task[Any] | None = None
        self._pump: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bind_creator()

    def _ended(self) -> None:
        """Called once by ``_finish``, for what the stream's own API must undo (topics)."""

    def _start_producer(self) -> None:
        """Called when the response starts; an ``@event_stream`` starts its generator here."""

    def _bind_creator(self) -> None:
        """Learn the loop, and arrange to close if the stream is never returned.

        In a coroutine, the stream closes when the task that made it (the
        request) ends without having sent it. In a worker thread (a plain
        ``def`` endpoint), a listener waits for the request to end instead.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            found = worker_thread_loop()
            if found is None:
                return
            self._loop = found
            self._writer.bind(found, _loop_thread(found))
            receive = getattr(self.request, "receive", None)
            if receive is not None:
                found.call_soon_threadsafe(self._start_listener, receive)
            return
        self._loop = loop
        self._writer.bind(loop)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._creator_done)

    def _creator_done(self, task: asyncio.Task[Any]) -> None:
        if not self._started:
            self._finish()

    async def _wait_closed(self) -> None:
        if self._done is not None and not self._done.done():
            await asyncio.shield(self._done)

    def _abort(self) -> None:
        """End now, dropping what is queued; interrupt a write that is stuck."""
        if self._state is _CLOSED:
            return
        stuck = self._writer.writing
        self._finish()
        task = self._task
        if stuck and task is not None and not task.done():
            self._aborting = True
            task.cancel()

    def _finish(self) -> None:
        """Mark the stream ended, free its buffers, leave its topics, run ``on_closed``."""
        if self._state is _CLOSED or self._writer.hop(self._finish):
            return
        self._state = _CLOSED
        self._writer.shut()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ended()
        current = _current_task()
        for task in (self._pump, self._listener):
            if task is not None and task is not current and not task.done():
                task.cancel()
        if self._started:
            _shutdown.remove_server_exit(self)
            if ops.on:
                ops.stream_closed(self)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        self._run_callbacks(callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[], Any]]) -> None:
        if not callbacks:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no loop at all: sync callbacks still run
                _call_all_sync(callbacks)
                return
        elif self._writer.hop(self._run_callbacks, callbacks):
            return
        self._callbacks_run = spawn(_call_all(callbacks), what="event stream on_closed callbacks")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._started:
            raise RuntimeError("this EventStream was already sent; make one per request")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._writer.bind(loop)
        self._task = asyncio.current_task()
        self._done = loop.create_future()
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            self._last_write = loop.time()
            if scope.get("method") == "HEAD" or self._state is _CLOSED:
                # Headers only (HEAD), or ended before it was sent (overflow).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self._stream(receive, send, loop)
        except asyncio.CancelledError:
            if not self._aborting:
                self._finish()
                if self.background is not None:  # cancelled: run them beside, not here
                    spawn(self._run_background(), what="event stream background tasks")
                raise
            self._aborting = False
            uncancel()
        except Exception as exc:  # the transport failed: the client is gone
            logger.debug("h3_fastapi: event stream send failed: %r", exc)
        finally:
            self._finish()
            listener = self._listener
            if listener is not None and not listener.done():
                listener.cancel()
        # However the stream ended (client gone, close, shutdown), as StreamingResponse does.
        if self.background is not None:
            await self._run_background()

    async def _run_background(self) -> None:
        """Run the response's ``background`` tasks once, after the ``on_closed`` callbacks."""
        background, self.background = self.background, None
        if background is None:
            return
        callbacks = self._callbacks_run
        if callbacks is not None and not callbacks.done():
            await asyncio.wait({callbacks})
        try:
            await background()
        except Exception:
            logger.exception("h3_fastapi: event stream background task raised")

    async def _stream(self, receive: Receive, send: Send, loop: asyncio.AbstractEventLoop) -> bool:
        """Start the helpers (listener, heartbeat, generator) and write until closed."""
        if self._state is _NEW:
            self._state = _OPEN
        if ops.on:
            ops.stream_opened(self)
        _shutdown.on_server_exit(self, self._server_exit)
        if self._listener is None or self._listener.done():
            self._listener = loop.create_task(self._listen(receive))
        if self.ping_interval:
            self._timer = loop.call_later(self.ping_interval, self._ping_due)
        self._start_producer()
        if self.send_timeout is not None:
            send = _timed(send, self.send_timeout, self._send_timed_out)
        return await self._write_loop(send, loop)

    async def _write_loop(self, send: Send, loop: asyncio.AbstractEventLoop) -> bool:
        """Drain the outbox until closed; ``True`` when the response was ended normally."""
        writer = self._writer
        writer.start(send)
        while self._state is not _CLOSED:
            if writer.pending:
                await writer.write_pending()
                self._last_write = loop.time()
            elif self._state is _CLOSING and not writer.writing:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            else:
                await writer.park()
        return False

    async def _listen(self, receive: Receive) -> None:
        """Wait for ``http.disconnect`` (client gone, or the request ended unsent)."""
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        except Exception as exc:
            logger.debug("h3_fastapi: event stream receive failed: %r", exc)
            if not self._started:
                return  # nothing to watch with; the response will listen itself
        self._abort()

    def _ping_due(self) -> None:
        self._timer = None
        interval = self.ping_interval
        loop = self._loop
        if self._state is not _OPEN or not interval or loop is None:
            return
        idle = loop.time() - self._last_write
        if idle >= interval * 0.99 and not self._writer.buffered and not self._writer.writing:
            self._writer.queue(_PING, True)
            delay = interval
        else:
            delay = max(interval - idle, interval * 0.01)
        if self._state is _OPEN:
            self._timer = loop.call_later(delay, self._ping_due)

    def _send_timed_out(self) -> None:
        if self._state is not _CLOSED:
            logger.warning(
                "h3_fastapi: event stream write blocked over send_timeout=%ss, closing",
                self.send_timeout,
            )
            self._abort()

    def _server_exit(self) -> Awaitable[None] | None:
        """Server shutdown: end gracefully, but cut a client that is not reading."""
        if self._state is _CLOSED or self._loop is None:
            return None
        self._close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(SHUTDOWN_FLUSH_TIMEOUT, self._abort)
        return self._wait_closed()

    def _start_listener(self, receive: Receive) -> None:
        if self._listener is None and self._state is not _CLOSED and self._loop is not None:
            self._listener = self._loop.create_task(self._listen(receive))

    def _close(self) -> None:
        """End after what is queued (held data too); the write loop sends the end."""
        if self._state in _ENDED:
            return
        writer = self._writer
        writer.paused = False
        writer.release_held()
        self._state = _CLOSING
        writer.end()


class EventStream(_StreamLifetime):
    """A Server-Sent Events response (h3's ``EventStream``).

    Create it from the request, return it from the endpoint (or
    ``return stream.send()``), and ``push`` events whenever you like, also from
    another thread::

        stream = EventStream(request)
        stream.push("Hello world")
        stream.on_closed(lambda: print("client gone"))
        return stream

    Args:
        request: The request (h3's ``event``) the stream answers; its
            ``Last-Event-ID`` header is ``last_event_id``.
        ping_interval: Seconds without output after which a ``: ping`` comment
            is sent, so proxies and CDNs keep the connection open. Off by default.
        max_buffer: Bytes that may wait for a slow client (outbox, including
            paused data). Past it the stream is closed and ``on_closed`` runs.
        send_timeout: Seconds one write may stay blocked on a client that is
            not reading before the stream is closed. Off by default.
        pubsub: The pub/sub for ``subscribe``; default the process-wide one.
        headers: Extra response headers (they replace defaults of the same name).
        status_code: The response status, 200 by default.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        request: HTTPConnection,
        *,
        ping_interval: float | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_timeout: float | None = None,
        pubsub: PubSub | None = None,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        if ping_interval is not None and ping_interval < 0:
            raise ValueError("ping_interval must be > 0 seconds (None or 0 turns it off)")
        if max_buffer <= 0:
            raise ValueError("max_buffer must be a positive number of bytes")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError("send_timeout must be > 0 seconds (or None)")
        self.request = request
        self.status_code = status_code
        self.background = None
        self.body = b""
        self.raw_headers = _stream_headers(request, headers)
        self.topics: set[str] = set()
        self.ping_interval = ping_interval or None
        self.max_buffer = max_buffer
        self.send_timeout = send_timeout
        self._pubsub = pubsub
        self._start_lifetime(max_buffer)

    def __repr__(self) -> str:
        state = self._state.name.lower()
        return f"<EventStream {state} buffered={self._writer.buffered}>"

    @property
    def is_closed(self) -> bool:
        """``True`` once ``close`` was called or the stream ended for any reason."""
        return self._state in _ENDED

    @property
    def is_paused(self) -> bool:
        """``True`` between ``pause`` and ``resume``."""
        return self._writer.paused

    @property
    def last_event_id(self) -> str | None:
        """The request's ``Last-Event-ID`` header: the id of the last event the client saw."""
        return self.request.headers.get("last-event-id")

    @property
    def buffered_amount(self) -> int:
        """Bytes pushed and not yet handed to the server (including paused data)."""
        return self._writer.buffered

    @property
    def namespace(self) -> str | None:
        """``None``: a stream receives publishes to its topics from every namespace."""
        return None

    def push(self, message: Any) -> Awaitable[None]:
        """Queue one or more events and return at once.

        ``message`` is a ``str``, an ``EventStreamMessage``, a dict with a
        ``data`` key and optional ``id``/``event``/``retry``, an sse-starlette
        ``ServerSentEvent``, any other value (sent as JSON data), or a list of
        those (several events). Await the result for backpressure: it is done
        at once while less than 64 KiB (or half of ``max_buffer``) waits to be
        written, else once this event is handed to the server (``flush``
        waits for everything). Before the stream is returned it resolves at
        once. Safe from any thread. Ignored after close.
        """
        if self._state in _ENDED:
            return DONE
        data = encode(message)
        if not data:
            return DONE
        if ops.on:
            ops.pushed(message)
        writer = self._writer
        if writer._thread != _get_ident() and writer._loop is not None:
            writer.push_from_thread(data)
            return DONE
        if writer.paused:
            return writer.queue(data)
        written = writer.put(data, len(data))
        # Backed up or not, checked after the put: it may have closed the stream.
        if writer._buffered < writer.high_water or self._state is not _OPEN:
            return DONE
        return written

    def push_comment(self, text: str) -> Awaitable[None]:
        """Queue a comment (``: text`` per line); clients ignore it. Like ``push`` otherwise."""
        if self.is_closed:
            return DONE
        return self._queue(format_comment(to_text(text)).encode("utf-8", "replace"))

    def deliver(self, outgoing: Outgoing) -> None:
        """The pub/sub entry point: queue an already-encoded publish as an event (any thread)."""
        if not self.is_closed:
            if ops.on:
                ops.pushed(outgoing)
            self._queue(outgoing.event)  # formatted once for all streams

    def recovered(self, recovery: Any) -> None:
        """Told by the pub/sub how a ``Last-Event-ID`` catch-up went (between missed and live).

        When the id is no longer in the history, an ``event: resync`` tells the
        client to reload its state (its data: ``topic``, ``recovered``,
        ``missed``, ``position``); its ``id`` is the topic's newest position, so
        the next reconnect resumes from there.
        """
        if not recovery.recovered and not self.is_closed:
            data = json.dumps(recovery.as_dict(), separators=(",", ":"))
            text = format_event(data, recovery.position, "resync")
            self._queue(text.encode("utf-8", "replace"))

    def _queue(self, data: bytes, unpaused: bool = False) -> Awaitable[None]:
        if self._state in _ENDED:
            return DONE
        written = self._writer.queue(data, unpaused)
        return written if self._state is _OPEN else DONE

    def pause(self) -> None:
        """Hold pushed events back (they stay buffered) until ``resume`` or ``flush``."""
        if not self._writer.hop(self.pause):
            self._writer.paused = True

    def resume(self) -> Awaitable[None]:
        """Stop holding events back and send what was held (see ``flush``)."""
        if self._writer.hop(self.resume):
            return DONE
        self._writer.paused = False
        return self.flush()

    def flush(self) -> Awaitable[None]:
        """Send events held by ``pause`` now; await to wait until all queued bytes are written."""
        if self._writer.hop(self.flush):
            return DONE
        self._writer.release_held()
        if self._state is not _OPEN:
            return DONE
        return self._writer.all_written()

    @property
    def pubsub(self) -> PubSub:
        """The pub/sub ``subscribe`` uses."""
        if self._pubsub is None:
            self._pubsub = get_default_pubsub()
        return self._pubsub

    def subscribe(self, topic: str) -> None:
        """Receive publishes to ``topic`` (from every namespace) as events.

        With a ``Last-Event-ID`` the pub/sub's history after that id (if it
        keeps one) is pushed first, then live publishes. Safe from any thread.
        """
        if self._writer.hop(self.subscribe, topic) or self._state is _CLOSED:
            return
        if topic in self.topics:
            return
        self.topics.add(topic)
        pubsub = self.pubsub
        last_id = self.last_event_id
        if last_id:
            pubsub.subscribe_from(topic, self, last_id)
        else:
            pubsub.subscribe(topic, self)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving publishes to ``topic``."""
        if not self._writer.hop(self.unsubscribe, topic) and topic in self.topics:
            self.topics.discard(topic)
            self.pubsub.unsubscribe(topic, self)

    def close(self) -> Awaitable[None]:
        """End the stream after sending what is queued (held data too). Idempotent.

        Await the result to wait until the response has ended; before the
        stream is returned it resolves at once (the stream then ends right
        after its queued events once returned). Safe from any thread.
        """
        if self._writer.hop(self._close):
            return DONE
        self._close()
        if not self._started or self._state is _CLOSED:
            return DONE
        return _Closed(self._wait_closed)

    def _ended(self) -> None:
        """Leave every topic when the stream ends."""
        if self.topics:
            pubsub = self.pubsub
            for topic in self.topics:
                pubsub.unsubscribe(topic, self)
            self.topics.clear()

    def on_closed(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``callback()`` (sync or async) once when the stream ends, for any reason.

        That is after ``close`` has sent what was queued, when the client
        leaves, at server shutdown, on overflow, or when the stream was never
        returned. Registered after the end, it runs soon. Exceptions are
        logged, never raised. Returns ``callback`` (usable as a decorator).
        """
        if self._writer.hop(self.on_closed, callback):
            pass
        elif self._state is _CLOSED:
            self._run_callbacks([callback])
        else:
            self._callbacks.append(callback)
        return callback

    def send(self) -> EventStream:
        """This stream, for the h3 1.x style ``return stream.send()``."""
        return self


class _GeneratorStream(EventStream):
    """The stream of an ``@event_stream`` endpoint: pushes what its generator yields."""

    def __init__(self, request: HTTPConnection, producer: AsyncIterator[Any], **options: Any):
        super().__init__(request, **options)
        self._producer = producer

    def _start_producer(self) -> None:
        self._pump = spawn(self._run_producer(self._producer), what="@event_stream generator")

    async def _run_producer(self, producer: AsyncIterator[Any]) -> None:
        """Push what an ``@event_stream`` generator yields; close it when the stream ends."""
        try:
            async for item in producer:
                if self._state is not _OPEN:
                    break
                written = self.push(item)
                # Back-pressure by bytes, not per event (see ``push``).
                if written is not DONE:
                    await written
                if self._state is not _OPEN:
                    break
        except Exception:
            logger.exception("h3_fastapi: event stream generator raised")
        finally:
            aclose = getattr(producer, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("h3_fastapi: closing the event stream generator failed")
            if not self.is_closed:
                self._close()


def _timed(send: Send, seconds: float, on_timeout: Callable[[], None]) -> Send:
    """``send`` that calls ``on_timeout`` when one write stays blocked over ``seconds``."""
    loop = asyncio.get_running_loop()

    async def timed_send(message: Any) -> None:
        timer = loop.call_later(seconds, on_timeout)
        try:
            await send(message)
        finally:
            timer.cancel()

    return timed_send


def _loop_thread(loop: asyncio.AbstractEventLoop) -> int:
    """The id of the thread ``loop`` runs in, asked from an AnyIO worker thread."""
    from anyio import from_thread

    return from_thread.run_sync(threading.get_ident)


def _call_all_sync(callbacks: list[Callable[[], Any]]) -> None:
    for callback in callbacks:
        try:
            result = callback()
            if inspect.iscoroutine(result):
                result.close()
                logger.warning("h3_fastapi: async on_closed callback needs a loop")
        except Exception:
            logger.exception("h3_fastapi: event stream on_closed callback raised")


async def _call_all(callbacks: list[Callable[[], Any]]) -> None:
    for callback in callbacks:
        await run_callback(callback, what="event stream on_closed callback")


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _stream_headers(
    request: HTTPConnection, extra: Mapping[str, str] | None
) -> list[tuple[bytes, bytes]]:
    headers = list(_BASE_HEADERS)
    scope = request.scope
    if scope.get("http_version") == "1.1":
        tokens = (
            token.strip().lower()
            for value in request.headers.getlist("connection")
            for token in value.split(",")
        )
        if "keep-alive" in tokens:
            headers.append((b"connection", b"keep-alive"))
    if extra:
        for name, value in extra.items():
            key = name.lower().encode("latin-1")
            headers = [(k, v) for k, v in headers if k != key]
            headers.append((key, value.encode("latin-1")))
    return headers


def create_event_stream(
    request: HTTPConnection,
    *,
    ping_interval: float | None = None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    send_timeout: float | None = None,
    pubsub: PubSub | None = None,
    headers: Mapping[str, str] | None = None,
) -> EventStream:
    """A new ``EventStream`` for ``request`` (h3's ``createEventStream``); see ``EventStream``."""
    return EventStream(
        request,
        ping_interval=ping_interval,
        max_buffer=max_buffer,
        send_timeout=send_timeout,
        pubsub=pubsub,
        headers=headers,
    )


_REQUEST_PARAMETER = "_h3_request"


def event_stream(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Turn an async generator endpoint into an SSE endpoint.

    Each yielded value is pushed (anything ``EventStream.push`` takes); a
    generator annotated ``AsyncIterator[Model]`` (or ``Iterator[Model]`` for a
    plain ``def`` generator, run in the threadpool) has each item validated and
    sent as the model's JSON, as FastAPI's own SSE does; when
    the generator ends the stream closes; when the client leaves or the
    server shuts down the generator is closed (its ``finally`` runs). FastAPI
    parameters and dependencies of the function keep working; it gets the
    ``Request`` if it asks for one (annotated ``Request``, or an unannotated
    parameter named ``request``/``event``). Use bare (``@event_stream``) or
    with ``EventStream`` options (``@event_stream(ping_interval=15)``).
    """
    if func is None:
        return lambda f: event_stream(f, **options)
    # Typed items (``AsyncIterator[Model]``) validated and JSON-encoded; sync
    # generators run in the threadpool (_typing.py).
    generator_function, item_type = stream_producer(func)
    signature, request_name, added = _endpoint_signature(func)

    @functools.wraps(func)
    async def endpoint(*args: Any, **kwargs: Any) -> EventStream:
        bound = signature.bind(*args, **kwargs)
        request = bound.arguments[request_name]
        if added:
            del bound.arguments[request_name]
        producer = generator_function(*bound.args, **bound.kwargs)
        return _GeneratorStream(request, producer, **options)

    # FastAPI unwraps ``__wrapped__`` and would serve the generator itself.
    del endpoint.__wrapped__
    endpoint.__signature__ = signature  # type: ignore[attr-defined]
    endpoint.__annotations__ = {
        **{p.name: p.annotation for p in signature.parameters.values()},
        "return": EventStream,
    }
    endpoint.__h3_stream_item__ = item_type  # type: ignore[attr-defined]  # schema docs
    return endpoint


def _endpoint_signature(func: Callable[..., Any]) -> tuple[inspect.Signature, str, bool]:
    """The signature FastAPI should see: resolved annotations plus a ``Request``.

    Returns it, the name of the request parameter, and whether it was added.
    """
    signature = inspect.signature(func)
    globalns = getattr(func, "__globals__", {})
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # one name only imported under TYPE_CHECKING: resolve the others
        hints = {}
    params: list[inspect.Parameter] = []
    request_name: str | None = None
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        # FastAPI's own resolution of a string annotation; one it cannot resolve stays as is.
        resolved = get_typed_annotation(annotation, globalns)
        if not isinstance(resolved, typing.ForwardRef):
            annotation = resolved
        if request_name is None:
            if isinstance(annotation, type) and issubclass(annotation, HTTPConnection):
                request_name = param.name
            elif annotation is param.empty and param.name in ("request", "event"):
                annotation = Request
                request_name = param.name
        params.append(param.replace(annotation=annotation))
    added = request_name is None
    if request_name is None:
        request_name = _REQUEST_PARAMETER
        extra = inspect.Parameter(request_name, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
        if params and params[-1].kind == inspect.Parameter.VAR_KEYWORD:
            params.insert(len(params) - 1, extra)
        else:
            params.append(extra)
    return signature.replace(parameters=params, return_annotation=EventStream), request_name, added
