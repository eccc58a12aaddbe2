"""``create_websocket_proxy``: hooks that relay a WebSocket to an upstream URL.

The options and their meaning follow crossws's ``createWebSocketProxy``
(``target``, ``forwardProtocol``, ``headers``, ``maxBufferSize``,
``connectTimeout``), with seconds instead of milliseconds. One deliberate
difference: when nothing depends on the peer, the upstream is dialled during the
client's handshake, so the subprotocol the client gets is the one the upstream
chose (crossws echoes the client's first offer whatever the upstream says).

Per connection, ``_Upstream`` is the only record; the hooks below are the only
code that touches it. A peer's life through the proxy:

``upgrade``  record the client's offered subprotocols; maybe dial early
``open``     start the relay task: dial (unless already dialling), flush what the
             client sent meanwhile, then copy upstream frames to the peer
``message``  send upstream, or buffer (bounded) until the upstream is open
``close``    close the upstream with the client's code, stop the relay
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request

from ._guard import Guard, make_guard, resolve_checked
from ._headers import (
    HeaderInput,
    get_proxy_request_headers,
    merge_headers,
    x_forwarded,
)
from ._hooks import call_maybe_async, logger

if TYPE_CHECKING:
    from .peer import Peer

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BUFFER_SIZE",
    "ForwardProtocol",
    "ProxyTarget",
    "create_websocket_proxy",
]

DEFAULT_MAX_BUFFER_SIZE = 1024 * 1024  # bytes, as crossws
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds (crossws: 10000 ms)

ProxyTarget = str | Callable[["Peer"], "str | Awaitable[str]"]
ProtocolList = str | Sequence[str] | None
ForwardProtocol = (
    bool
    | str
    | Sequence[str]
    | Mapping[str, str]
    | Callable[["Peer"], "ProtocolList | Awaitable[ProtocolList]"]
)
HeadersOption = (
    HeaderInput | Callable[["Peer"], "HeaderInput | Awaitable[HeaderInput | None] | None"]
)

# Headers the upstream handshake makes itself, never copied from the client.
_HANDSHAKE_HEADERS = frozenset(
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
# RFC 7230 token: the only subprotocol values echoed back to a client.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_MAX_REASON_BYTES = 123
_CONTEXT_KEY = "_h3_websocket_proxy"


class _UpstreamTimeout(Exception):
    """The target resolver plus the upstream handshake took longer than ``connect_timeout``."""


def _reason(reason: str | None) -> str:
    """A close reason cut to the 123 UTF-8 bytes a close frame can carry."""
    data = (reason or "").encode()
    return data[:_MAX_REASON_BYTES].decode(errors="ignore")


def _incoming_code(code: int | None) -> int:
    """The upstream's close code as the client may receive it (crossws's remap)."""
    if code is None or code == 1005:
        return 1000  # a close frame without a code: a normal close
    if code in (1006, 1015) or not (1000 <= code <= 4999) or code == 1004:
        return 1011
    return code


def _outgoing_code(code: int | None) -> int:
    """The client's close code as it is sent upstream."""
    if code is None or code == 1005:
        return 1000
    if code in (1004, 1006, 1015) or not (1000 <= code <= 4999):
        return 1001  # the client went away without a usable code
    return code


def _protocol_list(value: Any) -> list[str]:
    """Trimmed, non-empty, de-duplicated subprotocols (crossws ``_normalizeProtocols``)."""
    if value is None or value is False:
        return []
    items = [value] if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in items:
        if item is not None and str(item).strip():
            seen[str(item).strip()] = None
    return list(seen)


class _Upstream:
    """One client connection's upstream: dialling, buffering, then relaying."""

    __slots__ = ("buffer", "buffered", "closed", "dialing", "offered", "ready", "relay", "socket")

    def __init__(self, offered: list[str]) -> None:
        self.offered = offered  # the client's subprotocols, in its order
        self.dialing: asyncio.Task[Any] | None = None
        self.socket: Any = None  # websockets ClientConnection once open
        self.buffer: deque[str | bytes] = deque()
        self.buffered = 0  # bytes in ``buffer``
        self.ready = False  # buffer flushed: messages go straight upstream
        self.relay: asyncio.Task[None] | None = None
        self.closed = False  # the client side has closed


