"""Small asyncio helpers shared by the peer's and the event stream's writers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Protocol

from ._hooks import logger

__all__ = ["Written", "release_reached", "resolve", "spawn", "uncancel", "worker_thread_loop"]

Waiting = list[tuple[int, "asyncio.Future[None]"]]


class _WaitsWritten(Protocol):
    def wait_written(self, seq: int, /) -> Generator[Any, None, None]: ...


class Written:
    """What ``send``/``push`` return: the data is queued already; await to wait until written.

    Holds the outbox and the item's sequence number; the waiting generator
    (``outbox.wait_written``) is only made when someone awaits, so not
    awaiting costs one small object.
    """

    __slots__ = ("_outbox", "_seq")

    def __init__(self, outbox: _WaitsWritten, seq: int) -> None:
        self._outbox = outbox
        self._seq = seq

    def __await__(self) -> Generator[Any, None, None]:
        return self._outbox.wait_written(self._seq)


def uncancel() -> None:
    """Undo a cancellation we asked for ourselves, so the connection ends cleanly.

    ``Task.uncancel`` exists from Python 3.11; on 3.10 catching is enough.
    """
    task = asyncio.current_task()
    undo = getattr(task, "uncancel", None)
    if undo is not None:
        undo()


def resolve(future: asyncio.Future[None] | None) -> None:
    """Wake whoever waits on ``future`` (nothing if there is none, or it is already done)."""
    if future is not None and not future.done():
        future.set_result(None)


def release_reached(
    waiting: Iterable[tuple[int, asyncio.Future[None]]], reached: Callable[[int], bool]
) -> Waiting:
    """Resolve the waiters whose bound is ``reached``; the ones still waiting, in order.

    A bound is a write sequence number (``await send(...)``) or a buffer
    threshold (``wait_for_drain``); finished futures are dropped.
    """
    keep: Waiting = []
    for bound, future in waiting:
        if future.done():
            continue
        if reached(bound):
            future.set_result(None)
        else:
            keep.append((bound, future))
    return keep


# Fire-and-forget tasks, kept alive until they finish (asyncio keeps only weak references).
_background: set[asyncio.Future[Any]] = set()


def spawn(awaitable: Awaitable[Any], *, what: str = "background task") -> asyncio.Future[Any]:
    """Run ``awaitable`` in the background on the running loop and keep it alive.

    An exception it ends with is logged (naming ``what``), never lost silently.
    """
    task = asyncio.ensure_future(awaitable)
    _background.add(task)
    task.add_done_callback(lambda done: _finished(done, what))
    return task


def _finished(task: asyncio.Future[Any], what: str) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("h3_fastapi: %s failed", what, exc_info=task.exception())


def worker_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The app's event loop, seen from a worker thread.

    A ``def`` hook's thread (``_threadpool.py``) or an AnyIO worker thread (a
    plain ``def`` FastAPI endpoint); ``None`` outside such a thread.
    """
    from ._threadpool import hook_thread_loop

    hook_loop = hook_thread_loop()
    if hook_loop is not None:
        return hook_loop
    try:
        from anyio import from_thread

        loop: asyncio.AbstractEventLoop = from_thread.run_sync(asyncio.get_running_loop)
        return loop
    except Exception:
        return None
