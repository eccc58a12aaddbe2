"""One place that calls user hooks and callbacks.

Hooks may be plain functions or coroutines; either way they are called the
same way here, and an exception is turned into a ``WSError`` for the ``error``
hook (or logged) instead of tearing down other connections.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("h3_fastapi")

__all__ = ["call_maybe_async", "logger", "run_callback"]


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` and await its result when it is awaitable."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_callback(func: Callable[..., Any], *args: Any, what: str) -> None:
    """Run a callback whose errors must never propagate; log them instead."""
    try:
        await call_maybe_async(func, *args)
    except Exception:
        logger.exception("h3_fastapi: %s raised", what)