class _WebSocketProxy:
    """Hooks relaying every client connection to its own upstream WebSocket."""

    def __init__(
        self,
        target: ProxyTarget,
        *,
        forward_protocol: ForwardProtocol,
        headers: HeadersOption | None,
        forward_headers: Iterable[str] | None,
        filter_headers: Iterable[str] | None,
        xfwd: bool,
        max_buffer_size: int | None,
        connect_timeout: float | None,
        max_message_size: int | None,
        guard: Guard | None,
        connect_options: Mapping[str, Any],
    ) -> None:
        if isinstance(target, str) and urlsplit(target).scheme not in ("ws", "wss"):
            raise ValueError(f"WebSocket proxy target must be a ws:// or wss:// URL: {target!r}")
        self.target = target
        self.forward_protocol = forward_protocol
        self.headers = headers
        self.forward_headers = forward_headers
        self.filter_headers = filter_headers
        self.xfwd = xfwd
        self.max_buffer_size = max_buffer_size or 0  # 0: no limit
        self.connect_timeout = connect_timeout or None  # 0/None: no timeout
        self.max_message_size = max_message_size
        self.guard = guard
        self.connect_options = dict(connect_options)
        # Nothing needs the peer: the upstream can be dialled during the handshake
        # and its subprotocol choice relayed to the client.
        self.dial_in_upgrade = not (
            callable(target) or callable(headers) or callable(forward_protocol)
        )

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {
            "upgrade": self.upgrade,
            "open": self.open,
            "message": self.message,
            "close": self.close,
        }

    # --- dialling -------------------------------------------------------------

    async def _protocols(self, offered: list[str], peer: Peer | None) -> list[str]:
        """What to offer upstream (crossws ``forwardProtocol``)."""
        option = self.forward_protocol
        if option is False:
            return []
        if callable(option):
            return _protocol_list(await call_maybe_async(option, peer))
        if isinstance(option, Mapping):
            return _protocol_list([option.get(p, p) for p in offered])
        if option is True:
            return _protocol_list(offered)
        return _protocol_list(option)  # a fixed subprotocol or list

    async def _dial(self, request: Request, state: _Upstream, peer: Peer | None) -> Any:
        if self.connect_timeout is None:
            return await self._open_upstream(request, state, peer)
        try:
            return await asyncio.wait_for(
                self._open_upstream(request, state, peer), self.connect_timeout
            )
        except asyncio.TimeoutError:
            raise _UpstreamTimeout from None

    async def _open_upstream(self, request: Request, state: _Upstream, peer: Peer | None) -> Any:
        connect: Any = importlib.import_module("websockets.asyncio.client").connect
        target = str(
            await call_maybe_async(self.target, peer) if callable(self.target) else self.target
        )
        if urlsplit(target).scheme not in ("ws", "wss"):
            raise ValueError("the target is not a ws:// or wss:// URL")
        forwarded = get_proxy_request_headers(
            request, forward_headers=self.forward_headers, filter_headers=self.filter_headers
        )
        if self.xfwd:
            forwarded = x_forwarded(forwarded, request)
        forwarded = {k: v for k, v in forwarded.items() if k not in _HANDSHAKE_HEADERS}
        extra = (
            await call_maybe_async(self.headers, peer) if callable(self.headers) else self.headers
        )
        merged = merge_headers(forwarded, extra)
        protocols = await self._protocols(state.offered, peer)
        options: dict[str, Any] = {
            "additional_headers": list(merged.items()),
            "origin": request.headers.get("origin"),
            "user_agent_header": request.headers.get("user-agent"),
            "subprotocols": protocols or None,
            "open_timeout": None,  # ``connect_timeout`` bounds the whole dial
            "max_size": self.max_message_size,
            **self.connect_options,
        }
        if self.guard is None:
            return await connect(target, **options)
        # Connect only to addresses the guard checked (no second DNS lookup), and
        # never through an HTTP proxy from the environment, which the guard cannot see.
        options["proxy"] = None
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

    def _accepted(self, offered: list[str], chosen: str | None) -> str | None:
        """The client's token that stands for the subprotocol the upstream chose."""
        if not chosen:
            return None
        if chosen in offered:
            return chosen
        option = self.forward_protocol
        if isinstance(option, Mapping):
            return next((p for p in offered if option.get(p, p) == chosen), None)
        # A fixed offer upstream: the client gets its own first choice (crossws).
        return offered[0]

    # --- hooks ----------------------------------------------------------------

    async def upgrade(self, request: Any) -> dict[str, Any] | None:
        offered = [str(p) for p in request.scope.get("subprotocols") or () if _TOKEN.match(str(p))]
        state = _Upstream(offered)
        request.context[_CONTEXT_KEY] = state
        if self.forward_protocol is False or not offered:
            return None  # no subprotocol either side; dial once the peer is open
        if not self.dial_in_upgrade:
            # A target, headers or forward_protocol of the peer: dial in ``open``
            # and, as crossws, accept the client's first offer.
            return {"protocol": offered[0]}
        state.dialing = asyncio.get_running_loop().create_task(self._dial(request, state, None))
        await asyncio.wait({state.dialing})
        if state.dialing.cancelled() or state.dialing.exception() is not None:
            return None  # accepted, then closed 1011 by the relay
        accepted = self._accepted(offered, state.dialing.result().subprotocol)
        return {"protocol": accepted} if accepted else None

    async def open(self, peer: Peer) -> None:
        state: _Upstream = peer.context[_CONTEXT_KEY]
        if state.dialing is None:
            dial = self._dial(peer.request, state, peer)
            state.dialing = asyncio.get_running_loop().create_task(dial)
        state.relay = asyncio.get_running_loop().create_task(self._relay(peer, state))

    async def _relay(self, peer: Peer, state: _Upstream) -> None:
        assert state.dialing is not None
        try:
            upstream = await state.dialing
        except asyncio.CancelledError:
            raise
        except _UpstreamTimeout:
            logger.warning("h3_fastapi: WebSocket proxy upstream did not open in time")
            peer.close(1011, "Upstream connect timeout")
            return
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
        state.socket = upstream
        if state.closed:
            await upstream.close(1001, "")
            return
        try:
            while state.buffer:
                data = state.buffer.popleft()
                state.buffered -= _size(data)
                await upstream.send(data)
            state.ready = True
            async for data in upstream:
                await peer.send(data)
        except Exception as exc:
            logger.debug("h3_fastapi: WebSocket proxy relay ended: %r", exc)
        rcvd = upstream.protocol.close_rcvd
        if rcvd is not None:
            peer.close(_incoming_code(rcvd.code), _reason(rcvd.reason))
        else:
            peer.close(1011, "Upstream connection lost")

    async def message(self, peer: Peer, message: Any) -> None:
        state: _Upstream = peer.context[_CONTEXT_KEY]
        data = message.raw_data
        if state.ready:
            try:
                await state.socket.send(data)
            except Exception as exc:  # the upstream went away; the relay closes the peer
                logger.debug("h3_fastapi: WebSocket proxy send failed: %r", exc)
            return
        size = _size(data)
        if self.max_buffer_size and state.buffered + size > self.max_buffer_size:
            state.buffer.clear()
            state.buffered = 0
            peer.close(1009, "Proxy buffer limit exceeded")
            return
        state.buffer.append(data)
        state.buffered += size

    async def close(self, peer: Peer, details: Any) -> None:
        state: _Upstream | None = peer.context.get(_CONTEXT_KEY)
        if state is None:
            return
        state.closed = True
        if state.dialing is not None and not state.dialing.done():
            state.dialing.cancel()
        if state.socket is not None:
            try:
                await state.socket.close(_outgoing_code(details.code), _reason(details.reason))
            except Exception as exc:
                logger.debug("h3_fastapi: WebSocket proxy upstream close failed: %r", exc)
        relay = state.relay
        if relay is not None and not relay.done() and relay is not asyncio.current_task():
            relay.cancel()
            await asyncio.wait({relay})


