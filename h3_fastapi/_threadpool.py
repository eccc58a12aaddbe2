"""The threads plain ``def`` hooks run in: one job queue, workers made on demand.

FastAPI runs ``def`` endpoints through ``anyio.to_thread``; each call there
takes a capacity-limiter token, builds a few objects and wakes the loop
through a portal, about 50 µs of CPU per call measured on the echo microbench,
ten times the hook itself. A WebSocket ``message`` hook runs once per frame,
so the hop must be cheaper: here a job is a tuple on a ``SimpleQueue`` that
idle workers block on, and the result comes back with one
``call_soon_threadsafe``. The semantics stay FastAPI's: at most ``limit``
hooks run at once (anyio's default of 40 threads), each in a copy of the
caller's context, and a blocking hook never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

__all__ = ["ThreadPool", "hook_thread_loop", "run_in_thread"]

DEFAULT_LIMIT = 40

_Job = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
]


# The loop of the hook running in this thread, for code that must reach it from
# the hook (``peer.publish`` from a ``def`` hook), as anyio's ``from_thread`` does
# for FastAPI's worker threads.
_current = threading.local()


def hook_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop whose hook this thread is running, if it is a hook thread."""
    loop: asyncio.AbstractEventLoop | None = getattr(_current, "loop", None)
    return loop


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: hand the outcome to whoever awaits (nobody, if it was cancelled)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ThreadPool:
    """Worker threads for sync hooks; at most ``limit`` of them, made as jobs need them."""

    __slots__ = ("_idle", "_jobs", "_lock", "_threads", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``func(*args)`` in a worker; a future of the running loop for its outcome."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, contextvars.copy_context(), func, args))
        with self._lock:
            start = self._idle == 0 and self._threads < self.limit
            if start:
                self._threads += 1
            else:
                self._idle -= 1  # that worker is taken by this job
        if start:
            threading.Thread(target=self._work, name="h3-hooks", daemon=True).start()
        return future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            loop, future, context, func, args = jobs.get()
            _current.loop = loop
            try:
                result, error = context.run(func, *args), None
            except BaseException as exc:
                result, error = None, exc
            _current.loop = None
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass
            del loop, future, context, func, args, result, error
            with self._lock:
                self._idle += 1


_pool = ThreadPool()


def run_in_thread(func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run a sync ``func`` in the hooks' threadpool; await the result."""
    return _pool.submit(func, *args)
