"""One place that calls user hooks and callbacks.

Hooks may be plain functions or coroutines; either way they are called the
same way here, and an exception is turned into a ``WSError`` for the ``error``
hook (or logged) instead of tearing down other connections.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._ops import ops
from ._typing import hook_error, typed_message_hook

if TYPE_CHECKING:
    from .peer import Peer

logger = logging.getLogger("h3_fastapi")

__all__ = ["HOOK_NAMES", "Hook", "Hooks", "WSError", "call_maybe_async", "logger", "run_callback"]

HOOK_NAMES = ("upgrade", "open", "message", "close", "error")

Hook = Callable[..., Any]


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


async def run_callback(func: Callable[..., Any], *args: Any, what: str) -> None:
    """Run a callback whose errors must never propagate; log them instead."""
    try:
        await call_maybe_async(func, *args)
    except Exception:
        logger.exception("h3_fastapi: %s raised", what)


class Hooks:
    """The resolved hooks of one connection (``None`` where not given), and how to call them."""

    __slots__ = HOOK_NAMES

    upgrade: Hook | None
    open: Hook | None
    message: Hook | None
    close: Hook | None
    error: Hook | None

    def __init__(self, source: Any, overrides: Mapping[str, Hook | None]) -> None:
        for name in HOOK_NAMES:
            if isinstance(source, Mapping):
                hook = source.get(name)
            else:
                hook = getattr(source, name, None) if source is not None else None
            override = overrides.get(name)
            if override is not None:
                hook = override
            if hook is not None and not callable(hook):
                raise TypeError(f"WebSocket hook {name!r} must be callable, got {hook!r}")
            if name == "message":  # a typed hook validates first (_typing.py)
                hook = typed_message_hook(hook)
            setattr(self, name, hook)

    async def call(self, name: str, peer: Peer, *args: Any) -> None:
        """Run hook ``name`` with ``(peer, *args)``; an exception goes to ``failed``."""
        hook = getattr(self, name)
        if hook is None:
            return
        try:
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
                await call_maybe_async(self.error, peer, error)
            except Exception:
                logger.exception("h3_fastapi: error hook raised")
        else:
            logger.error("h3_fastapi: WebSocket %s hook raised", name, exc_info=exc)
        if peer.is_open:
            peer.close(code, reason)
