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
import functools
import inspect
import re
import sys
import threading
import typing
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import _shutdown
from ._compat import Written, release_reached, resolve, uncancel
from ._hooks import logger, run_callback
from ._serialize import to_json_text, to_text
from ._typing import server_sent_event_fields, stream_producer
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

_NEW, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MESSAGE_FIELDS = frozenset({"data", "id", "event", "retry"})
_PING = b": ping\n\n"
# An ``@event_stream`` generator runs ahead of the writer by at most this much.
_PRODUCER_HIGH_WATER = 64 * 1024

_BASE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"private, no-cache, no-store, no-transform, must-revalidate, max-age=0"),
    (b"x-accel-buffering", b"no"),
]


# --- wire format ------------------------------------------------------------


@dataclass(slots=True)
class EventStreamMessage:
    """One event: ``data`` plus the optional ``id``, ``event`` name and ``retry`` (ms).

    ``data`` that is not a ``str`` is sent as JSON (bytes as UTF-8 text).
    ``id`` is written as ``str(id)`` unless it is ``None`` or ``""``; ``retry``
    only when it is a real ``int``.
    """

    data: Any = ""
    id: str | int | None = None
    event: str | None = None
    retry: int | None = None


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        return value.replace("\r", "").replace("\n", "")
    return value


def format_event(
    data: str | None,
    id: Any = None,
    event: Any = None,
    retry: Any = None,
    comment: str | None = None,
) -> str:
    """The text of one event, byte exact (fields ``id``, ``event``, ``retry``, ``data``).

    CR and LF are removed from ``id`` and ``event``; ``retry`` is written only
    for an ``int`` that is not a ``bool``; ``data`` is split on ``\\r\\n``,
    ``\\r`` or ``\\n`` into ``data:`` lines. ``data=None`` writes no ``data``
    line (used for sse-starlette events without data). ``comment`` lines come
    first. A blank line ends the event.
    """
    parts: list[str] = []
    if comment is not None:
        parts.extend(f": {line}\n" for line in _LINE_BREAK.split(comment))
    if id is not None and id != "":
        parts.append(f"id: {_single_line(str(id))}\n")
    if event is not None and event != "":
        parts.append(f"event: {_single_line(str(event))}\n")
    if isinstance(retry, int) and not isinstance(retry, bool):
        parts.append(f"retry: {int(retry)}\n")
    if data is not None:
        if "\r" in data or "\n" in data:
            parts.extend(f"data: {piece}\n" for piece in _LINE_BREAK.split(data))
        else:
            parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts)


def format_comment(text: str) -> str:
    """``: <line>`` for each line of ``text``, then a blank line."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)) + "\n"


def _data_text(value: Any) -> str:
    """``data`` as text: a ``str`` as is, bytes as UTF-8, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return to_text(value)
    return to_json_text(value)


def _is_message_dict(value: Mapping[Any, Any]) -> bool:
    return "data" in value and all(key in _MESSAGE_FIELDS for key in value)


def _sse_starlette_event_type() -> type | None:
    """sse-starlette's ``ServerSentEvent`` when that package is loaded (never imported here)."""
    module = sys.modules.get("sse_starlette.event")
    found = getattr(module, "ServerSentEvent", None) if module is not None else None
    return found if isinstance(found, type) else None


def _format_one(item: Any) -> str:
    if isinstance(item, str):
        return format_event(item)
    if isinstance(item, EventStreamMessage):
        return format_event(_data_text(item.data), item.id, item.event, item.retry)
    if isinstance(item, Mapping) and _is_message_dict(item):
        return format_event(
            _data_text(item["data"]), item.get("id"), item.get("event"), item.get("retry")
        )
    fastapi_event = server_sent_event_fields(item)  # fastapi.sse.ServerSentEvent
    if fastapi_event is not None:
        return format_event(*fastapi_event)
    sse_type = _sse_starlette_event_type()
    if sse_type is not None and isinstance(item, sse_type):
        data = getattr(item, "data", None)
        comment = getattr(item, "comment", None)
        return format_event(
            None if data is None else _data_text(data),
            getattr(item, "id", None),
            getattr(item, "event", None),
            getattr(item, "retry", None),
            None if comment is None else str(comment),
        )
    return format_event(_data_text(item))


def _encode(message: Any) -> bytes:
    """Bytes for what ``push`` accepts: one value, or a list/tuple of them."""
    if isinstance(message, (list, tuple)):
        text = "".join(_format_one(item) for item in message)
    else:
        text = _format_one(message)
    # A lone surrogate cannot be UTF-8; it becomes "?" rather than an error.
    return text.encode("utf-8", "replace")


