"""Learn that the server is shutting down before it waits for open connections.

uvicorn waits for every open HTTP response to finish before it runs the
lifespan shutdown, so an endless SSE stream would hold the process forever
(the classic sse-starlette hang). We wrap ``uvicorn.Server.shutdown`` once so
that open streams and WebSocket peers of the server's loop are closed first;
lifespan shutdown (``H3Router``) covers other servers.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ._hooks import logger

__all__ = ["notify_server_exit", "on_server_exit", "remove_server_exit"]

ExitCallback = Callable[[], Any]

# loop -> {owner: callback}; callbacks of one server's loop only.
_callbacks: dict[asyncio.AbstractEventLoop, dict[object, ExitCallback]] = {}


def on_server_exit(owner: object, callback: ExitCallback) -> None:
    """Call ``callback`` (sync, may return an awaitable) when this loop's server stops."""
    _install_uvicorn_patch()
    loop = asyncio.get_running_loop()
    _callbacks.setdefault(loop, {})[owner] = callback


def remove_server_exit(owner: object) -> None:
    """Forget ``owner``'s callback (it closed by itself)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    callbacks = _callbacks.get(loop)
    if callbacks is not None:
        callbacks.pop(owner, None)
        if not callbacks:
            _callbacks.pop(loop, None)


async def notify_server_exit(timeout: float = 1.0) -> None:
    """Run every exit callback of the running loop; wait at most ``timeout`` for them."""
    loop = asyncio.get_running_loop()
    callbacks = _callbacks.pop(loop, {})
    pending = []
    for callback in list(callbacks.values()):
        try:
            result = callback()
        except Exception:
            logger.exception("h3_fastapi: shutdown callback raised")
            continue
        if inspect.isawaitable(result):
            pending.append(asyncio.ensure_future(result))
    if pending:
        _, not_done = await asyncio.wait(pending, timeout=timeout)
        for task in not_done:
            task.cancel()


_patched = False


def _install_uvicorn_patch() -> None:
    global _patched
    if _patched:
        return
    _patched = True
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return
    original = uvicorn.Server.shutdown
    if getattr(original, "__h3_wrapped__", False):
        return

    async def shutdown(self: Any, *args: Any, **kwargs: Any) -> None:
        await notify_server_exit()
        await original(self, *args, **kwargs)

    shutdown.__h3_wrapped__ = True  # type: ignore[attr-defined]
    uvicorn.Server.shutdown = shutdown  # type: ignore[method-assign]
