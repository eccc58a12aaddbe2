"""``create_websocket_proxy``: hooks that relay a WebSocket to an upstream URL."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from ._guard import Guard, make_guard, resolve_checked
from ._headers import (
    HeaderInput,
    get_proxy_request_headers,
    merge_headers,
    x_forwarded,
)
from ._hooks import logger

# --- WebSocket proxy ------------------------------------------------------------------

DEFAULT_WS_BUFFER_LIMIT = 1024 * 1024
_WS_HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "origin",
        "user-agent",
        "content-length",
    }
)
_UNSENDABLE_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})
_CONTEXT_KEY = "_h3_websocket_proxy"


def _sendable(code: int | None, fallback: int) -> int:
    if code is None or code in _UNSENDABLE_CLOSE_CODES or not (1000 <= code <= 4999):
        return fallback
    return code


class _Link:
    """One client connection's upstream: connecting, then relaying."""

    def __init__(self) -> None:
        self.connecting: asyncio.Task[Any] | None = None
        self.upstream: Any = None
        self.pending: list[str | bytes] = []
        self.pending_size = 0
        self.ready = False
        self.relay: asyncio.Task[None] | None = None
        self.closed = False


class _WebSocketProxy:
    """Hooks relaying every client connection to its own upstream WebSocket."""

    def __init__(
        self,
        target: str | Callable[[Request], str],
        *,
        protocols: Iterable[str] | None,
        headers: HeaderInput | None,
        forward_headers: Iterable[str] | None,
        filter_headers: Iterable[str] | None,
        xfwd: bool,
        buffer_limit: int,
        open_timeout: float,
        max_message_size: int | None,
        guard: Guard | None,
        connect_options: Mapping[str, Any],
    ) -> None:
        self.target = target
        self.protocols = None if protocols is None else list(protocols)
        self.headers = headers
        self.forward_headers = forward_headers
        self.filter_headers = filter_headers
        self.xfwd = xfwd
        self.buffer_limit = buffer_limit
        self.open_timeout = open_timeout
        self.max_message_size = max_message_size
        self.guard = guard
        self.connect_options = dict(connect_options)

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {
            "upgrade": self.upgrade,
            "open": self.open,
            "message": self.message,
            "close": self.close,
        }

    async def _connect(self, request: Request, offered: list[str]) -> Any:
        connect: Any = importlib.import_module("websockets.asyncio.client").connect
        target = self.target(request) if callable(self.target) else self.target
        forwarded = get_proxy_request_headers(
            request, forward_headers=self.forward_headers, filter_headers=self.filter_headers
        )
        if self.xfwd:
            forwarded = x_forwarded(forwarded, request)
        forwarded = {k: v for k, v in forwarded.items() if k not in _WS_HANDSHAKE_HEADERS}
        merged = merge_headers(forwarded, self.headers)
        options: dict[str, Any] = {
            "additional_headers": list(merged.items()),
            "origin": request.headers.get("origin"),
            "user_agent_header": request.headers.get("user-agent"),
            "subprotocols": (self.protocols if self.protocols is not None else offered) or None,
            "open_timeout": self.open_timeout,
            "max_size": self.max_message_size,
            **self.connect_options,
        }
        if self.guard is None:
            return await connect(target, **options)
        # Connect only to addresses the guard checked (no second DNS lookup).
        parts = urlsplit(target)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        addresses = await resolve_checked(self.guard, parts.hostname or "", port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await connect(target, host=address, port=port, **options)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    async def upgrade(self, request: Any) -> dict[str, Any] | None:
        offered = [str(p) for p in request.scope.get("subprotocols") or ()]
        link = _Link()
        request.context[_CONTEXT_KEY] = link
        link.connecting = asyncio.get_running_loop().create_task(self._connect(request, offered))
        if not offered:
            return None  # accept now; messages wait in the buffer until the upstream opens
        # The client asked for subprotocols: answer with the one the upstream chose.
        await asyncio.wait({link.connecting})
        if link.connecting.cancelled() or link.connecting.exception() is not None:
            return None  # accepted, then closed 1011 in open()
        chosen = link.connecting.result().subprotocol
        return {"protocol": chosen} if chosen and chosen in offered else None

    async def open(self, peer: Any) -> None:
        link: _Link = peer.context[_CONTEXT_KEY]
        link.relay = asyncio.get_running_loop().create_task(self._relay(peer, link))

    async def _relay(self, peer: Any, link: _Link) -> None:
        assert link.connecting is not None
        try:
            upstream = await link.connecting
        except Exception as exc:
            # Never ``%r``: a rejected handshake's repr carries every upstream header.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            logger.warning(
                "h3_fastapi: WebSocket proxy could not reach upstream: %s%s",
                type(exc).__name__,
                f" (HTTP {status})" if status is not None else "",
            )
            peer.close(1011, "Upstream unavailable")
            return
        link.upstream = upstream
        if link.closed:
            await upstream.close(1001, "")
            return
        try:
            while link.pending:
                data = link.pending.pop(0)
                link.pending_size -= len(data)
                await upstream.send(data)
            link.ready = True
            async for data in upstream:
                await peer.send(data)
        except Exception as exc:
            logger.debug("h3_fastapi: WebSocket proxy relay ended: %r", exc)
        rcvd = upstream.protocol.close_rcvd
        if rcvd is not None:
            peer.close(_sendable(rcvd.code, 1000), rcvd.reason)
        else:
            peer.close(1011, "Upstream connection lost")

    async def message(self, peer: Any, message: Any) -> None:
        link: _Link = peer.context[_CONTEXT_KEY]
        data = message.raw_data
        if link.ready:
            try:
                await link.upstream.send(data)
            except Exception as exc:  # the upstream went away; the relay closes the peer
                logger.debug("h3_fastapi: WebSocket proxy send failed: %r", exc)
            return
        link.pending.append(data)
        link.pending_size += len(data)
        if link.pending_size > self.buffer_limit:
            link.pending.clear()
            link.pending_size = 0
            peer.close(1009, "Too much data before the upstream opened")

    async def close(self, peer: Any, details: Any) -> None:
        link: _Link | None = peer.context.get(_CONTEXT_KEY)
        if link is None:
            return
        link.closed = True
        if link.connecting is not None and not link.connecting.done():
            link.connecting.cancel()
        upstream = link.upstream
        if upstream is not None:
            code = _sendable(details.code, 1000 if details.code == 1005 else 1001)
            try:
                await upstream.close(code, details.reason or "")
            except Exception as exc:
                logger.debug("h3_fastapi: WebSocket proxy upstream close failed: %r", exc)
        relay = link.relay
        if relay is not None and not relay.done() and relay is not asyncio.current_task():
            relay.cancel()
            await asyncio.wait({relay})


