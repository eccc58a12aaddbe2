"""WebSocket handlers with crossws hooks: ``define_websocket_handler``.

The flow of one connection: the ASGI ``websocket.connect`` event is checked
(origin, peer limit), the ``upgrade`` hook accepts or rejects the handshake,
a ``Peer`` is created and ``open`` runs; then a reader task feeds ``message``
while the connection's own task writes the peer's outbox (``peer.py``); when
either side ends it, ``close`` runs exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, KeysView, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Send
from starlette.websockets import WebSocket

from . import _shutdown
from ._compat import Written
from ._hooks import call_maybe_async, logger
from ._responses import exception_to_response, to_response
from ._typing import hook_error, hooks_message_type, typed_message_hook
from .message import Message
from .peer import CLOSE_TIMEOUT, CloseDetails, Peer
from .pubsub import DONE, PubSub, get_default_pubsub

__all__ = [
    "CloseDetails",
    "UpgradeRequest",
    "WSError",
    "WebSocketHandler",
    "define_websocket",
    "define_websocket_handler",
]

HOOK_NAMES = ("upgrade", "open", "message", "close", "error")

Hook = Callable[..., Any]
HooksSource = Any  # dict | object with hook methods | class | factory(request)

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_SEND_BUFFER_LIMIT = 4 * 1024 * 1024


# Awaitables that only say "queued": the reader flushes after the hook anyway.
_QUEUED = (Written, type(DONE))

# Error-hook calls for transport failures, kept alive until they finish.
_pending: set[asyncio.Future[None]] = set()


class WSError(Exception):
    """An error in a hook or the transport, handed to the ``error`` hook.

    The original exception is ``__cause__``.
    """


class UpgradeRequest(Request):
    """The upgrade request as an HTTP ``Request`` (scheme ``http``/``https``).

    ``context`` is the peer's context dict: what ``upgrade`` puts there is on
    ``peer.context`` (crossws ``request.context``).
    """

    context: dict[str, Any]


async def _empty_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _upgrade_request(scope: Mapping[str, Any]) -> UpgradeRequest:
    http_scope = dict(scope)
    http_scope["type"] = "http"
    http_scope["scheme"] = "https" if scope.get("scheme") in ("wss", "https") else "http"
    http_scope.setdefault("method", "GET")
    request = UpgradeRequest(http_scope, _empty_receive)
    request.context = {}
    return request


class _Hooks:
    """The resolved hooks of one connection (``None`` where not given)."""

    __slots__ = HOOK_NAMES

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
            if name == "message":  # typed hook -> validating (peer, message) hook (_typing.py)
                hook = typed_message_hook(hook)
            setattr(self, name, hook)

    upgrade: Hook | None
    open: Hook | None
    message: Hook | None
    close: Hook | None
    error: Hook | None


def _is_factory(source: Any) -> bool:
    """A plain callable without hook attributes is a per-upgrade factory."""
    if source is None or isinstance(source, Mapping) or not callable(source):
        return False
    if inspect.isclass(source):
        return _class_takes_request(source)
    return not any(hasattr(source, name) for name in HOOK_NAMES)


def _class_takes_request(cls: type) -> bool:
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in params
    )


def _header_pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    if not headers:
        return []
    items: Iterable[tuple[str, str]]
    if isinstance(headers, Mapping):
        items = headers.items()
    elif hasattr(headers, "multi_items"):
        items = headers.multi_items()
    else:
        items = headers
    return [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in items]


async def _deny(scope: Mapping[str, Any], send: Any, response: Response) -> None:
    """Reject a handshake with an HTTP response (ASGI websocket denial response).

    Servers without the extension can only refuse: the client then sees 403.
    """
    if "websocket.http.response" in scope.get("extensions", {}):
        body = getattr(response, "body", b"") or b""
        headers = [(k, v) for k, v in response.raw_headers if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def _too_big(data: str | bytes, limit: int) -> bool:
    size = len(data)
    if size > limit:
        return True
    if isinstance(data, str) and size * 4 > limit:
        return len(data.encode("utf-8")) > limit
    return False


_WEBSOCKET_SIGNATURE = inspect.Signature(
    [inspect.Parameter("websocket", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=WebSocket)]
)


class WebSocketHandler:
    """A WebSocket endpoint built from crossws-style hooks.

    Use it as a FastAPI WebSocket endpoint (``app.add_api_websocket_route``),
    through ``H3Router.ws``/``H3.use``, or as a plain ASGI app. It also answers
    plain HTTP with ``426`` (or with the ``http`` handler).
    """

    def __init__(
        self,
        hooks: HooksSource = None,
        *,
        upgrade: Hook | None = None,
        open: Hook | None = None,
        message: Hook | None = None,
        close: Hook | None = None,
        error: Hook | None = None,
        http: Callable[..., Any] | None = None,
        pubsub: PubSub | None = None,
        allowed_origins: Iterable[str] | str | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_peers: int | None = None,
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        namespace: str | None = None,
        send: Any = None,
    ) -> None:
        # Schema docs (asyncapi.py): what the server sends (``send=``, documentation
        # only) and the type the ``message`` hook takes (``Message`` when untyped).
        self.send_type: Any = send
        self.message_type: Any = hooks_message_type(hooks, message)
        overrides = {
            "upgrade": upgrade,
            "open": open,
            "message": message,
            "close": close,
            "error": error,
        }
        if inspect.isclass(hooks) and not _is_factory(hooks):
            hooks = hooks()
        self._factory: Callable[[Request], Any] | None = None
        self._overrides = overrides
        if _is_factory(hooks):
            self._factory = hooks
            self._hooks: _Hooks | None = None
        else:
            self._hooks = _Hooks(hooks, overrides)
        self.http = http
        self.pubsub = pubsub
        if isinstance(allowed_origins, str):
            allowed_origins = [allowed_origins]
        self.allowed_origins: frozenset[str] | None = (
            None if allowed_origins is None else frozenset(o.rstrip("/") for o in allowed_origins)
        )
        self.max_message_size = max_message_size
        self.max_peers = max_peers
        self.send_buffer_limit = send_buffer_limit
        self.namespace = namespace
        self._peers: dict[str, dict[Peer, None]] = {}
        self._count = 0
        # FastAPI reads the endpoint's signature to inject the WebSocket.
        self.__signature__ = _WEBSOCKET_SIGNATURE

    # --- public ---------------------------------------------------------

    @property
    def peers(self) -> dict[str, KeysView[Peer]]:
        """Open peers by namespace, each in connection order (set-like views)."""
        return {ns: dict.fromkeys(peers).keys() for ns, peers in self._peers.items()}

    def publish(self, topic: str, data: Any, namespace: str | None = None) -> Awaitable[None]:
        """Send ``data`` to every subscriber of ``topic`` (only ``namespace`` if given).

        Safe from any thread, including plain ``def`` FastAPI endpoints.
        """
        return self._pubsub().publish(topic, data, namespace=namespace)

    def close_all(self, code: int = 1001, reason: str = "") -> None:
        """Close every open peer of this handler."""
        for peers in list(self._peers.values()):
            for peer in list(peers):
                peer.close(code, reason)

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        """ASGI app (``scope, receive, send``) or FastAPI endpoint (``websocket=``)."""
        if "websocket" in kwargs or (len(args) == 1 and isinstance(args[0], WebSocket)):
            websocket = kwargs.get("websocket") or args[0]
            await self.handle(websocket)
            return
        scope, receive, send = args
        if scope["type"] == "websocket":
            await self._serve(scope, receive, send, None)
        elif scope["type"] == "http":
            response = await self.http_response(Request(scope, receive))
            await response(scope, receive, send)

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one connection handed over by FastAPI or Starlette."""
        receive = getattr(websocket, "_receive", websocket.receive)
        send = getattr(websocket, "_send", websocket.send)
        await self._serve(websocket.scope, receive, send, websocket)

    async def http_response(self, request: Request) -> Response:
        """The answer to a plain HTTP request: ``http`` handler or 426."""
        if self.http is None:
            return PlainTextResponse(
                "WebSocket upgrade is required.",
                status_code=426,
                headers={"upgrade": "websocket"},
            )
        try:
            return to_response(await call_maybe_async(self.http, request))
        except Exception as exc:
            response = exception_to_response(exc)
            if response is None:
                raise
            return response

    # --- internals ------------------------------------------------------

    def _pubsub(self) -> PubSub:
        if self.pubsub is None:
            self.pubsub = get_default_pubsub()
        return self.pubsub

    def _namespace_peers(self, namespace: str) -> KeysView[Peer]:
        return dict.fromkeys(self._peers.get(namespace, ())).keys()

    def _add_peer(self, peer: Peer) -> None:
        self._peers.setdefault(peer.namespace, {})[peer] = None
        self._count += 1
        if self._count == 1:
            try:
                _shutdown.on_server_exit(self, self._on_server_exit)
            except RuntimeError:  # pragma: no cover - no running loop
                pass

    def _remove_peer(self, peer: Peer) -> None:
        peers = self._peers.get(peer.namespace)
        if peers is not None and peer in peers:
            del peers[peer]
            self._count -= 1
            if not peers:
                del self._peers[peer.namespace]

    def _on_server_exit(self) -> Awaitable[None]:
        """Server shutdown: tell every peer we are going away (1001)."""
        peers = [p for ps in self._peers.values() for p in ps]
        for peer in peers:
            peer.close(1001, "server shutting down")
        return _wait_closed(peers)

    def _origin_allowed(self, request: Request) -> bool:
        allowed = self.allowed_origins
        if allowed is None or "*" in allowed:
            return True
        origin = request.headers.get("origin")
        if origin is None:  # not a browser
            return True
        return origin.rstrip("/") in allowed

    async def _resolve(self, request: UpgradeRequest) -> _Hooks:
        if self._hooks is not None:
            return self._hooks
        assert self._factory is not None
        source = await call_maybe_async(self._factory, request)
        if inspect.isclass(source):
            source = source()
        return _Hooks(source, self._overrides)

    async def _serve(
        self,
        scope: Mapping[str, Any],
        receive: Receive,
        send: Send,
        websocket: WebSocket | None,
    ) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        request = _upgrade_request(scope)
        if not self._origin_allowed(request):
            await _deny(scope, send, PlainTextResponse("Origin not allowed", status_code=403))
            return
        if self.max_peers is not None and self._count >= self.max_peers:
            await _deny(scope, send, PlainTextResponse("Too many connections", status_code=503))
            return

        try:
            hooks = await self._resolve(request)
            result = await call_maybe_async(hooks.upgrade, request) if hooks.upgrade else None
        except Exception as exc:
            rejection = exception_to_response(exc)
            if rejection is None:
                logger.exception("h3_fastapi: WebSocket upgrade hook raised")
                rejection = PlainTextResponse("Internal Server Error", status_code=500)
            await _deny(scope, send, rejection)
            return
        if isinstance(result, Response):
            await _deny(scope, send, result)
            return

        accept: dict[str, Any] = {"type": "websocket.accept"}
        # The full URL path (crossws); read from the scope, no URL object kept.
        namespace = self.namespace or scope["path"]
        if result:
            if not isinstance(result, Mapping):
                raise TypeError(f"upgrade hook must return None, a dict or a Response: {result!r}")
            headers = result.get("headers")
            if headers:
                accept["headers"] = _header_pairs(headers)
            if result.get("protocol"):
                accept["subprotocol"] = str(result["protocol"])
            if result.get("namespace"):
                namespace = str(result["namespace"])
            if result.get("context"):
                request.context.update(result["context"])
        try:
            await send(accept)
        except Exception:  # the client left during the handshake
            return

        peer = Peer(
            request=request,
            receive=receive,
            send=send,
            namespace=namespace,
            context=request.context,
            pubsub=self._pubsub(),
            handler=self,
            send_buffer_limit=self.send_buffer_limit,
            websocket=websocket,
        )
        peer._main = asyncio.current_task()
        peer._error_sink = functools.partial(self._transport_error, hooks, peer)
        self._add_peer(peer)
        try:
            # The reader runs ``open`` first, so the writer is already draining
            # while it runs (``await peer.wait_for_drain()`` works in ``open``).
            peer._reader = asyncio.create_task(self._read_loop(peer, hooks))
            await peer._write_loop()
        finally:
            if peer.close_details is None:
                peer._finish(1006, "")
            await self._stop_reader(peer)
            if hooks.close is not None:
                details = peer.close_details or CloseDetails(1006, "")
                try:
                    await call_maybe_async(hooks.close, peer, details)
                except Exception as exc:
                    await self._hook_failed(hooks, peer, "close", exc)
            if self._count == 0:
                _shutdown.remove_server_exit(self)

    async def _read_loop(self, peer: Peer, hooks: _Hooks) -> None:
        """Run ``open``, then receive frames and run ``message``, one at a time."""
        receive = peer._receive
        on_message = hooks.message
        max_size = self.max_message_size
        try:
            if hooks.open is not None:
                try:
                    await call_maybe_async(hooks.open, peer)
                except Exception as exc:
                    await self._hook_failed(hooks, peer, "open", exc)
                if peer._outbox and not peer._writing:
                    await peer._flush()
            while peer._state != 2:
                peer._in_receive = True
                event = await receive()
                peer._in_receive = False
                kind = event["type"]
                if kind == "websocket.receive":
                    if peer._state:
                        continue
                    data = event.get("text")
                    if data is None:
                        data = event.get("bytes") or b""
                    if (
                        max_size is not None
                        and len(data) * 4 > max_size
                        and _too_big(data, max_size)
                    ):
                        peer.close(1009, "message too big")
                        continue
                    if on_message is None:
                        continue
                    try:
                        peer._dispatching = True
                        try:
                            result = on_message(peer, Message(data, peer))
                        finally:
                            peer._dispatching = False
                        # A sync hook's ``peer.send(...)`` result needs no await:
                        # the flush below writes it before the next message.
                        if (
                            result is not None
                            and result.__class__ not in _QUEUED
                            and inspect.isawaitable(result)
                        ):
                            await result
                    except Exception as exc:
                        await self._hook_failed(hooks, peer, "message", exc)
                    if peer._outbox and not peer._writing:
                        await peer._flush(peer._reader)
                elif kind == "websocket.disconnect":
                    # After our own close the details are what we asked for,
                    # whatever the server reports for the reply (granian 1005,
                    # hypercorn 1006).
                    code, reason = peer._close_request or (
                        int(event.get("code") or 1005),
                        event.get("reason") or "",
                    )
                    peer._finish(code, reason)
                    return
        except asyncio.CancelledError:
            if peer._state == 2:
                return
            raise
        except Exception as exc:  # the server's receive failed: treat as a drop
            logger.debug("h3_fastapi: receive failed for peer %s: %r", peer._id, exc)
            peer._finish(1006, "")
            peer._transport_failed(exc)

    async def _stop_reader(self, peer: Peer) -> None:
        reader = peer._reader
        if reader is None or reader.done():
            return
        if peer._in_receive:
            reader.cancel()
        done, _ = await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT)
        if not done:
            reader.cancel()
            await asyncio.wait({reader})

    def _transport_error(self, hooks: _Hooks, peer: Peer, exc: Exception) -> None:
        """A transport failure: hand it to the ``error`` hook (the peer is already closed)."""
        task = asyncio.ensure_future(self._hook_failed(hooks, peer, "transport", exc))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    async def _hook_failed(self, hooks: _Hooks, peer: Peer, name: str, exc: Exception) -> None:
        """Route a hook exception to ``error``, then close 1011 unless already closing."""
        what = "transport failed" if name == "transport" else f"{name} hook raised"
        # A typed hook's invalid message: cause is the ValidationError, close 1007.
        cause, code, reason = hook_error(exc)
        error = WSError(f"{what} {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        if hooks.error is not None:
            try:
                await call_maybe_async(hooks.error, peer, error)
            except Exception:
                logger.exception("h3_fastapi: error hook raised")
        else:
            logger.error("h3_fastapi: WebSocket %s hook raised", name, exc_info=exc)
        if peer._state == 0:
            peer.close(code, reason)


async def _wait_closed(peers: list[Peer]) -> None:
    tasks = {p._main for p in peers if p._main is not None and not p._main.done()}
    if tasks:
        await asyncio.wait(tasks)


def define_websocket_handler(
    hooks: HooksSource = None,
    _http: Callable[..., Any] | None = None,
    /,
    *,
    upgrade: Hook | None = None,
    open: Hook | None = None,
    message: Hook | None = None,
    close: Hook | None = None,
    error: Hook | None = None,
    http: Callable[..., Any] | None = None,
    pubsub: PubSub | None = None,
    allowed_origins: Iterable[str] | str | None = None,
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
    max_peers: int | None = None,
    send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
    namespace: str | None = None,
    send: Any = None,
) -> WebSocketHandler:
    """Build a ``WebSocketHandler`` from crossws hooks.

    ``hooks`` may be a dict, an object or class with hook methods, or a
    factory ``(request) -> hooks`` (sync or async) called for each upgrade.
    Hooks given as keywords win. As in h3, a second positional argument is the
    ``http`` handler for plain (non-upgrade) requests.

    A ``message`` hook whose second parameter is annotated with a Pydantic
    type gets the validated value (an invalid message: ``error`` hook, then
    close 1007). ``send`` declares the type the server sends, for the
    AsyncAPI document.
    """
    return WebSocketHandler(
        hooks,
        upgrade=upgrade,
        open=open,
        message=message,
        close=close,
        error=error,
        http=http or _http,
        pubsub=pubsub,
        allowed_origins=allowed_origins,
        max_message_size=max_message_size,
        max_peers=max_peers,
        send_buffer_limit=send_buffer_limit,
        namespace=namespace,
        send=send,
    )


def define_websocket(hooks: HooksSource = None, /, **hook_functions: Hook) -> Any:
    """Define WebSocket hooks (typing helper, as in h3): returns them unchanged.

    Keyword hooks are merged into a dict: ``define_websocket(message=...)``.
    """
    unknown = set(hook_functions) - set(HOOK_NAMES)
    if unknown:
        raise TypeError(f"unknown WebSocket hooks: {', '.join(sorted(unknown))}")
    if not hook_functions:
        return hooks if hooks is not None else {}
    merged: dict[str, Hook] = {}
    if isinstance(hooks, Mapping):
        merged.update(hooks)
    elif hooks is not None:
        for name in HOOK_NAMES:
            hook = getattr(hooks, name, None)
            if hook is not None:
                merged[name] = hook
    merged.update(hook_functions)
    return merged