# --- the stream -------------------------------------------------------------


class _Closed:
    """Returned by ``close``: await it to wait until the stream has ended."""

    __slots__ = ("_stream",)

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream

    def __await__(self) -> Generator[Any, None, None]:
        return self._stream._wait_closed().__await__()


_background_tasks: set[asyncio.Task[Any]] = set()


def _spawn(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    """A task that is kept alive until it finishes."""
    task = loop.create_task(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
    return task


def _worker_thread_loop() -> tuple[asyncio.AbstractEventLoop, int] | None:
    """The event loop (and its thread) of the AnyIO worker thread we run in, if any.

    A plain ``def`` FastAPI endpoint runs in such a thread.
    """
    try:
        import anyio.from_thread

        def where() -> tuple[asyncio.AbstractEventLoop, int]:
            return asyncio.get_running_loop(), threading.get_ident()

        return anyio.from_thread.run_sync(where)
    except Exception:
        return None


class EventStream(Response):
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
        self._state = _NEW
        self._started = False
        self._paused = False
        self._outbox: deque[bytes] = deque()
        self._held: list[bytes] = []  # pushed while paused
        self._buffered = 0
        self._queued = 0  # events put in the outbox so far
        self._written = 0  # events handed to the server so far
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._callbacks: list[Callable[[], Any]] = []
        self._wake: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._in_send = False
        self._aborting = False
        self._wake_scheduled = False
        self._send: Send | None = None
        self._last_write = 0.0
        self._timer: asyncio.TimerHandle | None = None  # ping or shutdown deadline
        self._task: asyncio.Task[Any] | None = None  # the task running the response
        self._listener: asyncio.Task[Any] | None = None
        self._producer: AsyncIterator[Any] | None = None
        self._pump: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._bind_creator()

    def _bind_creator(self) -> None:
        """Learn the loop, and arrange to close if the stream is never returned.

        In a coroutine, the stream closes when the task that made it (the
        request) ends without having sent it. In a worker thread (a plain
        ``def`` endpoint), a listener waits for the request to end instead.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            found = _worker_thread_loop()
            if found is None:
                return
            self._loop, self._thread = found
            receive = getattr(self.request, "receive", None)
            if receive is not None:
                self._loop.call_soon_threadsafe(self._start_listener, receive)
            return
        self._loop = loop
        self._thread = threading.get_ident()
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._creator_done)

    def _creator_done(self, task: asyncio.Task[Any]) -> None:
        if not self._started:
            self._finish()

    def __repr__(self) -> str:
        state = ("new", "open", "closing", "closed")[self._state]
        return f"<EventStream {state} buffered={self._buffered}>"

    # --- state ----------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """``True`` once ``close`` was called or the stream ended for any reason."""
        return self._state >= _CLOSING

    @property
    def is_paused(self) -> bool:
        """``True`` between ``pause`` and ``resume``."""
        return self._paused

    @property
    def last_event_id(self) -> str | None:
        """The request's ``Last-Event-ID`` header: the id of the last event the client saw."""
        return self.request.headers.get("last-event-id")

    @property
    def buffered_amount(self) -> int:
        """Bytes pushed and not yet handed to the server (including paused data)."""
        return self._buffered

    @property
    def namespace(self) -> str | None:
        """``None``: a stream receives publishes to its topics from every namespace."""
        return None

    # --- pushing --------------------------------------------------------

    def push(self, message: Any) -> Awaitable[None]:
        """Queue one or more events and return at once.

        ``message`` is a ``str``, an ``EventStreamMessage``, a dict with a
        ``data`` key and optional ``id``/``event``/``retry``, an sse-starlette
        ``ServerSentEvent``, any other value (sent as JSON data), or a list of
        those (several events). Await the result to wait until the bytes are
        handed to the server; before the stream is returned it resolves at
        once. Safe from any thread. Ignored after close.
        """
        if self._state >= _CLOSING:
            return DONE
        data = _encode(message)
        if not data:
            return DONE
        return self._submit(data, False)

    def push_comment(self, text: str) -> Awaitable[None]:
        """Queue a comment (``: text`` per line); clients ignore it. Like ``push`` otherwise."""
        if self._state >= _CLOSING:
            return DONE
        return self._submit(format_comment(to_text(text)).encode("utf-8", "replace"), False)

    def _submit(self, data: bytes, unpaused: bool) -> Awaitable[None]:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(self._enqueue, data, unpaused)
            return DONE
        return self._enqueue(data, unpaused)

    def _enqueue(self, data: bytes, unpaused: bool = False) -> Awaitable[None]:
        if self._state >= _CLOSING:
            return DONE
        size = len(data)
        self._buffered += size
        if self._paused and not unpaused:
            self._held.append(data)
        else:
            self._outbox.append(data)
            self._queued += 1
        if self._buffered > self.max_buffer and self._buffered > size:
            self._overflow()
            return DONE
        if self._paused and not unpaused:
            return DONE
        if self._state == _NEW:
            return DONE
        if not self._wake_scheduled and self._loop is not None:
            # Next loop turn: a caller that awaits the push writes it itself first.
            self._wake_scheduled = True
            self._loop.call_soon(self._deferred_wake)
        return Written(self._wait_written, self._queued)

    def _deferred_wake(self) -> None:
        self._wake_scheduled = False
        if self._outbox and not self._in_send:
            self._wake_writer()

    def pause(self) -> None:
        """Hold pushed events back (they stay buffered) until ``resume`` or ``flush``."""
        if self._off_loop():
            self._call_on_loop(self.pause)
            return
        self._paused = True

    def resume(self) -> Awaitable[None]:
        """Stop holding events back and send what was held (see ``flush``)."""
        if self._off_loop():
            self._call_on_loop(self.resume)
            return DONE
        self._paused = False
        return self.flush()

    def flush(self) -> Awaitable[None]:
        """Send events held by ``pause`` now; await to wait until all queued bytes are written."""
        if self._off_loop():
            self._call_on_loop(self.flush)
            return DONE
        self._release_held()
        if self._state == _NEW or self._state == _CLOSED or not self._started:
            return DONE
        return Written(self._wait_written, self._queued)

    def _release_held(self) -> None:
        if not self._held or self._state == _CLOSED:
            return
        self._outbox.extend(self._held)
        self._queued += len(self._held)
        self._held.clear()
        self._wake_writer()

    def _off_loop(self) -> bool:
        return self._loop is not None and threading.get_ident() != self._thread

    def _call_on_loop(self, func: Callable[[], Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(func)

    # --- pub/sub ----------------------------------------------------------

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
        if self._off_loop():
            self._call_on_loop(lambda: self.subscribe(topic))
            return
        if self._state == _CLOSED or topic in self.topics:
            return
        self.topics.add(topic)
        pubsub = self.pubsub
        last_id = self.last_event_id
        if last_id:
            subscribe_from = getattr(pubsub, "subscribe_from", None)
            if subscribe_from is not None:
                subscribe_from(topic, self, last_id)
                return
            replay = getattr(pubsub, "replay", None)
            if replay is not None:
                try:
                    missed = replay(topic, last_id)
                except Exception:
                    logger.exception("h3_fastapi: replay of topic %r failed", topic)
                    missed = []
                for outgoing in missed:
                    self._deliver(outgoing)
        pubsub.subscribe(topic, self)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving publishes to ``topic``."""
        if self._off_loop():
            self._call_on_loop(lambda: self.unsubscribe(topic))
            return
        if topic in self.topics:
            self.topics.discard(topic)
            self.pubsub.unsubscribe(topic, self)

    def _deliver(self, outgoing: Outgoing) -> None:
        """Pub/sub entry point (any thread): push the publish as an event with its id."""
        if self._state >= _CLOSING:
            return
        text = format_event(to_text(outgoing.data), outgoing.id)
        self._submit(text.encode("utf-8", "replace"), False)

    # --- closing --------------------------------------------------------

    def close(self) -> Awaitable[None]:
        """End the stream after sending what is queued (held data too). Idempotent.

        Await the result to wait until the response has ended; before the
        stream is returned it resolves at once (the stream then ends right
        after its queued events once returned). Safe from any thread.
        """
        if self._off_loop():
            self._call_on_loop(self._close)
            return DONE
        self._close()
        if not self._started or self._state == _CLOSED:
            return DONE
        return _Closed(self)

    def _close(self) -> None:
        if self._state >= _CLOSING:
            return
        self._paused = False
        self._release_held()
        self._state = _CLOSING
        self._wake_writer()

    def on_closed(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``callback()`` (sync or async) once when the stream ends, for any reason.

        That is after ``close`` has sent what was queued, when the client
        leaves, at server shutdown, on overflow, or when the stream was never
        returned. Registered after the end, it runs soon. Exceptions are
        logged, never raised. Returns ``callback`` (usable as a decorator).
        """
        if self._off_loop():
            self._call_on_loop(lambda: self.on_closed(callback))
        elif self._state == _CLOSED:
            self._run_callbacks([callback])
        else:
            self._callbacks.append(callback)
        return callback

    def send(self) -> EventStream:
        """This stream, for the h3 1.x style ``return stream.send()``."""
        return self

    async def _wait_closed(self) -> None:
        if self._done is not None and not self._done.done():
            await asyncio.shield(self._done)

    async def _wait_written(self, seq: int) -> None:
        if self._written >= seq or self._state == _CLOSED or self._loop is None:
            return
        if not self._in_send and self._send is not None and self._wake is not None:
            # The writer is parked: write from the awaiting task, no task hand-off.
            await self._write_inline(self._send)
            # A send that did not block never yielded: give other tasks a turn,
            # or a producer that never waits for anything would starve the loop.
            await asyncio.sleep(0)
            if self._written >= seq or self._state == _CLOSED:
                return
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((seq, future))
        await future

    def _release_waiters(self) -> None:
        written = self._written
        self._waiters = release_reached(self._waiters, lambda seq: seq <= written)

    def _wake_writer(self) -> None:
        wake, self._wake = self._wake, None
        resolve(wake)

    def _overflow(self) -> None:
        logger.warning(
            "h3_fastapi: event stream client is not reading; over max_buffer=%d bytes, closing",
            self.max_buffer,
        )
        self._abort()

    def _abort(self) -> None:
        """End now, dropping what is queued; interrupt a write that is stuck."""
        if self._state == _CLOSED:
            return
        stuck = self._in_send
        self._finish()
        task = self._task
        if stuck and task is not None and not task.done():
            self._aborting = True
            task.cancel()

    def _finish(self) -> None:
        """Mark the stream ended, free its buffers, leave its topics, run ``on_closed``."""
        if self._state == _CLOSED:
            return
        if self._off_loop():
            self._call_on_loop(self._finish)
            return
        self._state = _CLOSED
        self._outbox.clear()
        self._held.clear()
        self._buffered = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.topics:
            pubsub = self.pubsub
            for topic in self.topics:
                pubsub.unsubscribe(topic, self)
            self.topics.clear()
        for _, future in self._waiters:
            resolve(future)
        self._waiters.clear()
        self._wake_writer()
        current = _current_task()
        for task in (self._pump, self._listener):
            if task is not None and task is not current and not task.done():
                task.cancel()
        if self._started:
            _shutdown.remove_server_exit(self)
        resolve(self._done)
        callbacks, self._callbacks = self._callbacks, []
        self._run_callbacks(callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[], Any]]) -> None:
        if not callbacks:
            return
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None or loop.is_closed():
            for callback in callbacks:  # no loop at all: sync callbacks still run
                try:
                    result = callback()
                    if inspect.iscoroutine(result):
                        result.close()
                        logger.warning("h3_fastapi: async on_closed callback needs a loop")
                except Exception:
                    logger.exception("h3_fastapi: event stream on_closed callback raised")
            return
        if threading.get_ident() != self._thread and self._loop is not None:
            loop.call_soon_threadsafe(self._run_callbacks, callbacks)
            return
        _spawn(loop, _call_all(callbacks))

    # --- the response -----------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._started:
            raise RuntimeError("this EventStream was already sent; make one per request")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._thread = threading.get_ident()
        self._task = asyncio.current_task()
        self._done = loop.create_future()
        completed = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            self._last_write = loop.time()
            if scope.get("method") == "HEAD" or self._state == _CLOSED:
                # Headers only (HEAD), or ended before it was sent (overflow).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                completed = True
            else:
                completed = await self._stream(receive, send, loop)
        except asyncio.CancelledError:
            if not self._aborting:
                self._finish()
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
        if completed and self.background is not None:
            await self.background()

    async def _stream(self, receive: Receive, send: Send, loop: asyncio.AbstractEventLoop) -> bool:
        """Start the helpers (listener, heartbeat, generator) and write until closed."""
        if self._state == _NEW:
            self._state = _OPEN
        _shutdown.on_server_exit(self, self._server_exit)
        if self._listener is None or self._listener.done():
            self._listener = loop.create_task(self._listen(receive))
        if self.ping_interval:
            self._timer = loop.call_later(self.ping_interval, self._ping_due)
        if self._producer is not None:
            self._pump = _spawn(loop, self._run_producer(self._producer))
        return await self._write_loop(send, loop)

    async def _write_inline(self, send: Send) -> None:
        """Write the outbox from the calling task (the writer is parked)."""
        outbox = self._outbox
        try:
            while outbox and not self._in_send and self._state != _CLOSED:
                if len(outbox) == 1:
                    chunk = outbox.popleft()
                    count = 1
                else:
                    chunk = b"".join(outbox)
                    count = len(outbox)
                    outbox.clear()
                self._in_send = True
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                finally:
                    self._in_send = False
                if self._state == _CLOSED:
                    return
                self._buffered -= len(chunk)
                self._written += count
                if self._waiters:
                    self._release_waiters()
        finally:
            if self._outbox or self._state >= _CLOSING:
                self._wake_writer()

    async def _write_loop(self, send: Send, loop: asyncio.AbstractEventLoop) -> bool:
        """Drain the outbox until closed; ``True`` when the response was ended normally."""
        outbox = self._outbox
        self._send = send
        while True:
            if outbox and not self._in_send:
                if len(outbox) == 1:
                    chunk = outbox.popleft()
                    count = 1
                else:  # the client is behind: one send for everything waiting
                    chunk = b"".join(outbox)
                    count = len(outbox)
                    outbox.clear()
                timer = None
                if self.send_timeout is not None:
                    timer = loop.call_later(self.send_timeout, self._send_timed_out)
                self._in_send = True
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                finally:
                    self._in_send = False
                    if timer is not None:
                        timer.cancel()
                if self._state == _CLOSED:
                    return False
                self._buffered -= len(chunk)
                self._written += count
                self._last_write = loop.time()
                if self._waiters:
                    self._release_waiters()
                continue
            if self._state == _CLOSED:
                return False
            if self._state == _CLOSING and not self._in_send:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            await wake

    async def _listen(self, receive: Receive) -> None:
        """Wait for ``http.disconnect`` (client gone, or the request ended unsent)."""
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("h3_fastapi: event stream receive failed: %r", exc)
            if not self._started:
                return  # nothing to watch with; the response will listen itself
        self._abort()

    def _ping_due(self) -> None:
        self._timer = None
        interval = self.ping_interval
        loop = self._loop
        if self._state != _OPEN or not interval or loop is None:
            return
        idle = loop.time() - self._last_write
        if idle >= interval * 0.99 and not self._outbox and not self._in_send:
            self._enqueue(_PING, True)
            delay = interval
        else:
            delay = max(interval - idle, interval * 0.01)
        if self._state == _OPEN:
            self._timer = loop.call_later(delay, self._ping_due)

    def _send_timed_out(self) -> None:
        if self._in_send and self._state != _CLOSED:
            logger.warning(
                "h3_fastapi: event stream write blocked over send_timeout=%ss, closing",
                self.send_timeout,
            )
            self._abort()

    def _server_exit(self) -> Awaitable[None] | None:
        """Server shutdown: end gracefully, but cut a client that is not reading."""
        if self._state == _CLOSED or self._loop is None:
            return None
        self._close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(SHUTDOWN_FLUSH_TIMEOUT, self._abort)
        return self._wait_closed()

    def _start_listener(self, receive: Receive) -> None:
        if self._listener is None and self._state != _CLOSED and self._loop is not None:
            self._listener = self._loop.create_task(self._listen(receive))

    async def _run_producer(self, producer: AsyncIterator[Any]) -> None:
        """Push what an ``@event_stream`` generator yields; close it when the stream ends."""
        try:
            async for item in producer:
                if self._state != _OPEN:
                    break
                written = self.push(item)
                # Back-pressure by bytes, not per event: events pile up in the
                # outbox and the writer sends them in one ASGI send.
                if self._buffered >= _PRODUCER_HIGH_WATER:
                    await written
                if self._state != _OPEN:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("h3_fastapi: event stream generator raised")
        finally:
            aclose = getattr(producer, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("h3_fastapi: closing the event stream generator failed")
            if self._state < _CLOSING:
                self._close()


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


# --- @event_stream ----------------------------------------------------------

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
        stream = EventStream(request, **options)
        stream._producer = generator_function(*bound.args, **bound.kwargs)
        return stream

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
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # one name only imported under TYPE_CHECKING: resolve the others
        hints = {}
    params: list[inspect.Parameter] = []
    request_name: str | None = None
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if isinstance(annotation, str):
            annotation = _evaluate(annotation, func)
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


def _evaluate(annotation: str, func: Callable[..., Any]) -> Any:
    """A string annotation evaluated in ``func``'s module (as FastAPI would), else as is."""
    try:
        return eval(annotation, getattr(func, "__globals__", {}))
    except Exception:
        return annotation
