"""WebSocket handlers with crossws hooks: ``define_websocket_handler``.

The flow of one connection: the ASGI ``websocket.connect`` event is checked
(origin, peer limit), the hooks are resolved (static, factory or ``resolve``),
the ``upgrade`` hook's FastAPI dependencies are solved (``_dependencies.py``;
nothing for a plain ``upgrade(request)``), ``upgrade`` accepts or rejects the
handshake (``_rejection.py`` maps errors as FastAPI does), a ``Peer`` is
created and ``open`` runs; then a reader task feeds ``message`` while the
connection's own task writes the peer's outbox (``peer.py``); when either
side ends it, ``close`` runs exactly once, and then ``yield`` dependencies
finish. Plain ``def`` hooks run in the threadpool unless ``sync_hooks="loop"``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, KeysView, Mapping
from typing import Any, TypedDict

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from typing_extensions import Unpack

from ._connection import PeerTable, Upgrade, _Connection, _wait_closed, upgrade_result
from ._dependencies import close_own_stacks, upgrade_dependencies
from ._hooks import (
    HOOK_NAMES,
    SYNC_HOOKS_VALUES,
    Hook,
    Hooks,
    SyncHooks,
    WSError,
    call_in_thread,
    call_maybe_async,
)
from ._ops import ops
from ._rejection import deny, install_quiet_denials, rejection_for
from ._responses import exception_to_response, to_response
from ._typing import hooks_message_type
from .limits import RateLimit
from .peer import CloseDetails, Peer, UpgradeRequest, upgrade_request
from .pubsub import PubSub, get_default_pubsub

__all__ = [
    "HOOK_NAMES",
    "CloseDetails",
    "UpgradeRequest",
    "WSError",
    "WebSocketHandler",
    "WebSocketOptions",
    "define_websocket",
    "define_websocket_handler",
]

HooksSource = Any  # dict | object with hook methods | class | factory(request)

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_PATH_PARAM = _PARAM

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_SEND_BUFFER_LIMIT = 4 * 1024 * 1024


class WebSocketOptions(TypedDict, total=False):
    """The keyword options of ``define_websocket_handler``, ``WebSocketHandler``, ``H3Router.ws``.

    Written once here (as h3's ``ProxyOptions``); every way of making a handler
    takes the same ones. Hooks given as keywords win over those of ``hooks``.
    """

    upgrade: Hook | None
    open: Hook | None
    message: Hook | None
    close: Hook | None
    error: Hook | None
    drain: Hook | None
    #: The handler for plain (non-upgrade) HTTP requests; else they get 426.
    http: Callable[..., Any] | None
    #: The pub/sub of this handler (default: the process-wide one).
    pubsub: PubSub | None
    #: Exact ``scheme://host[:port]`` origins, ``"*"`` for any (the default).
    allowed_origins: Iterable[str] | str | None
    #: Bytes (UTF-8 bytes for text); over it the peer is closed 1009. ``None``: no limit.
    max_message_size: int | None
    #: Open peers at most; over it the upgrade gets 503. ``None``: no limit.
    max_peers: int | None
    #: Bytes queued per peer before it is closed 1013.
    send_buffer_limit: int
    #: The namespace of every peer (default: the concrete URL path).
    namespace: str | None
    #: The type the server sends (documentation: the AsyncAPI document).
    send: Any
    #: crossws ``resolve(request)``: hooks for one upgrade, over the static ones.
    resolve: Callable[[Request], Any] | None
    #: ``get_namespace(request)``: the namespace of one upgrade.
    get_namespace: Callable[[Request], Any] | None
    #: Where plain ``def`` hooks run: ``"threadpool"`` (default) or ``"loop"``.
    sync_hooks: SyncHooks
    #: ``drain`` runs when a buffer that reached this many bytes is written out
    #: (default: half of ``send_buffer_limit``).
    drain_threshold: int | None
    #: What each peer may send and how often one client address may connect
    #: (``h3_fastapi.limits.RateLimit``).
    rate_limit: RateLimit | None


_OPTION_NAMES = frozenset(WebSocketOptions.__annotations__)


def _hook_dict(source: Any) -> dict[str, Hook]:
    """The hooks ``source`` (dict, object or class instance) defines, by name."""
    if source is None:
        return {}
    if inspect.isclass(source):
        source = source()
    if isinstance(source, Mapping):
        return {n: source[n] for n in HOOK_NAMES if source.get(n) is not None}
    return {n: h for n in HOOK_NAMES if (h := getattr(source, n, None)) is not None}


class _Closing:
    """Returned by ``close_all``: closing has started; await to wait until every peer is closed."""

    __slots__ = ("_connections",)

    def __init__(self, connections: list[_Connection]) -> None:
        self._connections = connections

    def __await__(self) -> Generator[Any, None, None]:
        return _wait_closed(self._connections).__await__()


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


def _serve_route_directly(route: Any, handler: WebSocketHandler) -> None:
    """Let a FastAPI route without dependencies call ``handler`` as plain ASGI from now on.

    FastAPI's WebSocket route wraps every connection in a ``WebSocket``, two
    ``AsyncExitStack``s, exception handling and a dependency solve, and keeps
    them for the connection's life: about 6 KiB per idle peer. For a route
    with no dependencies (its own, its router's or ``include_router``'s) and
    no parameters, none of that does anything for a handler, which maps
    exceptions and solves its ``upgrade`` hook's dependencies itself. The route
    is the one FastAPI built for the app (after every ``include_router``), so
    it is only known from its first connection; a route with dependencies
    keeps FastAPI's wrapper for every connection.
    """
    dependant = getattr(route, "dependant", None)
    if dependant is None or getattr(route, "endpoint", None) is not handler:
        return
    if (
        dependant.dependencies
        or dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
    ):
        return
    route.app = handler


class WebSocketHandler:
    """A WebSocket endpoint built from crossws-style hooks.

    Use it as a FastAPI WebSocket endpoint (``app.add_api_websocket_route``),
    through ``H3Router.ws``/``H3.use``, or as a plain ASGI app. It also answers
    plain HTTP with ``426`` (or with the ``http`` handler).
    """

    def __init__(
        self,
        hooks: HooksSource = None,
        http: Callable[..., Any] | None = None,
        /,
        **options: Unpack[WebSocketOptions],
    ) -> None:
        unknown = options.keys() - _OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown WebSocket handler options: {', '.join(sorted(unknown))}")
        sync_hooks = options.get("sync_hooks", "threadpool")
        if sync_hooks not in SYNC_HOOKS_VALUES:
            raise ValueError(f"sync_hooks must be 'threadpool' or 'loop', got {sync_hooks!r}")
        self.sync_hooks: SyncHooks = sync_hooks
        # Schema docs (asyncapi.py): what the server sends (``send=``, documentation
        # only) and the type the ``message`` hook takes (``Message`` when untyped).
        self.send_type: Any = options.get("send")
        self.message_type: Any = hooks_message_type(hooks, options.get("message"))
        given: Mapping[str, Any] = options
        self._set_hooks(hooks, {name: given.get(name) for name in HOOK_NAMES}, options)
        self.get_namespace = options.get("get_namespace")
        self.http = options.get("http") or http
        self.pubsub = options.get("pubsub")
        allowed_origins = options.get("allowed_origins")
        if isinstance(allowed_origins, str):
            allowed_origins = [allowed_origins]
        self.allowed_origins: frozenset[str] | None = (
            None if allowed_origins is None else frozenset(o.rstrip("/") for o in allowed_origins)
        )
        self.max_message_size = options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self.max_peers = options.get("max_peers")
        self.send_buffer_limit = options.get("send_buffer_limit", DEFAULT_SEND_BUFFER_LIMIT)
        # The ``drain`` hook runs when a buffer that reached this many bytes is written out.
        drain_threshold = options.get("drain_threshold")
        self.drain_threshold = (
            drain_threshold if drain_threshold is not None else max(1, self.send_buffer_limit // 2)
        )
        self.namespace = options.get("namespace")
        self.rate_limit = options.get("rate_limit")
        self._peers = PeerTable()
        # Route path patterns this handler serves: as registered (router prefix
        # included), then as reached (app prefixes and mounts included).
        self._patterns: list[str] = []
        install_quiet_denials()
        # FastAPI reads the endpoint's signature to inject the WebSocket.
        self.__signature__ = _WEBSOCKET_SIGNATURE

    def _set_hooks(
        self, hooks: HooksSource, overrides: dict[str, Hook | None], options: WebSocketOptions
    ) -> None:
        """Static hooks, a per-upgrade factory, or crossws ``resolve`` over static ones."""
        if inspect.isclass(hooks) and not _is_factory(hooks):
            hooks = hooks()
        self._factory: Callable[[Request], Any] | None = None
        self._overrides = overrides
        self._hooks: Hooks | None = None
        resolve = options.get("resolve")
        if _is_factory(hooks):
            self._factory = hooks
        elif resolve is not None:
            # crossws ``resolve``: per-upgrade hooks over the static ones (they win by name).
            self._factory = resolve
            self._overrides = {**_hook_dict(hooks), **{k: v for k, v in overrides.items() if v}}
        else:
            self._hooks = Hooks(hooks, overrides, self.sync_hooks)

    @property
    def peers(self) -> dict[str, KeysView[Peer]]:
        """Open peers by namespace, each in connection order (set-like views)."""
        return self._peers.by_namespace()

    def publish(self, topic: str, data: Any, namespace: str | None = None) -> Awaitable[None]:
        """Send ``data`` to every subscriber of ``topic`` (only ``namespace`` if given).

        Safe from any thread, including plain ``def`` FastAPI endpoints.
        """
        return self._pubsub().publish(topic, data, namespace=namespace)

    def namespace_for(self, route: str | None = None, /, **path_params: Any) -> str:
        """The namespace of this handler's route with ``path_params`` filled in.

        ``handler.namespace_for(room="blue")`` is ``"/v1/rooms/blue"`` for a route
        ``/rooms/{room}`` under the prefix ``/v1``: use it for
        ``publish(..., namespace=)``. Prefixes of ``include_router`` and mounts
        are known once the route has been reached in this process; before that,
        the path as registered on its router is used. A handler served at
        several patterns takes the one whose parameters are exactly those
        given; ``route`` (the pattern or a suffix of it, ``"/rooms/{room}"``)
        picks one when that is ambiguous.
        """
        names = set(path_params)
        candidates = [
            p
            for p in self._patterns
            if set(_PARAM.findall(p)) == names and (route is None or p.endswith(route))
        ]
        if not candidates:
            raise ValueError(
                f"no route of this handler takes exactly {sorted(names)}"
                f" (routes: {self._patterns or 'none registered'})"
            )
        # The last learned pattern of each registered one is its full form.
        full = [p for p in candidates if not any(q != p and q.endswith(p) for q in candidates)]
        if len(full) > 1:
            raise ValueError(f"several routes match, name one with route=: {full}")
        return _PATH_PARAM.sub(lambda m: str(path_params[m.group(1)]), full[0])

    def _learn_pattern(self, scope: Mapping[str, Any]) -> None:
        route = scope.get("route")
        fmt = getattr(route, "path_format", None)
        if fmt:
            self.add_pattern(scope.get("root_path", "").rstrip("/") + fmt)

    def add_pattern(self, pattern: str) -> None:
        """Record a route path pattern this handler is served at, for ``namespace_for``.

        The routers call it with the path as registered (their prefix included);
        the handler adds the full one (app prefixes, mounts) when a route is reached.
        """
        if pattern not in self._patterns:
            self._patterns.append(pattern)

    def close_all(self, code: int = 1001, reason: str = "") -> Awaitable[None]:
        """Close every open peer of this handler (crossws ``ws.close()``).

        Closing starts at once; await the result to wait until every peer has
        closed (its ``close`` hook has run). Safe to call without awaiting.
        """
        return _Closing(self._peers.close_all(code, reason))

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        """The members of ``topic`` in every process (``{"id", "info"}`` each); see ``presence``."""
        from ._presence import presence

        return await presence(topic, pubsub=self._pubsub())

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        """ASGI app (``scope, receive, send``) or FastAPI endpoint (``websocket=``)."""
        if "websocket" in kwargs or (len(args) == 1 and isinstance(args[0], WebSocket)):
            # FastAPI's endpoint call: served here, one coroutine frame less per peer.
            websocket = kwargs.get("websocket") or args[0]
            receive = getattr(websocket, "_receive", websocket.receive)
            send = getattr(websocket, "_send", websocket.send)
            scope = websocket.scope
            _serve_route_directly(scope.get("route"), self)
        else:
            scope, receive, send = args
            websocket = None
        if scope["type"] == "websocket":
            connection = await self._accept(scope, receive, send, websocket)
            if connection is None:
                return
            try:  # the handshake's frame is gone by now
                watch = connection.watch
                await (connection.run() if watch is None else watch.run(connection))
            finally:
                await close_own_stacks(scope)
        elif scope["type"] == "http":
            response = await self.http_response(Request(scope, receive))
            await response(scope, receive, send)

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one connection handed over by FastAPI or Starlette."""
        await self(websocket=websocket)

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

    def _refusal(self, scope: Scope) -> tuple[str, Response] | None:
        """Why a connecting client is refused before any hook runs (origin, rate, peer limit).

        The ``max_peers`` slot is taken here, before any await, so concurrent
        upgrades cannot overshoot; ``None`` means it was taken.
        """
        allowed = self.allowed_origins
        if allowed is not None and "*" not in allowed:
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            # No origin: not a browser.
            if origin is not None and origin.decode("latin-1").rstrip("/") not in allowed:
                return "origin", PlainTextResponse("Origin not allowed", status_code=403)
        if self.rate_limit is not None:  # limits.py: connections per client address
            too_many = self.rate_limit.admit(HTTPConnection(scope))
            if too_many is not None:
                return "rate", too_many
        if not self._peers.reserve(self.max_peers):
            return "limit", PlainTextResponse("Too many connections", status_code=503)
        return None

    async def _accept(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        websocket: WebSocket | None,
    ) -> _Connection | None:
        """The handshake: the accepted connection, or ``None`` when it was refused."""
        event = await receive()
        if event["type"] != "websocket.connect":
            return None
        refusal = self._refusal(scope)
        if refusal is not None:
            if ops.on:
                ops.rejected(scope, refusal[0])
            await deny(scope, send, refusal[1])
            return None
        if "route" in scope:
            self._learn_pattern(scope)
        connection = None
        try:
            # The upgrade request (a scope copy) only for a factory or ``upgrade`` to take.
            request = None
            if self._hooks is None or self._hooks.upgrade is not None:
                request = upgrade_request(scope)
            hooks, upgrade, websocket = await self._upgrade(
                scope, request, receive, send, websocket
            )
            if upgrade.rejection is not None:
                if ops.on:
                    ops.rejected(scope, "upgrade")
                await deny(scope, send, upgrade.rejection)
                return None
            connection = await self._open(scope, receive, send, hooks, upgrade, request, websocket)
            return connection
        finally:
            if connection is None:
                self._peers.release()
                await close_own_stacks(scope)

    async def _open(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hooks: Hooks,
        upgrade: Upgrade,
        request: UpgradeRequest | None,
        websocket: WebSocket | None,
    ) -> _Connection | None:
        """Accept the handshake ``upgrade`` allowed: the connection, ``None`` if the client left."""
        if upgrade.context and request is not None:  # a context comes from ``upgrade``
            request.context.update(upgrade.context)
        namespace = upgrade.namespace
        if namespace is None and self.get_namespace is not None:
            request = request or upgrade_request(scope)
            namespace = await call_maybe_async(self.get_namespace, request)
        try:
            await send(upgrade.accept_message())
        except Exception:  # the client left during the handshake
            return None
        return _Connection(
            scope=scope,
            request=request,
            receive=receive,
            send=send,
            # The full URL path (crossws); read from the scope, no URL object kept.
            namespace=namespace or self.namespace or scope["path"],
            hooks=hooks,
            peers=self._peers,
            pubsub=self._pubsub(),
            send_buffer_limit=self.send_buffer_limit,
            max_message_size=self.max_message_size,
            websocket=websocket,
            protocol=upgrade.protocol,
            drain_threshold=self.drain_threshold,
            rate_limit=self.rate_limit,
        )

    async def _resolve(self, request: UpgradeRequest) -> Hooks:
        """This connection's hooks: the static ones, or what the factory/``resolve`` returns."""
        if self._hooks is not None:
            return self._hooks
        assert self._factory is not None
        source = await call_maybe_async(self._factory, request)
        if inspect.isclass(source):
            source = source()
        return Hooks(source, self._overrides, self.sync_hooks)

    async def _upgrade(
        self,
        scope: Scope,
        request: UpgradeRequest | None,
        receive: Receive,
        send: Send,
        websocket: WebSocket | None,
    ) -> tuple[Hooks, Upgrade, WebSocket | None]:
        """Resolve this connection's hooks and run ``upgrade``; its result, normalised.

        ``request`` is ``None`` when the hooks are static and have no ``upgrade``.
        The ``WebSocket`` returned is the one dependencies were solved with (if any).
        """
        if request is None:
            assert self._hooks is not None
            return self._hooks, Upgrade(), websocket
        try:
            hooks = await self._resolve(request)
            hook = hooks.upgrade
            if hook is None:
                return hooks, Upgrade(), websocket
            route = scope.get("route")
            needs = upgrade_dependencies(hook, getattr(route, "path_format", ""))
            if needs is None:  # ``upgrade(request)``: as it always was
                outcome = await hooks.caller("upgrade")(hook, request)
            else:
                if websocket is None:  # a plain-ASGI mount: its own stack goes in ``scope``
                    websocket = WebSocket(scope, receive, send)
                values = await needs.solve(websocket)
                request.context.update(values)
                call = needs.bind(hook, request, values)
                if "upgrade" in hooks.threaded:
                    outcome = await call_in_thread(call)
                else:
                    outcome = await call_maybe_async(call)
            return hooks, upgrade_result(outcome), websocket
        except Exception as exc:
            try:
                rejection = await rejection_for(exc, request, websocket)
            except Exception as handler_error:
                exc = handler_error
                rejection = None
            if rejection is None:
                return Hooks(None, {}), upgrade_result(exc), websocket
            return Hooks(None, {}), Upgrade(rejection=rejection), websocket


def define_websocket_handler(
    hooks: HooksSource = None,
    http: Callable[..., Any] | None = None,
    /,
    **options: Unpack[WebSocketOptions],
) -> WebSocketHandler:
    """Build a ``WebSocketHandler`` from crossws hooks.

    ``hooks`` may be a dict, an object or class with hook methods, or a
    factory ``(request) -> hooks`` (sync or async) called for each upgrade.
    Hooks given as keywords win. As in h3, a second positional argument is the
    ``http`` handler for plain (non-upgrade) requests. The keyword options are
    ``WebSocketOptions``.

    A ``message`` hook whose second parameter is annotated with a Pydantic
    type gets the validated value (an invalid message: ``error`` hook, then
    close 1007). ``send`` declares the type the server sends, for the
    AsyncAPI document.

    Plain ``def`` hooks run in the threadpool (as FastAPI runs ``def``
    endpoints), one at a time per peer and in order; ``sync_hooks="loop"``
    runs them on the event loop. ``resolve(request)`` (crossws) returns hooks
    for one upgrade, over the static ones; ``get_namespace(request)`` returns
    its namespace. ``drain(peer)`` runs when a peer's buffer that reached
    ``drain_threshold`` bytes (default half of ``send_buffer_limit``) has been
    written out.
    """
    return WebSocketHandler(hooks, http, **options)


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