def create_websocket_proxy(
    target: str | Callable[[Request], str],
    *,
    protocols: Iterable[str] | None = None,
    headers: HeaderInput | None = None,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
    xfwd: bool = False,
    buffer_limit: int = DEFAULT_WS_BUFFER_LIMIT,
    open_timeout: float = 10.0,
    max_message_size: int | None = 16 * 1024 * 1024,
    allow_hosts: Iterable[str] | str | None = None,
    deny_private: bool = False,
    **connect_options: Any,
) -> dict[str, Callable[..., Any]]:
    """Hooks that relay each WebSocket client to its own connection to ``target``.

    ``target`` is a ``ws://``/``wss://`` URL (or ``request -> URL``). Text
    and binary messages go both ways; a close code and reason from either
    side is passed to the other. The subprotocols the client offers (or
    ``protocols``) are offered upstream and the one the upstream picks is
    accepted. Filtered client headers (cookies, authorization) are forwarded
    as in ``proxy_request``; ``headers`` adds or (with ``None``) removes.

    The client is accepted before the upstream opens (unless it asked for a
    subprotocol): what it sends meanwhile is buffered up to ``buffer_limit``
    bytes, then it is closed 1009. An upstream that cannot be reached closes
    the client 1011. Extra keywords go to ``websockets.connect``. Needs the
    ``websockets`` package.

    Use with ``define_websocket_handler(create_websocket_proxy(url))``.
    """
    proxy_hooks = _WebSocketProxy(
        target,
        protocols=protocols,
        headers=headers,
        forward_headers=forward_headers,
        filter_headers=filter_headers,
        xfwd=xfwd,
        buffer_limit=buffer_limit,
        open_timeout=open_timeout,
        max_message_size=max_message_size,
        guard=make_guard(allow_hosts, deny_private),
        connect_options=connect_options,
    )
    return proxy_hooks.hooks()
