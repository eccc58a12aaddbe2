"""One WebSocket connection after the handshake, owned by one object.

``_Connection`` is the private record behind a public ``Peer`` (as crossws's
``Peer`` sits over its ``_internal``): its state machine, its outbox (it *is*
an ``Outbox``, so an idle peer costs two small slotted objects), its reader
task that runs ``open`` and ``message``, and its writer loop on the
connection's own task. Nothing else touches its fields.

Also here: the normalised result of the ``upgrade`` hook (``Upgrade``), the
handshake denial, and ``PeerTable``, the open peers of one handler with the
``max_peers`` slots reserved at connect.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import operator
import types
from collections.abc import Awaitable, Iterable, KeysView, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Send

from . import _shutdown
from ._compat import Written, spawn, uncancel
from ._frames import FRAMES_EXTENSION
from ._hooks import Hooks, call_in_thread, logger
from ._ops import ops
from ._outbox import Outbox
from ._rejection import deny, exception_response
from ._websocket_view import PeerWebSocket
from .message import Message
from .peer import CloseDetails, Peer, UpgradeRequest
from .pubsub import DONE, Outgoing, PubSub

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from ._ops import PeerWatch
    from .limits import RateLimit

__all__ = ["CLOSE_TIMEOUT", "ConnectionState", "PeerTable", "Upgrade", "deny", "upgrade_result"]

# Seconds a closing peer may take to get its close frame out before it is cut.
CLOSE_TIMEOUT = 3.0

# Awaitables that only say "queued": the reader flushes after the hook anyway.
_QUEUED = (Written, type(DONE))
_Coroutine = types.CoroutineType


class ConnectionState(enum.Enum):
    """Where a connection is; it only moves forward (``OPEN`` -> ``CLOSING`` -> ``CLOSED``)."""

    OPEN = 0
    CLOSING = 1
    CLOSED = 2


_OPEN, _CLOSING, _CLOSED = ConnectionState


class Upgrade:
    """What the ``upgrade`` hook decided, whatever shape it gave its answer in."""

    __slots__ = ("context", "headers", "namespace", "protocol", "rejection")

    def __init__(
        self,
        *,
        rejection: Response | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        protocol: str | None = None,
        namespace: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.rejection = rejection
        self.headers = headers
        self.protocol = protocol
        self.namespace = namespace
        self.context = context

    def accept_message(self) -> dict[str, Any]:
        """The ASGI ``websocket.accept`` event."""
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if self.headers:
            accept["headers"] = self.headers
        if self.protocol:
            accept["subprotocol"] = self.protocol
        return accept


def upgrade_result(outcome: Any) -> Upgrade:
    """Normalise what ``upgrade`` returned or raised into one ``Upgrade``.

    ``None``/``{}`` accepts; a dict may carry ``headers``, ``protocol``,
    ``namespace`` and ``context``; a ``Response`` rejects with it; an exception
    rejects with the response it stands for (``HTTPException``, or a
    ``response`` attribute holding a ``Response``), else with a logged 500.
    """
    if outcome is None:
        return Upgrade()
    if isinstance(outcome, Response):
        return Upgrade(rejection=outcome)
    if isinstance(outcome, BaseException):
        rejection = exception_response(outcome)
        if rejection is None:
            logger.error("h3_fastapi: WebSocket upgrade hook raised", exc_info=outcome)
            rejection = PlainTextResponse("Internal Server Error", status_code=500)
        return Upgrade(rejection=rejection)
    if not isinstance(outcome, Mapping):
        error = TypeError(f"upgrade hook must return None, a dict or a Response: {outcome!r}")
        return upgrade_result(error)
    protocol = outcome.get("protocol")
    namespace = outcome.get("namespace")
    return Upgrade(
        headers=_header_pairs(outcome.get("headers")),
        protocol=str(protocol) if protocol else None,
        namespace=str(namespace) if namespace else None,
        context=outcome.get("context") or None,
    )


def _header_pairs(headers: Any) -> list[tuple[bytes, bytes]] | None:
    if not headers:
        return None
    items: Iterable[tuple[str, str]]
    if isinstance(headers, Mapping):
        items = headers.items()
    elif hasattr(headers, "multi_items"):
        items = headers.multi_items()
    else:
        items = headers
    return [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in items]


class PeerTable:
    """The open peers of one handler by namespace, and the ``max_peers`` slots in use.

    A slot is reserved when a client connects, before any hook is awaited, so
    concurrent upgrades cannot get past the limit; it is released when the
    handshake is rejected or the connection closes.
    """

    __slots__ = ("_by_namespace", "_slots")

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[Peer, _Connection]] = {}
        self._slots = 0

    def reserve(self, limit: int | None) -> bool:
        """Take a slot for a connecting client; ``False`` when all ``limit`` are taken."""
        if limit is not None and self._slots >= limit:
            return False
        self._slots += 1
        return True

    def release(self) -> None:
        """Give back a slot whose handshake did not become a connection."""
        self._slots -= 1

    def add(self, connection: _Connection) -> None:
        """An accepted connection takes over its reserved slot."""
        self._by_namespace.setdefault(connection.peer.namespace, {})[connection.peer] = connection
        try:
            _shutdown.on_server_exit(self, self._on_server_exit)
        except RuntimeError:  # pragma: no cover - no running loop
            pass

    def remove(self, peer: Peer) -> None:
        """A closed peer leaves its namespace and frees its slot."""
        peers = self._by_namespace.get(peer.namespace)
        if peers is None or peers.pop(peer, None) is None:
            return
        self._slots -= 1
        if not peers:
            del self._by_namespace[peer.namespace]
            if not self._by_namespace:
                _shutdown.remove_server_exit(self)

    def of(self, namespace: str) -> KeysView[Peer]:
        """Open peers of ``namespace``, in connection order (a snapshot)."""
        return dict.fromkeys(self._by_namespace.get(namespace, ())).keys()

    def by_namespace(self) -> dict[str, KeysView[Peer]]:
        """Open peers by namespace (snapshots)."""
        return {ns: dict.fromkeys(peers).keys() for ns, peers in self._by_namespace.items()}

    def close_all(self, code: int, reason: str) -> list[_Connection]:
        """Close every open peer; the connections, to wait for."""
        connections = [c for peers in self._by_namespace.values() for c in peers.values()]
        for connection in connections:
            connection.close(code, reason)
        return connections

    def _on_server_exit(self) -> Awaitable[None]:
        """Server shutdown: tell every peer we are going away (1001)."""
        return _wait_closed(self.close_all(1001, "server shutting down"))


async def _wait_closed(connections: list[_Connection]) -> None:
    tasks = {c.main for c in connections if c.main is not None and not c.main.done()}
    if tasks:
        await asyncio.wait(tasks)


class _Connection(Outbox[Outgoing]):
    """The record behind a ``Peer``: state, outbox, reader and writer of one connection."""

    _size = operator.attrgetter("size")
    _to_message = operator.attrgetter("message")
    _to_frame = operator.attrgetter("frame")

    __slots__ = (
        "close_details",
        "close_request",
        "close_timer",
        "drain_at",
        "failure",
        "hooks",
        "in_receive",
        "in_thread",
        "main",
        "max_message_size",
        "observed",
        "peer",
        "peers",
        "protocol",
        "pubsub",
        "reader",
        "receive",
        "scope",
        "state",
        "terminated",
        "topics",
        "watch",
        "websocket",
    )

    def __init__(
        self,
        *,
        scope: Mapping[str, Any],
        request: UpgradeRequest | None,
        receive: Receive,
        send: Send,
        namespace: str,
        hooks: Hooks,
        peers: PeerTable,
        pubsub: PubSub,
        send_buffer_limit: int,
        max_message_size: int | None,
        websocket: WebSocket | None,
        protocol: str | None = None,
        drain_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(send_buffer_limit, asyncio.get_running_loop())
        self.scope = scope
        self.receive = receive
        self.send = send
        # ``peer.send`` writes in the caller's turn when nothing is queued
        # (``Outbox.write``). Only for an ``async def`` send (every server's we
        # know); another awaitable is not stepped by hand.
        self._eager = inspect.iscoroutinefunction(send)
        # A server that takes encoded frames (h3_fastapi.uvicorn_protocol): a reply or
        # a publish is written there and then, the publish's frame encoded once.
        frames = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
        if frames is not None:
            self._frames = frames["write"]
            self._frames_batched = frames.get("batch", self._frames)
        self.websocket = websocket
        self.hooks = hooks
        self.in_thread = "message" in hooks.threaded
        self.peers = peers
        self.pubsub = pubsub
        self.max_message_size = max_message_size
        self.protocol = protocol
        # The ``drain`` hook fires when the buffer empties after reaching ``drain_at`` bytes.
        self.drain_at = drain_threshold if hooks.drain is not None else None
        self.state = _OPEN
        self.close_request: tuple[int, str] | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.close_details: CloseDetails | None = None
        self.terminated = False
        # A transport failure for the ``error`` hook, reported before ``close`` (``run``).
        self.failure: Exception | None = None
        self.in_receive = False
        self.topics: set[str] | None = None  # made on first subscribe
        self.reader: asyncio.Task[Any] | None = None
        self.main: asyncio.Task[Any] | None = None
        self.peer = Peer(self, namespace, request)
        # ops: metrics, rate limit, span (_ops.py); None when none is enabled.
        self.watch: PeerWatch | None = None
        if ops.on or rate_limit is not None:
            self.watch = ops.watch(self, scope, rate_limit)
        # Ops or ``drain`` see every queued frame (``queue``); else ``Peer`` calls ``put``.
        self.observed = self.watch is not None or self.drain_at is not None

    def _move(self, state: ConnectionState) -> None:
        """Change state; the state only moves forward."""
        if state.value <= self.state.value:
            raise RuntimeError(f"WebSocket connection cannot go from {self.state} to {state}")
        self.state = state

    async def run(self) -> None:
        """Serve the accepted connection: write its outbox until it ends, then run ``close`` once.

        The reader task runs ``open`` first, so this task is already writing
        while it runs (``await peer.wait_for_drain()`` works in ``open``).
        The write loop is inlined here: an idle peer keeps one frame less.
        """
        main = self.main = asyncio.current_task()
        self.peers.add(self)
        try:
            self.reader = asyncio.create_task(self._read_loop())
            while self.state is not _CLOSED:
                if self._items and not self._writing:
                    await self.write_pending(main or True)  # a task, never ``True``
                elif self.state is _CLOSING and not self._writing:
                    await self._send_close()
                    break
                else:
                    await self.park()
        except asyncio.CancelledError:
            if not self.terminated:
                raise
            uncancel()
        finally:
            if self.state is not _CLOSED:
                self._finish(1006, "")
            await self._stop_reader()
            if self.failure is not None:
                await self.hooks.failed(self.peer, "transport", self.failure)
            await self.hooks.call("close", self.peer, self.close_details)

    async def _read_loop(self) -> None:
        """Run ``open``, then receive frames and dispatch them, one at a time."""
        receive = self.receive
        hooks = self.hooks
        try:
            if hooks.open is not None:
                await hooks.call("open", self.peer)
                if self._items and not self._writing:
                    await self.flush()
            while self.state is not _CLOSED:
                self.in_receive = True
                event = await receive()
                self.in_receive = False
                if event["type"] == "websocket.receive":
                    result = self.dispatch(event)
                    if result is not None:
                        try:
                            await result
                        except Exception as exc:
                            await hooks.failed(self.peer, "message", exc)
                    if self._items and not self._writing:
                        await self.flush()
                elif event["type"] == "websocket.disconnect":
                    self._disconnected(event)
                    return
        except asyncio.CancelledError:
            if self.state is not _CLOSED:
                raise
        except Exception as exc:  # the server's receive failed: treat as a drop
            logger.debug("h3_fastapi: receive failed for peer %s: %r", self.peer, exc)
            self._finish(1006, "")
            self._transport_failed(exc)

    def dispatch(self, event: Mapping[str, Any]) -> Awaitable[Any] | None:
        """The one place a received frame reaches the ``message`` hook.

        Runs the hook's synchronous part; returns what is left to await (an
        async hook's coroutine, or the error routing of a hook that raised).
        """
        if self.state is not _OPEN:
            return None
        data = event.get("text")
        if data is None:
            data = event.get("bytes") or b""
        limit = self.max_message_size
        if limit is not None and len(data) * 4 > limit and _too_big(data, limit):
            self.close(1009, "message too big")
            return None
        if self.watch is not None and not self.watch.received(self, data):  # ops
            return None
        on_message = self.hooks.message
        if on_message is None:
            return None
        message = Message(data, self.peer, event)
        if self.in_thread:  # a ``def`` hook: in the threadpool, awaited by the reader
            return call_in_thread(on_message, self.peer, message)
        # A sync hook's sends need no wake-up: the reader flushes right after it.
        self._hold_wake = True
        try:
            result = on_message(self.peer, message)
        except Exception as exc:
            return self.hooks.failed(self.peer, "message", exc)
        finally:
            self._hold_wake = False
        if result is None or result.__class__ in _QUEUED:
            return None
        if result.__class__ is _Coroutine or inspect.isawaitable(result):
            return result
        return None

    def _disconnected(self, event: Mapping[str, Any]) -> None:
        # After our own close the details are what we asked for, whatever the
        # server reports for the reply (granian 1005, hypercorn 1006).
        code, reason = self.close_request or (
            int(event.get("code") or 1005),
            event.get("reason") or "",
        )
        self._finish(code, reason)

    async def _send_close(self) -> None:
        code, reason = self.close_request or (1000, "")
        # A client that stops reading holds this send (flow control): as a write under
        # way, ``terminate`` (the close timeout) cancels it and the connection ends.
        self._writing = self.main
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:  # the client is gone already
            pass
        finally:
            self._writing = None
        self._finish(code, reason)

    # The reader writes the outbox itself after each hook: ``writing`` is then
    # ``True`` (the reader), and ``terminate`` knows whom to cancel.
    flush = Outbox.write_pending

    def _write_failed(self, exc: BaseException) -> bool:
        if isinstance(exc, asyncio.CancelledError):
            if not self.terminated:
                return False
            uncancel()
            return True
        logger.debug("h3_fastapi: send to peer %s failed: %r", self.peer, exc)
        self._finish(1006, "")
        self._transport_failed(exc)  # type: ignore[arg-type]
        return True

    def _writer_here(self) -> asyncio.Task[Any] | bool | None:
        task = asyncio.current_task(self._loop)
        if task is self.reader:
            return True  # as in ``flush``
        return task if task is self.main else None

    def _drained(self) -> None:
        # A write ended with the queue empty while ``drain`` was armed (``queue``).
        if self._buffered < self.drain_at:  # type: ignore[operator]
            self._drain_armed = False
            spawn(self.hooks.call("drain", self.peer), what="WebSocket drain hook")

    async def _stop_reader(self) -> None:
        reader = self.reader
        if reader is None or reader.done():
            return
        if self.in_receive:
            reader.cancel()
        done, _ = await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT)
        if not done:
            reader.cancel()
            await asyncio.wait({reader})

    @property
    def is_open(self) -> bool:
        """Neither closing nor closed."""
        return self.state is _OPEN

    def starlette_websocket(self) -> PeerWebSocket:
        """The peer's accepted Starlette ``WebSocket`` with the WHATWG view, made on first use."""
        view = self.websocket
        if not isinstance(view, PeerWebSocket):
            scope = dict(view.scope if view is not None else self.scope, type="websocket")
            scope["scheme"] = "wss" if scope.get("scheme") in ("https", "wss") else "ws"
            view = self.websocket = PeerWebSocket(self, scope)
        return view

    def ready_state(self) -> int:
        """The WHATWG ``readyState``: 1 open, 2 closing, 3 closed."""
        return self.state.value + 1

    def subscribed(self) -> set[str]:
        """The topics of this peer (the set is made on first use)."""
        if self.topics is None:
            self.topics = set()
        return self.topics

    def queue(self, outgoing: Outgoing, now: bool = False) -> Awaitable[None]:
        """Queue an encoded frame unless closing, seen by ops and the drain hook; any thread.

        ``Peer`` comes here only when ``observed``; else it calls ``write`` (``now``)
        or ``put`` directly.
        """
        if self.state is not _OPEN:
            return DONE
        if self.watch is not None:  # ops
            self.watch.sent(outgoing)
        size = outgoing.size
        written = self.write(outgoing, size) if now else self.put(outgoing, size)
        if self.drain_at is not None and self._buffered >= self.drain_at:
            self._drain_armed = True
        return written

    def subscribe(self, topic: str) -> None:
        """Receive publishes to ``topic``."""
        topics = self.subscribed()
        if self.state is not _CLOSED and topic not in topics:
            topics.add(topic)
            self.pubsub.subscribe(topic, self.peer)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving publishes to ``topic``."""
        if self.topics and topic in self.topics:
            self.topics.discard(topic)
            self.pubsub.unsubscribe(topic, self.peer)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is queued; any thread."""
        if self.hop(self.close, code, reason) or self.state is not _OPEN:
            return
        self._closing(code, reason, CLOSE_TIMEOUT)

    def _closing(self, code: int, reason: str, timeout: float) -> None:
        self._move(_CLOSING)
        self.close_request = (code, reason)
        self.close_timer = self._loop.call_later(timeout, self.terminate)  # type: ignore[union-attr]
        self.end()

    def terminate(self) -> None:
        """Drop the connection now; any thread."""
        if self.hop(self.terminate) or self.state is _CLOSED:
            return
        code, reason = self.close_request or (1006, "terminated")
        self.terminated = True
        task = self.reader if self._writing is True else self._writing
        self._finish(code, reason)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()

    def _overflow(self) -> None:
        logger.warning(
            "h3_fastapi: peer %s is not reading; send buffer over %d bytes, closing 1013",
            self.peer,
            self._limit,
        )
        if self.watch is not None:  # ops
            self.watch.overflowed()
        # Free the memory now; the frame being written keeps its own reference.
        self.clear()
        self._closing(1013, "send buffer full", 1.0)

    def _transport_failed(self, exc: Exception) -> None:
        """Keep a failure that is not a plain disconnect (``OSError``) for the error hook.

        ``run`` reports it once the connection has ended, before ``close``: the
        writer, the reader or a caller of ``peer.send`` may have seen it.
        """
        if not isinstance(exc, OSError) and self.failure is None:
            self.failure = exc

    def _finish(self, code: int, reason: str) -> None:
        """Mark the peer closed and leave every topic and peer list at once."""
        if self.state is _CLOSED:
            return
        self._move(_CLOSED)
        self.close_details = CloseDetails(code, reason)
        if self.watch is not None:  # ops
            self.watch.closed(self, code)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.shut()
        if self.topics:
            for topic in self.topics:
                self.pubsub.unsubscribe(topic, self.peer)
            self.topics.clear()
        self.peers.remove(self.peer)
        if self.in_receive and self.reader is not None:
            self.reader.cancel()


def _too_big(data: str | bytes, limit: int) -> bool:
    size = len(data)
    if size > limit:
        return True
    if isinstance(data, str) and size * 4 > limit:
        return len(data.encode("utf-8")) > limit
    return False
