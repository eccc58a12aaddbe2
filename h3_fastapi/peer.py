"""A connected WebSocket client (crossws ``Peer``) and its outgoing buffer.

Every peer owns an ``outbox``: ``send`` appends to it at once (from a sync hook,
an async hook or another thread) and one writer drains it into the ASGI
``send``. The outbox is bounded; a peer that cannot keep up is closed with
1013 instead of growing memory or slowing the publisher.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, KeysView
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Send

from ._compat import Written, release_reached, resolve, uncancel
from ._hooks import logger
from .pubsub import DONE, Outgoing, PubSub

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from .websocket import WebSocketHandler

__all__ = ["CloseDetails", "Peer"]

_OPEN, _CLOSING, _CLOSED = 0, 1, 2

# Seconds a closing peer may take to get its close frame out before it is cut.
CLOSE_TIMEOUT = 3.0


@dataclass(frozen=True)
class CloseDetails:
    """Why a connection ended: the WebSocket close ``code`` and ``reason``.

    1000 normal, 1001 going away, 1005 no code given, 1006 dropped without a
    close frame, 1009 message too big, 1011 server error, 1012 server restart,
    1013 send buffer full.
    """

    code: int = 1005
    reason: str = ""


class Peer:
    """One WebSocket connection, as hooks see it.

    ``send``/``publish`` queue data at once and return an awaitable; nothing
    is lost by not awaiting it. ``str(peer)`` is its ``id``.
    """

    __slots__ = (
        "__weakref__",
        "_buffered",
        "_close_request",
        "_close_timer",
        "_dispatching",
        "_drainers",
        "_error_sink",
        "_flushing_task",
        "_handler",
        "_id",
        "_in_receive",
        "_limit",
        "_loop",
        "_main",
        "_outbox",
        "_pubsub",
        "_queued",
        "_reader",
        "_receive",
        "_send",
        "_state",
        "_terminated",
        "_thread",
        "_topics",
        "_waiters",
        "_wake",
        "_wake_scheduled",
        "_websocket",
        "_writing",
        "_written",
        "close_details",
        "context",
        "namespace",
        "request",
    )

    def __init__(
        self,
        *,
        request: Request,
        receive: Receive,
        send: Send,
        namespace: str,
        context: dict[str, Any],
        pubsub: PubSub,
        handler: WebSocketHandler | None = None,
        send_buffer_limit: int = 4 * 1024 * 1024,
        websocket: WebSocket | None = None,
    ) -> None:
        self.request = request
        self.namespace: str = namespace
        self.context = context
        self._topics: set[str] | None = None  # made on first subscribe
        self.close_details: CloseDetails | None = None
        self._id: str | None = None
        self._handler = handler
        self._pubsub = pubsub
        self._receive = receive
        self._send = send
        self._websocket = websocket
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # Made on first send: an idle peer keeps no deque (~0.6 KiB) or lists.
        self._outbox: deque[Outgoing] | tuple[()] = ()
        self._buffered = 0
        self._limit = send_buffer_limit
        self._queued = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] | tuple[()] = ()
        self._drainers: list[tuple[int, asyncio.Future[None]]] | tuple[()] = ()
        self._wake: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        self._writing = False
        self._dispatching = False
        self._in_receive = False
        self._flushing_task: asyncio.Task[Any] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._state = _OPEN
        self._close_request: tuple[int, str] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._terminated = False
        # Set by the handler: where transport failures go (the ``error`` hook).
        self._error_sink: Callable[[Exception], None] | None = None

    # --- identity -------------------------------------------------------

    @property
    def id(self) -> str:
        """A random uuid4 string, made on first use."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r} {self.remote_address}>"

    @property
    def remote_address(self) -> str | None:
        """The client's IP address, when the server reports it."""
        client = self.request.scope.get("client")
        return client[0] if client else None

    @property
    def websocket(self) -> WebSocket:
        """The Starlette ``WebSocket`` for this connection (for lower-level access)."""
        if self._websocket is None:
            from starlette.websockets import WebSocket

            scope = dict(self.request.scope, type="websocket")
            self._websocket = WebSocket(scope, self._receive, self._send)
        return self._websocket

    @property
    def peers(self) -> KeysView[Peer]:
        """Open peers of this namespace in this process, in connection order."""
        if self._handler is None:
            return {self: None}.keys() if self._state == _OPEN else {}.keys()
        return self._handler._namespace_peers(self.namespace)

    @property
    def topics(self) -> set[str]:
        """The topics this peer is subscribed to."""
        if self._topics is None:
            self._topics = set()
        return self._topics

    @property
    def is_open(self) -> bool:
        """``True`` until ``close``/``terminate`` is called or the client leaves."""
        return self._state == _OPEN

    # --- sending --------------------------------------------------------

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this peer and not yet handed to the server."""
        return self._buffered

    def send(self, data: Any) -> Awaitable[None]:
        """Queue ``data`` for this peer (see the serialisation rules) and return at once.

        Await the result to wait until it is written. Safe from any thread.
        After close, data is dropped silently.
        """
        if self._state:
            return DONE
        if data.__class__ is str:  # the common case, without the serialiser
            outgoing = Outgoing(data)
        else:
            outgoing = data if isinstance(data, Outgoing) else Outgoing.encode(data)
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._enqueue, outgoing)
            return DONE
        return self._enqueue(outgoing)

    def publish(self, topic: str, data: Any) -> Awaitable[None]:
        """Send ``data`` to every subscriber of ``topic`` in this namespace except this peer."""
        return self._pubsub.publish(topic, data, namespace=self.namespace, exclude=self)

    def subscribe(self, topic: str) -> None:
        """Receive publishes to ``topic``."""
        if self._state == _CLOSED or topic in self.topics:
            return
        self.topics.add(topic)
        self._pubsub.subscribe(topic, self)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving publishes to ``topic``."""
        if self._topics and topic in self._topics:
            self._topics.discard(topic)
            self._pubsub.unsubscribe(topic, self)

    async def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> None:
        """Wait until at most ``threshold`` bytes are queued, or the peer is closed.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        if self._buffered <= threshold or self._state == _CLOSED:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        if not self._drainers:
            self._drainers = []
        self._drainers.append((threshold, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if not future.done():
                future.cancel()
                self._drainers = [d for d in self._drainers if d[1] is not future]

    # --- closing --------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued has been sent. Safe from any thread."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.close, code, reason)
            return
        if self._state:
            return
        self._state = _CLOSING
        self._close_request = (code, reason)
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self.terminate)
        self._wake_writer()

    def terminate(self) -> None:
        """Drop the connection now, without waiting for queued data."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.terminate)
            return
        if self._state == _CLOSED:
            return
        code, reason = self._close_request or (1006, "terminated")
        self._terminated = True
        task = self._flushing_task if self._writing else None
        self._finish(code, reason)
        if task is not None and not task.done():
            task.cancel()

    # --- internals used by the handler and the pub/sub ---------------------

    def _deliver(self, outgoing: Outgoing) -> None:
        """Pub/sub entry point: queue a published frame (any thread)."""
        if self._state:
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._enqueue, outgoing)
        else:
            self._enqueue(outgoing)

    deliver = _deliver  # pubsub's Subscriber.deliver (pubsub branch; the core adds it)

    def _enqueue(self, outgoing: Outgoing) -> Awaitable[None]:
        if self._state:
            return DONE
        outbox = self._outbox
        if outbox.__class__ is not deque:
            outbox = self._outbox = deque()
        outbox.append(outgoing)
        self._buffered += outgoing.size
        self._queued += 1
        if self._buffered > self._limit and len(outbox) > 1:
            self._overflow()
            return DONE
        if not self._writing and not self._dispatching and not self._wake_scheduled:
            # Wake the writer on the next loop turn, not now: when the caller
            # awaits the send (or the reader flushes after the hook), the outbox
            # is empty by then and the writer task does not run at all.
            self._wake_scheduled = True
            self._loop.call_soon(self._deferred_wake)
        return Written(self._wait_written, self._queued)

    def _deferred_wake(self) -> None:
        self._wake_scheduled = False
        if self._outbox and not self._writing:
            self._wake_writer()

    def _wake_writer(self) -> None:
        wake, self._wake = self._wake, None
        resolve(wake)

    def _overflow(self) -> None:
        logger.warning(
            "h3_fastapi: peer %s is not reading; send buffer over %d bytes, closing 1013",
            self.id,
            self._limit,
        )
        # Free the memory now; the frame being written (if any) stays referenced
        # by the writer until it returns.
        if self._outbox:
            self._outbox.clear()
        self._buffered = 0
        self._state = _CLOSING
        self._close_request = (1013, "send buffer full")
        self._close_timer = self._loop.call_later(1.0, self.terminate)
        self._wake_writer()

    async def _flush(self, task: asyncio.Task[Any] | None = None) -> None:
        """Write the outbox in order; only one task (``task``, the caller) writes at a time."""
        self._writing = True
        self._flushing_task = task if task is not None else asyncio.current_task(self._loop)
        outbox = self._outbox
        send = self._send
        try:
            while outbox:
                outgoing = outbox[0]
                await send(outgoing.message)
                if outbox and outbox[0] is outgoing:
                    outbox.popleft()
                    self._buffered -= outgoing.size
                self._written += 1
                if self._waiters:
                    self._release_waiters()
                if self._drainers:
                    self._release_drainers()
        except asyncio.CancelledError:
            if not self._terminated:
                raise
            uncancel()
        except Exception as exc:  # the transport is gone
            logger.debug("h3_fastapi: send to peer %s failed: %r", self._id, exc)
            self._finish(1006, "")
            self._transport_failed(exc)
        finally:
            self._writing = False
            self._flushing_task = None
            if self._state:
                self._wake_writer()

    def _release_waiters(self) -> None:
        written = self._written
        self._waiters = release_reached(self._waiters, lambda seq: seq <= written)

    def _release_drainers(self) -> None:
        buffered = self._buffered
        self._drainers = release_reached(self._drainers, lambda bound: buffered <= bound)

    async def _wait_written(self, seq: int) -> None:
        if self._written >= seq or self._state == _CLOSED:
            return
        if not self._writing:
            task = asyncio.current_task(self._loop)
            if task is self._reader or task is self._main:
                await self._flush(task)
            if self._written >= seq or self._state == _CLOSED:
                return
        future: asyncio.Future[None] = self._loop.create_future()
        if not self._waiters:
            self._waiters = []
        self._waiters.append((seq, future))
        self._wake_writer()
        await future

    async def _write_loop(self) -> None:
        """The writer: drain the outbox until the peer is closed, then send the close frame."""
        loop = self._loop
        try:
            while self._state != _CLOSED:
                if self._outbox and not self._writing:
                    await self._flush(self._main)
                    continue
                if self._state == _CLOSING and not self._writing:
                    code, reason = self._close_request or (1000, "")
                    try:
                        await self._send(
                            {"type": "websocket.close", "code": code, "reason": reason}
                        )
                    except Exception:
                        pass
                    self._finish(code, reason)
                    return
                self._wake = loop.create_future()
                await self._wake
        except asyncio.CancelledError:
            if not self._terminated:
                raise
            uncancel()

    def _transport_failed(self, exc: Exception) -> None:
        """Report a failure that is not a plain disconnect (``OSError``) to the error hook."""
        if self._error_sink is not None and not isinstance(exc, OSError):
            self._error_sink(exc)

    def _finish(self, code: int, reason: str) -> None:
        """Mark the peer closed and leave every topic and peer list at once."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_details = CloseDetails(code, reason)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._outbox:
            self._outbox.clear()
        self._buffered = 0
        if self._topics:
            for topic in self._topics:
                self._pubsub.unsubscribe(topic, self)
            self._topics.clear()
        if self._handler is not None:
            self._handler._remove_peer(self)
        for waiting in (self._waiters, self._drainers):
            for _, future in waiting:
                resolve(future)
        self._waiters = ()
        self._drainers = ()
        self._wake_writer()
        if self._in_receive and self._reader is not None:
            self._reader.cancel()
