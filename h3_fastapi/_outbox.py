"""The bounded outbox shared by a WebSocket connection and an event stream.

Data is queued at once (``put``) and one writer drains it into the ASGI
``send``. This class holds everything both owners need: the queue and its
byte count, the ``Written`` awaitable with its waiters, ``wait_for_drain``,
the deferred writer wake, overflow, and the single hop from another thread
onto the loop. Owners subclass it and fill in up to three hooks:
``_overflow`` (what a full outbox does), ``_writer_here`` (whether a task
awaiting a write may write the queue itself instead of waking the writer
task) and ``_drained`` (called after a write only once armed).

``put`` and ``write_pending`` are the hot path of every message and event:
they do their checks inline (one compare for the thread, no
``current_task()``, no hook call after a write) rather than through helpers.
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any, ClassVar, Generic, TypeVar

from ._compat import Written, release_reached, resolve
from .pubsub import DONE

__all__ = ["Outbox"]

Item = TypeVar("Item")

_get_ident = threading.get_ident


async def _not_started(message: Any) -> None:
    raise RuntimeError("this outbox has no ASGI send yet")


class _Rest:
    """The rest of a server ``send`` that ``_write_now`` started and that had to wait."""

    __slots__ = ("rest", "size")

    def __init__(self, rest: Awaitable[None], size: int) -> None:
        self.rest = rest
        self.size = size


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, None]:
    """Await the rest of ``coro``, whose first step already ran and yielded ``yielded``.

    What ``await coro`` does from there: what ``coro`` yields goes to the task,
    and what the task sends or throws in (cancellation) goes back into it.
    """
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration:
                return


class Outbox(Generic[Item]):
    """Queued items, bounded by ``limit`` bytes, written in order by one writer."""

    # Set by the owner's class (plain functions, no per-instance cost):
    # ``b"".join`` for byte chunks, so a writer that is behind sends all in one go;
    # the size of an item in bytes; the ASGI message that carries an item.
    # (``Any``: mypy would bind a ``Callable`` class attribute as a method.)
    _join: ClassVar[Any] = None
    _size: ClassVar[Any]
    _to_message: ClassVar[Any]
    # The encoded frame of an item, for a server that takes frames (``_frames``).
    _to_frame: ClassVar[Any] = None
    _yield_after_write_here: ClassVar[bool] = False

    __slots__ = (
        "_buffered",
        "_closed",
        "_drain_armed",
        "_drainers",
        "_eager",
        "_ending",
        "_frames",
        "_frames_batched",
        "_hold_wake",
        "_in_flight",
        "_items",
        "_limit",
        "_loop",
        "_queued",
        "_thread",
        "_waiters",
        "_wake",
        "_wake_scheduled",
        "_writing",
        "_written",
        "send",
    )

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Made on first put: an idle owner keeps no deque (~0.6 KiB) or lists.
        self._items: deque[Item] | tuple[()] = ()
        self._limit = limit
        self._buffered = 0
        self._in_flight = 0
        self._queued = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] | tuple[()] = ()
        self._drainers: list[tuple[int, asyncio.Future[None]]] | tuple[()] = ()
        self._wake: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        self._hold_wake = False
        self._writing: asyncio.Task[Any] | bool | None = None
        self._closed = False
        # Set by the owner when it wants ``_drained`` after a write that empties the queue.
        self._drain_armed = False
        # Set by ``end``: no more puts, and the writer looks again after each write.
        self._ending = False
        self.send: Callable[[Any], Awaitable[None]] = _not_started
        # Set by the owner: ``write`` writes at once when idle (``_write_now``); ``send``
        # must then be a coroutine function.
        self._eager = False
        # Set by the owner when the server writes encoded frames at once (the
        # ``h3.websocket.frames`` extension): ``write``/``put`` hand it the item's
        # frame when nothing is queued; ``False`` from it means "queue as usual".
        self._frames: Callable[[bytes], bool] | None = None
        # The same for ``put`` (a publish): written at the end of the loop turn, so a
        # burst of publishes reaches each subscriber in one write.
        self._frames_batched: Callable[[bytes], bool] | None = None
        self._loop = loop
        self._thread = threading.get_ident() if loop is not None else 0

    def bind(self, loop: asyncio.AbstractEventLoop, thread: int | None = None) -> None:
        """Attach to ``loop`` (running in ``thread``, this one by default)."""
        self._loop = loop
        self._thread = threading.get_ident() if thread is None else thread

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet handed to the server (the write under way included)."""
        return self._buffered

    @property
    def pending(self) -> bool:
        """Items wait and nobody is writing them."""
        return bool(self._items) and not self._writing

    @property
    def writing(self) -> bool:
        """A write is under way."""
        return bool(self._writing)

    def all_written(self) -> Awaitable[None]:
        """Resolves when everything queued so far is written (or the outbox is shut)."""
        return Written(self, self._queued)

    def end(self) -> None:
        """Take no more items; the writer is woken to finish what is queued."""
        self._ending = True
        self.wake_writer()

    def hop(self, func: Callable[..., Any], *args: Any) -> bool:
        """Called off the loop's thread: schedule ``func(*args)`` on the loop, return ``True``.

        The one thread hop of the package: every public method that may be
        called from another thread starts with ``if self.hop(...): return``.
        """
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            return False
        loop.call_soon_threadsafe(func, *args)
        return True

    def put(self, item: Item, size: int) -> Awaitable[None]:
        """Queue ``item`` (any thread); await the result to wait until written."""
        if self._ending:
            return DONE
        if self._thread != _get_ident() and self.hop(self.put, item, size):
            return DONE
        items = self._items
        frames = self._frames_batched
        if frames is not None and not (items or self._writing) and frames(self._to_frame(item)):
            self._queued += 1
            self._written += 1
            return DONE
        if items.__class__ is not deque:
            items = self._items = deque()
        items.append(item)
        buffered = self._buffered = self._buffered + size
        queued = self._queued = self._queued + 1
        if buffered > self._limit and buffered > size:
            self._overflow()
            return DONE
        if not (self._writing or self._hold_wake or self._wake_scheduled):
            # Wake the writer on the next loop turn, not now: when the caller
            # awaits the result (or the owner flushes after a hook), the queue
            # is empty by then and the writer task does not run at all.
            self._wake_scheduled = True
            self._loop.call_soon(self._deferred_wake)  # type: ignore[union-attr]
        return Written(self, queued)

    def write(self, item: Item, size: int) -> Awaitable[None]:
        """Write ``item`` now if nothing is queued and nobody is writing, else ``put`` it.

        For a reply to one peer: the frame goes out in the caller's turn, and
        no task is woken. A fan-out to many peers uses ``put``: each peer's
        writer then sends what several publishes queued for it in one go,
        which keeps the server's per-connection state warm (measured: writing
        at once costs 1.4x the CPU per delivery in a 100-message broadcast).
        """
        if self._thread != _get_ident() and self.hop(self.write, item, size):
            return DONE
        if self._eager and not (self._items or self._writing or self._ending):
            frames = self._frames
            if frames is not None and frames(self._to_frame(item)):
                self._queued += 1
                self._written += 1
                return DONE
            return self._write_now(item, size)
        return self.put(item, size)

    def _write_now(self, item: Item, size: int) -> Awaitable[None]:
        """Write ``item`` in the caller's turn: nothing is queued and nobody is writing.

        The server's ``send`` coroutine is stepped here, not awaited: with room
        in the socket buffer it completes at once (the frame is written).
        If it has to wait (flow control), the rest of it is queued as the
        first item, for the writer to await.
        """
        queued = self._queued = self._queued + 1
        send = self.send(self._to_message(item))
        try:
            yielded = send.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            self._written += 1
            return DONE
        except Exception as exc:
            self._written += 1
            if not self._write_failed(exc):
                raise
            return DONE
        self._items = deque((_Rest(_resume(send, yielded), size),))  # type: ignore[arg-type]
        self._buffered += size
        self.wake_writer()
        return Written(self, queued)

    def _deferred_wake(self) -> None:
        self._wake_scheduled = False
        if self._items and not self._writing:
            if self._eager:
                self._write_queued()
            else:
                self.wake_writer()

    def _write_queued(self) -> None:
        """Write the queue here, at the end of the turn that filled it, without the writer task.

        As ``_write_now`` for each item in order: the server's ``send`` is stepped,
        not awaited, so a publish reaches an idle peer without waking its task.
        A send that must wait (flow control) is left at the head of the queue
        for the writer task, as is a send that failed, for the owner to see.
        Only for ``_eager`` owners: one ASGI message per item (no ``_join``).
        """
        items: deque[Any] = self._items  # type: ignore[assignment]
        size = self._size
        to_message = self._to_message
        send = self.send
        while items:
            item = items[0]
            if item.__class__ is _Rest:
                break
            coro = send(to_message(item))
            try:
                yielded = coro.send(None)  # type: ignore[attr-defined]
            except StopIteration:
                items.popleft()
                self._buffered -= size(item)
                self._written += 1
                continue
            except Exception as exc:
                items.popleft()
                self._written += 1
                self._write_failed(exc)
                return
            items.popleft()
            items.appendleft(_Rest(_resume(coro, yielded), size(item)))
            break
        if self._waiters or self._drainers:
            self._release()
        if self._ending or items:
            self.wake_writer()
        elif self._drain_armed:
            self._drained()

    def wake_writer(self) -> None:
        """Let the parked writer look at the queue (and the owner's state) again."""
        wake, self._wake = self._wake, None
        resolve(wake)

    def park(self) -> asyncio.Future[None]:
        """What the writer awaits until there is something to do.

        A future, not a coroutine: an idle writer keeps no extra frame (~0.2 KiB).
        """
        wake = self._wake = self._loop.create_future()  # type: ignore[union-attr]
        return wake

    @property
    def parked(self) -> bool:
        """The writer task waits in ``park``."""
        return self._wake is not None

    async def write_pending(self, writer: asyncio.Task[Any] | bool = True) -> None:
        """Write the queue in order through ``send`` (one ASGI message per item or batch).

        Only one task writes at a time: ``writing`` is ``writer`` (the calling
        task, or ``True``) while it does; the caller checks ``pending`` first.
        A failing ``send`` goes to ``_write_failed``, which says whether the
        owner has dealt with it.
        """
        self._writing = writer
        items = self._items
        join = self._join
        size = self._size
        to_message = self._to_message
        send = self.send
        try:
            while items:
                if join is None or len(items) == 1:
                    item = items.popleft()
                    count = 1
                else:  # the client is behind: one send for everything waiting
                    item = join(items)
                    count = len(items)
                    items.clear()
                in_flight = self._in_flight = size(item)
                if item.__class__ is _Rest:  # a send ``_write_now`` started
                    await item.rest  # type: ignore[attr-defined]
                else:
                    await send(to_message(item))
                if self._in_flight > 0:  # not dropped by ``clear`` meanwhile
                    self._buffered -= in_flight
                self._in_flight = 0
                self._written += count
                if self._waiters or self._drainers:
                    self._release()
        except (Exception, asyncio.CancelledError) as exc:
            if not self._write_failed(exc):
                raise
        finally:
            self._writing = None
            if self._ending or self._items:
                self.wake_writer()
            elif self._drain_armed:
                self._drained()

    def _release(self) -> None:
        """Resolve the waiters whose item is written and the drainers now under their bound."""
        written = self._written
        buffered = self._buffered
        self._waiters = release_reached(self._waiters, lambda seq: seq <= written)
        self._drainers = release_reached(self._drainers, lambda cap: buffered <= cap)

    def wait_written(self, seq: int) -> Generator[Any, None, None]:
        """Wait until the ``seq``-th item is written, or the outbox is closed.

        A generator, not a coroutine: ``Written.__await__`` returns it as is.
        """
        if self._written >= seq or self._closed:
            return
        if not self._writing:
            writer = self._writer_here()
            if writer is not None:
                before = self._written
                yield from self.write_pending(writer).__await__()
                if self._yield_after_write_here and (self._written ^ before) >> 4:
                    # Sends that did not block never yielded: every 16 items give
                    # other tasks a turn, or a producer that never waits would
                    # starve the loop (and never see its client leave).
                    yield from asyncio.sleep(0).__await__()
                if self._written >= seq or self._closed:
                    return
        future: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        if not self._waiters:
            self._waiters = []
        self._waiters.append((seq, future))
        self.wake_writer()
        yield from future

    async def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> None:
        """Wait until at most ``threshold`` bytes are queued, or the outbox is closed."""
        if self._buffered <= threshold or self._closed:
            return
        future: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        if not self._drainers:
            self._drainers = []
        self._drainers.append((threshold, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if not future.done():
                future.cancel()
                self._drainers = [d for d in self._drainers if d[1] is not future]

    def clear(self) -> None:
        """Drop what is queued (the write under way keeps its own reference)."""
        if self._items:
            self._items.clear()
        self._buffered = 0
        self._in_flight = -1  # its bytes are no longer counted

    def shut(self) -> None:
        """No more writes: drop the queue, release every waiter, wake the writer."""
        self._closed = True
        self._ending = True
        self.clear()
        for waiting in (self._waiters, self._drainers):
            for _, future in waiting:
                resolve(future)
        self._waiters = ()
        self._drainers = ()
        self.wake_writer()

    def _overflow(self) -> None:
        """The queue went over ``limit`` bytes."""
        raise NotImplementedError

    def _writer_here(self) -> asyncio.Task[Any] | bool | None:
        """Whether the task awaiting a write may write the queue itself: as whom, or ``None``."""
        return None

    def _drained(self) -> None:
        """A write emptied the queue while ``_drain_armed`` (the owner's ``drain`` hook)."""

    def _write_failed(self, exc: BaseException) -> bool:
        """``send`` raised (or the writer was cancelled); ``True`` when handled here."""
        return False
