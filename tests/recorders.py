"""Things tests hand to code under test to see what it did, from any thread.

Each one keeps what it was given under a ``threading.Condition`` so a test
waits for what it expects (with a timeout that fails loudly) instead of
sleeping:

- ``Lines``: text lines (a child's output, a stand-in for ``print``);
- ``LogWatcher``: a ``logging.Handler`` whose records become ``Lines``;
- ``Events``: ``(kind, value)`` pairs that hooks record;
- ``Subscriber``: a pub/sub subscriber that keeps every ``Outgoing``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from h3_fastapi.pubsub import Outgoing

TIMEOUT = 5
T = TypeVar("T")


class Recorded(Generic[T]):
    """A list that any thread appends to and tests wait on."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.changed = threading.Condition()
        self.ended = False  # nothing more will come (a child exited)

    def append(self, item: T) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def end(self) -> None:
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def snapshot(self) -> list[T]:
        with self.changed:
            return list(self.items)

    def wait(self, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> bool:
        """Wait until ``predicate()`` holds or nothing more can come; whether it holds."""
        with self.changed:
            return bool(self.changed.wait_for(lambda: predicate() or self.ended, timeout)) and bool(
                predicate()
            )

    async def wait_async(self, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> bool:
        """``wait`` from a coroutine (the loop keeps running meanwhile)."""
        return await asyncio.to_thread(self.wait, predicate, timeout)


class Lines(Recorded[str]):
    """Lines of text; call it as a stand-in for ``print``."""

    @property
    def lines(self) -> list[str]:
        return self.items

    def __call__(self, *args: Any) -> None:
        self.append(" ".join(str(a) for a in args))

    print = __call__

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.snapshot() if regex.search(line)]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = TIMEOUT) -> str:
        """The first line that matches ``pattern``, once ``count`` lines do."""
        if not self.wait(lambda: len(self.matching(pattern)) >= count, timeout):
            found = len(self.matching(pattern))
            got = "\n".join(self.snapshot())
            raise AssertionError(f"{found}/{count} lines match {pattern!r}; got:\n{got}")
        return self.matching(pattern)[0]


class LogWatcher(logging.Handler):
    """Collects log lines from any thread; tests wait on them instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.recorded = Lines()
        self.lines = self.recorded.lines
        self.print = self.recorded.print  # a stand-in for ``print`` in an example module
        self.wait_for = self.recorded.wait_for

    def emit(self, record: logging.LogRecord) -> None:
        self.recorded.append(record.getMessage())


class Events(Recorded[tuple[str, Any]]):
    """What hooks saw, as ``(kind, value)`` pairs."""

    @property
    def events(self) -> list[tuple[str, Any]]:
        return self.items

    def add(self, kind: str, value: Any = None) -> None:
        self.append((kind, value))

    def of(self, kind: str) -> list[Any]:
        return [v for k, v in self.snapshot() if k == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        """The values of ``kind`` once there are ``count`` of them."""
        if not await self.wait_async(lambda: len(self.of(kind)) >= count, timeout):
            raise AssertionError(f"hooks never got {count} {kind!r}: {self.snapshot()}")
        return self.of(kind)


class Subscriber(Recorded[Outgoing]):
    """A pub/sub subscriber that keeps what it was given (any thread)."""

    def __init__(self, namespace: str | None = None) -> None:
        super().__init__()
        self.namespace = namespace

    def deliver(self, outgoing: Outgoing) -> None:
        self.append(outgoing)

    @property
    def got(self) -> list[Outgoing]:
        return self.items

    @property
    def lock(self) -> threading.Condition:
        return self.changed

    @property
    def data(self) -> list[str | bytes]:
        return [o.data for o in self.snapshot()]

    async def wait_for(self, count: int, timeout: float = 10) -> list[str | bytes]:
        """Everything delivered, once there are at least ``count``."""
        if not await self.wait_async(lambda: len(self.items) >= count, timeout):
            raise AssertionError(f"got {len(self.items)} of {count}: {self.data[-5:]}")
        return self.data


async def eventually(
    check: Callable[[], Any], what: str, timeout: float = 10, interval: float = 0.02
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail loudly."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
