"""WebSocket handlers with crossws hooks: ``define_websocket_handler``.

The flow of one connection: the ASGI ``websocket.connect`` event is checked
(origin, peer limit), the ``upgrade`` hook accepts or rejects the handshake,
a ``Peer`` is created and ``open`` runs; then a reader task feeds ``message``
while the connection's own task writes the peer's outbox (``peer.py``); when
either side ends it, ``close`` runs exactly once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, KeysView, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Send
from starlette.websockets import WebSocket

from ._connection import PeerTable, Upgrade, _Connection, deny, upgrade_result
from ._hooks import HOOK_NAMES, Hook, Hooks, WSError, call_maybe_async
from ._responses import exception_to_response, to_response
from ._typing import hooks_message_type
from .peer import CloseDetails, Peer
from .pubsub import PubSub, get_default_pubsub

__all__ = [
    "HOOK_NAMES",
    "CloseDetails",
    "UpgradeRequest",
    "WSError",
    "WebSocketHandler",
    "define_websocket",
    "define_websocket_handler",
]

HooksSource = Any  # dict | object with hook methods | class | factory(request)

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_SEND_BUFFER_LIMIT = 4 * 1024 * 1024


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
            self._hooks: Hooks | None = None
        else:
            self._hooks = Hooks(hooks, overrides)
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
        self._peers = PeerTable()
        # FastAPI reads the endpoint's signature to inject the WebSocket.
        self.__signature__ = _WEBSOCKET_SIGNATURE

    @property
    def peers(self) -> dict[str, KeysView[Peer]]:
        """Open peers by namespace, each in connection order (set-like views)."""
        return self._peers.by_namespace()

    def publish(self, topic: str, data: Any, namespace: str | None = None) -> Awaitable[None]:
        """Send ``data`` to every subscriber of ``topic`` (only ``namespace`` if given).

        Safe from any thread, including plain ``def`` FastAPI endpoints.
        """
        return self._pubsub().publish(topic, data, namespace=namespace)

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        """The members of ``topic`` in every process (``{"id", "info"}`` each); see ``presence``."""
        from ._presence import presence

        return await presence(topic, pubsub=self._pubsub())

    def close_all(self, code: int = 1001, reason: str = "") -> None:
        """Close every open peer of this handler."""
        self._peers.close_all(code, reason)

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

    def _pubsub(self) -> PubSub:
        if self.pubsub is None:
            self.pubsub = get_default_pubsub()
        return self.pubsub

    def _origin_allowed(self, request: Request) -> bool:
        allowed = self.allowed_origins
        if allowed is None or "*" in allowed:
            return True
        origin = request.headers.get("origin")
        if origin is None:  # not a browser
            return True
        return origin.rstrip("/") in allowed

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
            await deny(scope, send, PlainTextResponse("Origin not allowed", status_code=403))
            return
        # The slot is taken before any await, so concurrent upgrades cannot overshoot.
        if not self._peers.reserve(self.max_peers):
            await deny(scope, send, PlainTextResponse("Too many connections", status_code=503))
            return
        connection = None
        try:
            hooks, upgrade = await self._upgrade(request)
            if upgrade.rejection is not None:
                await deny(scope, send, upgrade.rejection)
                return
            if upgrade.context:
                request.context.update(upgrade.context)
            try:
                await send(upgrade.accept_message())
            except Exception:  # the client left during the handshake
                return
            connection = _Connection(
                request=request,
                receive=receive,
                send=send,
                # The full URL path (crossws); read from the scope, no URL object kept.
                namespace=upgrade.namespace or self.namespace or scope["path"],
                hooks=hooks,
                peers=self._peers,
                pubsub=self._pubsub(),
                send_buffer_limit=self.send_buffer_limit,
                max_message_size=self.max_message_size,
                websocket=websocket,
            )
        finally:
            if connection is None:
                self._peers.release()
        if connection is not None:
            await connection.run()

    async def _upgrade(self, request: UpgradeRequest) -> tuple[Hooks, Upgrade]:
        """Resolve this connection's hooks and run ``upgrade``; its result, normalised."""
        hooks = self._hooks
        try:
            if hooks is None:
                assert self._factory is not None
                source = await call_maybe_async(self._factory, request)
                if inspect.isclass(source):
                    source = source()
                hooks = Hooks(source, self._overrides)
            if hooks.upgrade is None:
                return hooks, Upgrade()
            return hooks, upgrade_result(await call_maybe_async(hooks.upgrade, request))
        except Exception as exc:
            return Hooks(None, {}), upgrade_result(exc)


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
