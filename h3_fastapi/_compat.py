"""Small asyncio helpers shared by the peer's and the event stream's writers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any

__all__ = ["Written", "release_reached", "resolve", "uncancel"]

Waiting = list[tuple[int, "asyncio.Future[None]"]]


class Written:
    """What ``send``/``push`` return: the data is queued already; await to wait until written.

    ``wait`` is the owner's ``_wait_written``; the coroutine is only made when
    someone awaits, so not awaiting costs one small object.
    """

    __slots__ = ("_seq", "_wait")

    def __init__(self, wait: Callable[[int], Awaitable[None]], seq: int) -> None:
        self._wait = wait
        self._seq = seq

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait(self._seq).__await__()


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
