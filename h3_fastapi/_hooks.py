"""One place that calls user hooks and callbacks.

Hooks may be plain functions or coroutines; either way they are called the
same way here, and an exception is turned into a ``WSError`` for the ``error``
hook (or logged) instead of tearing down other connections.

Where a hook runs: an ``async def`` hook on the event loop; a plain ``def``
hook in the threadpool (``_threadpool.py``: as FastAPI runs ``def``
endpoints, with a cheaper hop per call), awaited by the connection's reader
so one peer's hooks still run one at a time and in order; with
``sync_hooks="loop"`` a ``def`` hook runs on the loop too (fastest, but a
blocking hook stalls every connection).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._ops import ops
from ._threadpool import run_in_thread
from ._typing import hook_error, is_async_callable, typed_message_hook

if TYPE_CHECKING:
    from .peer import Peer

logger = logging.getLogger("h3_fastapi")

__all__ = [
    "HOOK_NAMES",
    "Hook",
    "Hooks",
    "SyncHooks",
    "WSError",
    "call_in_thread",
    "call_maybe_async",
    "logger",
    "run_callback",
]

HOOK_NAMES = ("upgrade", "open", "message", "close", "error", "drain")

Hook = Callable[..., Any]

# Where plain ``def`` hooks run: the threadpool (default, as FastAPI) or the event loop.
SyncHooks = Literal["threadpool", "loop"]
SYNC_HOOKS_VALUES = ("threadpool", "loop")


class WSError(Exception):
    """An error in a hook or the transport, handed to the ``error`` hook.

    The original exception is ``__cause__``.
    """


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` and await its result when it is awaitable."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def call_in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Call a sync ``func`` in the threadpool; await what it returns when awaitable.

    A ``def`` hook that returns a coroutine (``lambda peer: coro(peer)``) has
    that coroutine awaited on the loop.
    """
    result = await run_in_thread(func, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_callback(func: Callable[..., Any], *args: Any, what: str) -> None:
    """Run a callback whose errors must never propagate; log them instead."""
    try:
        await call_maybe_async(func, *args)
    except Exception:
        logger.exception("h3_fastapi: %s raised", what)


def _chosen_hook(source: Any, overrides: Mapping[str, Hook | None], name: str) -> Hook | None:
    """Hook ``name`` of ``source`` (a mapping or an object), unless ``overrides`` names one."""
    hook = overrides.get(name)
    if hook is None:
        if isinstance(source, Mapping):
            hook = source.get(name)
        elif source is not None:
            hook = getattr(source, name, None)
    if hook is not None and not callable(hook):
        raise TypeError(f"WebSocket hook {name!r} must be callable, got {hook!r}")
    return hook


class Hooks:
    """The resolved hooks of one connection (``None`` where not given), and how to call them."""

    __slots__ = (*HOOK_NAMES, "threaded")

    def __init__(
        self,
        source: Any,
        overrides: Mapping[str, Hook | None],
        sync_hooks: SyncHooks = "threadpool",
    ) -> None:
        hooks = {name: _chosen_hook(source, overrides, name) for name in HOOK_NAMES}
        hooks["message"] = typed_message_hook(hooks["message"])  # validates first (_typing.py)
        self.upgrade: Hook | None = hooks["upgrade"]
        self.open: Hook | None = hooks["open"]
        self.message: Hook | None = hooks["message"]
        self.close: Hook | None = hooks["close"]
        self.error: Hook | None = hooks["error"]
        self.drain: Hook | None = hooks["drain"]
        # Names of the given hooks that are plain ``def`` and run in the threadpool.
        self.threaded = frozenset(
            name
            for name, hook in hooks.items()
            if hook is not None and sync_hooks == "threadpool" and not is_async_callable(hook)
        )

    def caller(self, name: str) -> Callable[..., Any]:
        """How to run hook ``name``: ``call_in_thread`` or ``call_maybe_async``."""
        return call_in_thread if name in self.threaded else call_maybe_async

    async def call(self, name: str, peer: Peer, *args: Any) -> None:
        """Run hook ``name`` with ``(peer, *args)``; an exception goes to ``failed``."""
        hook = getattr(self, name)
        if hook is None:
            return
        try:
            if name in self.threaded:
                await call_in_thread(hook, peer, *args)
            else:
                await call_maybe_async(hook, peer, *args)
        except Exception as exc:
            await self.failed(peer, name, exc)

    async def failed(self, peer: Peer, name: str, exc: Exception) -> None:
        """Route a hook exception to ``error``, then close unless already closing.

        ``name`` is the hook that raised, or ``"transport"`` (the peer is closed then).
        The close code is 1011, or 1007 for a message a typed hook could not validate
        (``error.__cause__`` is then the ``ValidationError``).
        """
        if ops.on:
            ops.hook_failed(peer, name)
        what = "transport failed" if name == "transport" else f"{name} hook raised"
        cause, code, reason = hook_error(exc)
        error = WSError(f"{what} {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        if self.error is not None:
            try:
                await self.caller("error")(self.error, peer, error)
            except Exception:
                logger.exception("h3_fastapi: error hook raised")
        else:
            logger.error("h3_fastapi: WebSocket %s hook raised", name, exc_info=exc)
        if peer.is_open:
            peer.close(code, reason)