def _size(data: str | bytes) -> int:
    """Bytes on the wire (a text frame is UTF-8)."""
    return len(data.encode()) if isinstance(data, str) else len(data)


def create_websocket_proxy(
    target: ProxyTarget,
    *,
    forward_protocol: ForwardProtocol = True,
    headers: HeadersOption | None = None,
    max_buffer_size: int | None = DEFAULT_MAX_BUFFER_SIZE,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
    xfwd: bool = False,
    max_message_size: int | None = 16 * 1024 * 1024,
    allow_hosts: Iterable[str] | str | None = None,
    deny_private: bool = False,
    protocols: Iterable[str] | None = None,
    buffer_limit: int | None = None,
    open_timeout: float | None = None,
    **connect_options: Any,
) -> dict[str, Callable[..., Any]]:
    """Hooks that relay each WebSocket client to its own connection to ``target``.

    Use with ``define_websocket_handler(create_websocket_proxy(url))`` or
    ``H3Router.ws(path, create_websocket_proxy(url))``. Text and binary messages,
    close codes and reasons go both ways. Options as crossws's ``createWebSocketProxy``:

    - ``target``: a ``ws://``/``wss://`` URL, or a function of the ``Peer``
      (sync or async) returning one.
    - ``forward_protocol``: the subprotocols offered upstream. ``True`` (default)
      the client's, in its order; ``False`` none (none accepted from the client
      either); a string or list: those; a mapping: the client's, each key replaced
      by its value; a function of the ``Peer`` (sync or async) returning a string,
      a list or ``None``. The client always gets one of its own offers: the one
      standing for the upstream's choice when nothing depends on the peer (none
      if the upstream chose none), else (as crossws) its first.
    - ``headers``: extra upstream handshake headers (a ``None`` value removes one)
      or a function of the ``Peer`` returning them, over the client's filtered
      headers (cookies, authorization), forwarded as by ``proxy_request`` with
      ``forward_headers``, ``filter_headers``, ``xfwd``.
    - ``max_buffer_size``: bytes a client may send before the upstream is open
      (1 MiB); past it the client is closed ``1009``. ``0``/``None``: no limit.
    - ``connect_timeout``: seconds for the target function plus the upstream
      handshake (10); past it the client is closed ``1011`` "Upstream connect
      timeout". ``0``/``None``: no timeout. An unreachable or refusing upstream
      closes the client ``1011`` "Upstream unavailable".

    ``allow_hosts``/``deny_private`` guard the upstream address as in ``proxy``;
    ``max_message_size`` bounds one upstream message; other keywords go to
    ``websockets.connect``. ``protocols``, ``buffer_limit``, ``open_timeout``: older
    names of ``forward_protocol`` (a fixed list), ``max_buffer_size``, ``connect_timeout``.
    """
    forward_protocol, max_buffer_size, connect_timeout = _older_names(
        forward_protocol, max_buffer_size, connect_timeout, protocols, buffer_limit, open_timeout
    )
    proxy_hooks = _WebSocketProxy(
        target,
        forward_protocol=forward_protocol,
        headers=headers,
        forward_headers=forward_headers,
        filter_headers=filter_headers,
        xfwd=xfwd,
        max_buffer_size=max_buffer_size,
        connect_timeout=connect_timeout,
        max_message_size=max_message_size,
        guard=make_guard(allow_hosts, deny_private),
        connect_options=connect_options,
    )
    return proxy_hooks.hooks()


def _older_names(
    forward_protocol: ForwardProtocol,
    max_buffer_size: int | None,
    connect_timeout: float | None,
    protocols: Iterable[str] | None,
    buffer_limit: int | None,
    open_timeout: float | None,
) -> tuple[ForwardProtocol, int | None, float | None]:
    """The three options, taking what their older names gave (never both names)."""
    if protocols is not None:
        if forward_protocol is not True:
            raise TypeError("pass forward_protocol or its older name protocols, not both")
        forward_protocol = list(protocols)
    if buffer_limit is not None:
        if max_buffer_size != DEFAULT_MAX_BUFFER_SIZE:
            raise TypeError("pass max_buffer_size or its older name buffer_limit, not both")
        max_buffer_size = buffer_limit
    if open_timeout is not None:
        if connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            raise TypeError("pass connect_timeout or its older name open_timeout, not both")
        connect_timeout = open_timeout
    return forward_protocol, max_buffer_size, connect_timeout
