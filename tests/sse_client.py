"""A small SSE reader for tests: events as dicts, comments skipped or kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

TIMEOUT = 10


async def next_event(lines: AsyncIterator[str], timeout: float = TIMEOUT) -> dict[str, str]:
    """The next event (``id``, ``event``, ``data`` as given); comments are skipped."""
    event: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(anext(lines), timeout)
        if line == "":
            if event:
                return event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        event[name] = event[name] + "\n" + value if name in event else value


async def comment(lines: AsyncIterator[str], text: str, timeout: float = TIMEOUT) -> None:
    """Wait for the comment ``: text``."""
    while True:
        line = await asyncio.wait_for(anext(lines), timeout)
        if line == ": " + text:
            return
