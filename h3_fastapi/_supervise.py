"""``supervise``: a background task of the library that cannot die silently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._hooks import logger

__all__ = ["supervise"]


async def supervise(
    what: str,
    run: Callable[[], Awaitable[None]],
    report: Callable[[Exception], None],
    backoff: tuple[float, float] = (0.1, 2.0),
) -> None:
    """Run ``run()`` for ever: if it fails, log, ``report`` and start it again.

    For the background tasks of a backplane, so none dies silently.
    """
    delay = backoff[0]
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("h3_fastapi: %s failed; restarting it", what, exc_info=exc)
            report(exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, backoff[1])
