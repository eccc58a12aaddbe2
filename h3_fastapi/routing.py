"""App glue: ``H3Router`` (an ``APIRouter``), ``H3`` (a ``FastAPI``) and ``serve``.

``H3Router.ws`` registers a ``WebSocketHandler`` as a FastAPI WebSocket route
(so dependencies, path parameters and middleware run for the upgrade) plus a
GET route on the same path that answers plain HTTP with 426 or the ``http``
handler. ``H3`` adds h3's call style: ``app.get("/", handler)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import typing
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, params
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from . import _shutdown
from . import pubsub as pubsub_module
from ._event_stream import EventStream
from ._hooks import call_maybe_async
from ._responses import to_response
from ._server_headers import DefaultHeaders
from ._servers import make_backend
from .pubsub import PubSub
from .websocket import HOOK_NAMES, WebSocketHandler, define_websocket_handler

__all__ = ["H3", "H3Router", "Server", "serve", "ws_max_size"]

_HOOK_NAMES = frozenset(HOOK_NAMES)
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _as_handler(hooks: Any, options: dict[str, Any]) -> WebSocketHandler:
    if isinstance(hooks, WebSocketHandler):
        if options:
            raise TypeError("options can only be given with hooks, not with a WebSocketHandler")
        return hooks
    return define_websocket_handler(hooks, **options)


def _add_websocket(
    router: APIRouter,
    path: str,
    handler: WebSocketHandler,
    *,
    name: str | None,
    dependencies: Sequence[params.Depends] | None,
    pubsub: PubSub | None,
) -> None:
    if handler.pubsub is None and pubsub is not None:
        handler.pubsub = pubsub
    router.add_api_websocket_route(path, handler, name=name, dependencies=dependencies)
    handler.add_pattern(getattr(router, "prefix", "") + path)

    async def upgrade_required(request: Request) -> Response:
        return await handler.http_response(request)

    router.add_api_route(
        path,
        upgrade_required,
        methods=["GET"],
        include_in_schema=False,
        name=f"{name}_http" if name else None,
    )
    _register(router, handler)


def _is_event_stream(endpoint: Callable[..., Any], response_class: Any) -> bool:
    """An ``@event_stream`` endpoint, ``response_class=EventStream`` or ``-> EventStream``."""
    if hasattr(endpoint, "__h3_stream_item__"):
        return True
    if isinstance(response_class, type) and issubclass(response_class, EventStream):
        return True
    try:
        returned = inspect.signature(endpoint).return_annotation
        if isinstance(returned, str):  # ``from __future__ import annotations``
            returned = typing.get_type_hints(endpoint).get("return")
    except Exception:  # no signature, or an annotation that cannot be resolved
        return False
    return isinstance(returned, type) and issubclass(returned, EventStream)


def _add_head_route(
    add: Callable[..., Any], path: str, endpoint: Callable[..., Any], kwargs: dict[str, Any]
) -> None:
    """Answer ``HEAD`` from the GET route (h3 does): the same endpoint, not in the schema.

    A separate route keeps the OpenAPI document free of duplicate operations;
    the server sends the GET's status and headers without a body.
    """
    options = dict(kwargs, methods=["HEAD"], include_in_schema=False)
    if options.get("name"):
        options["name"] = f"{options['name']}_head"
    options.pop("operation_id", None)
    add(path, endpoint, **options)


class _HeadForGet:
    """``add_api_route`` that also answers HEAD for GET routes (all, or event streams only)."""

    _head_for_every_get = False

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)  # type: ignore[misc]
        methods = {m.upper() for m in kwargs.get("methods") or ["GET"]}
        if "GET" in methods and "HEAD" not in methods:
            if self._head_for_every_get or _is_event_stream(endpoint, kwargs.get("response_class")):
                _add_head_route(super().add_api_route, path, endpoint, kwargs)  # type: ignore[misc]


class _H3AppRouter(_HeadForGet, APIRouter):
    """The router of an ``H3`` app: every GET route answers HEAD, as in h3."""

    _head_for_every_get = True


def ws_max_size(app: Any) -> int | None:
    """The largest ``max_message_size`` of the WebSocket handlers registered on ``app``.

    ``app`` is an ``H3``, an ``H3Router``, or a FastAPI app with H3Routers
    included. ``None`` when a handler has no limit or none is found. Give it to
    the server (uvicorn ``ws_max_size``) so it refuses an oversized message
    while its fragments arrive, before assembling it in memory.
    """
    handlers: dict[int, WebSocketHandler] = {}
    seen: set[int] = set()

    def walk(router: Any) -> None:
        if router is None or id(router) in seen:
            return
        seen.add(id(router))
        for handler in _handlers(router):
            handlers[id(handler)] = handler
        for route in getattr(router, "routes", ()):
            endpoint = getattr(route, "endpoint", None)
            if isinstance(endpoint, WebSocketHandler):
                handlers[id(endpoint)] = endpoint
            # An included router (FastAPI keeps it as is) or a mounted app.
            walk(getattr(route, "original_router", None))
            walk(getattr(route, "app", None))
        walk(getattr(router, "router", None))
        for included in getattr(router, "_h3_included", ()):
            walk(included)

    walk(app)
    sizes = [h.max_message_size for h in handlers.values()]
    if not sizes or any(size is None for size in sizes):
        return None
    return max(size for size in sizes if size is not None)


# The WebSocket handlers registered on each router, by ``id`` (a Starlette router
# compares by its routes, so it is no dict key), for ``_close_on_shutdown`` and
# ``ws_max_size``. Kept here rather than on the router; an entry goes with its router.
_registered: dict[int, list[WebSocketHandler]] = {}


def _handlers(router: Any) -> list[WebSocketHandler]:
    """The handlers registered on ``router`` through ``_add_websocket`` (a copy)."""
    return list(_registered.get(id(router), ()))


def _register(router: APIRouter, handler: WebSocketHandler) -> None:
    handlers = _registered.get(id(router))
    if handlers is None:
        handlers = _registered[id(router)] = []
        weakref.finalize(router, _registered.pop, id(router), None)
    handlers.append(handler)


@contextlib.asynccontextmanager
async def _close_on_shutdown(router: Any) -> AsyncIterator[None]:
    """Lifespan: on shutdown close open peers (1001), streams and the pub/sub."""
    yield
    await _shutdown.notify_server_exit()
    handlers = _handlers(router)
    for handler in handlers:
        handler.close_all(1001, "server shutting down")
    # The backplanes in use, the process-wide one included (event streams use
    # it even where no handler does), each closed once.
    backplanes = [h.pubsub for h in handlers]
    backplanes += [getattr(router, "pubsub", None), pubsub_module.current_default()]
    closed: set[int] = set()
    for pubsub in backplanes:
        if pubsub is not None and id(pubsub) not in closed:
            closed.add(id(pubsub))
            await pubsub.close()


class H3Router(_HeadForGet, APIRouter):
    """An ``APIRouter`` with ``ws()`` for crossws-style WebSocket handlers.

    ``pubsub`` is the backplane for handlers registered here that do not name
    their own (default: the process-wide one, ``H3_PUBSUB_URL`` or memory).
    Its event-stream GET routes also answer ``HEAD`` (headers, no body).
    """

    @property
    def ws_max_size(self) -> int | None:
        """The largest ``max_message_size`` of its handlers: the server's ``ws_max_size``."""
        return ws_max_size(self)

    def __init__(self, *, pubsub: PubSub | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("lifespan", lambda app: _close_on_shutdown(self))
        super().__init__(**kwargs)
        self.pubsub = pubsub

    def include_router(self, router: Any, *args: Any, **kwargs: Any) -> None:
        """FastAPI's ``include_router``; also remembers H3Routers for ``ws_max_size``."""
        super().include_router(router, *args, **kwargs)
        if not hasattr(self, "_h3_included"):
            self._h3_included: list[Any] = []
        self._h3_included.append(router)

    def ws(
        self,
        path: str,
        hooks: Any = None,
        *,
        name: str | None = None,
        dependencies: Sequence[params.Depends] | None = None,
        **options: Any,
    ) -> Any:
        """Register a WebSocket route from hooks or a ``WebSocketHandler``.

        Call form returns the handler; decorator form (``@router.ws(path)`` on a
        hooks class, object or factory) replaces the decorated name with it.
        Extra keywords are ``define_websocket_handler`` options.
        """

        def register(source: Any) -> WebSocketHandler:
            handler = _as_handler(source, options)
            _add_websocket(
                self,
                path,
                handler,
                name=name,
                dependencies=dependencies,
                pubsub=self.pubsub,
            )
            return handler

        if hooks is None and not _HOOK_NAMES.intersection(options):
            return register
        return register(hooks)


def _is_h3_style(handler: Callable[..., Any]) -> bool:
    """``handler(event)`` or ``handler()`` with no FastAPI annotations."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    return len(params) <= 1 and all(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty
        and p.annotation is p.empty
        for p in params
    )


def _h3_endpoint(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an h3-style ``handler(request)`` as a FastAPI endpoint."""
    takes_request = bool(inspect.signature(handler).parameters)

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        args = (request,) if takes_request else ()
        return to_response(await call_maybe_async(handler, *args))

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    )
    return endpoint


class _RouteMethod(Protocol):
    """How ``app.get`` and its siblings are called (on an ``H3``, ``self`` bound)."""

    def __call__(self, path: str, handler: Any = None, **kwargs: Any) -> Any: ...


def _h3_method(method: str) -> _RouteMethod:
    """``H3.get`` and its siblings: FastAPI's decorator, or h3's ``app.get(path, handler)``."""
    name = method.lower()

    def route(self: H3, path: str, handler: Any = None, **kwargs: Any) -> Any:
        if handler is None:
            return getattr(super(H3, self), name)(path, **kwargs)
        return self._route([method], path, handler, kwargs)

    route.__name__, route.__qualname__ = name, f"H3.{name}"
    route.__doc__ = f"``@app.{name}(path)`` (FastAPI) or ``app.{name}(path, handler)`` (h3)."
    return typing.cast(_RouteMethod, route)  # a method: ``self`` is bound on access


class H3(FastAPI):
    """A FastAPI app that also takes h3's call style.

    ``app.get("/", handler)`` registers ``handler`` directly; a handler taking
    one unannotated argument gets the ``Request`` (h3's ``event``) and may
    return a ``Response``, text, bytes or JSON-able data. A
    ``WebSocketHandler`` given to ``get``/``all``/``use`` becomes a WebSocket
    route. Without a handler these methods are FastAPI's decorators.
    """

    def __init__(self, *, pubsub: PubSub | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pubsub = pubsub
        # Every GET route answers HEAD too (h3 does); same router otherwise.
        self.router.__class__ = _H3AppRouter
        self.router.lifespan_context = _merge(self.router.lifespan_context, self.router)

    @property
    def ws_max_size(self) -> int | None:
        """The largest ``max_message_size`` of its handlers: the server's ``ws_max_size``."""
        return ws_max_size(self)

    def _route(self, methods: list[str], path: str, handler: Any, kwargs: dict[str, Any]) -> Any:
        if isinstance(handler, WebSocketHandler):
            _add_websocket(
                self.router,
                path,
                handler,
                name=kwargs.get("name"),
                dependencies=kwargs.get("dependencies"),
                pubsub=self.pubsub,
            )
            return handler
        endpoint = _h3_endpoint(handler) if _is_h3_style(handler) else handler
        self.add_api_route(path, endpoint, methods=methods, **kwargs)
        return handler

    get = _h3_method("GET")
    post = _h3_method("POST")
    put = _h3_method("PUT")
    patch = _h3_method("PATCH")
    delete = _h3_method("DELETE")

    def all(self, path: str, handler: Any = None, **kwargs: Any) -> Any:
        """Every HTTP method on ``path`` (h3's ``app.all``); decorator without a handler."""
        if handler is None:
            return lambda h: self._route(list(_ALL_METHODS), path, h, kwargs)
        return self._route(list(_ALL_METHODS), path, handler, kwargs)

    def use(self, path: str | Any, handler: Any = None) -> Any:
        """Mount a ``WebSocketHandler`` or any ASGI app at ``path``."""
        if handler is None:
            path, handler = "", path
        if isinstance(handler, WebSocketHandler):
            return self._route(["GET"], path or "/", handler, {})
        app: ASGIApp = handler
        self.mount(path, app)
        return handler

    def ws(self, path: str, hooks: Any = None, **options: Any) -> Any:
        """Register a WebSocket route (same as ``H3Router.ws``)."""

        def register(source: Any) -> WebSocketHandler:
            return self._route(["GET"], path, _as_handler(source, options), {})  # type: ignore[no-any-return]

        if hooks is None and not _HOOK_NAMES.intersection(options):
            return register
        return register(hooks)


def _merge(inner: Any, router: Any) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state, _close_on_shutdown(router):
            yield state

    return lifespan


class Server:
    """A running server started by ``serve``: ``url``, ``await ready()``, ``await close()``."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        options: dict[str, Any],
        server: str = "uvicorn",
    ) -> None:
        options.setdefault("log_level", "info")
        if isinstance(app, str) and server == "hypercorn":
            app = _import_app(app)  # only uvicorn takes "module:app" itself
        if not isinstance(app, str):
            app = _prepare(app, server, options)
        self._backend = make_backend(server, app, host, port, options)
        self.server = server
        self.config = self._backend.config
        self.host = host
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port (the real one once started with ``port=0``)."""
        return self._backend.port

    @property
    def url(self) -> str:
        """``http://host:port/`` (the real port once started with ``port=0``)."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> Server:
        """Start serving as a task of the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._backend.serve())
        return self

    async def ready(self) -> Server:
        """Wait until the server accepts connections."""
        if self._task is None:
            self.start()
        assert self._task is not None
        backend = self._backend
        started = asyncio.ensure_future(backend.started.wait())
        await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        failure = backend.failure()
        if not backend.started.is_set() or failure is not None:
            started.cancel()
            reason = f": {failure}" if failure else ""
            raise RuntimeError(f"{self.server} failed to start on {self.host}:{self.port}{reason}")
        port = backend.bound_port()
        if port:
            backend.port = port
        return self

    async def close(self) -> None:
        """Stop accepting, close open connections and wait for shutdown."""
        if self._task is None:
            return
        self._backend.request_exit()
        await asyncio.wait({self._task})

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        self._backend.run()


def _import_app(target: str) -> Any:
    """``"module:attr"`` -> the object."""
    import importlib

    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"serve(): app {target!r} is not in the form 'module:attribute'")
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module))


def _prepare(app: Any, server: str, options: dict[str, Any]) -> Any:
    """Map the WebSocket limit and the Date/Server headers onto ``server``'s settings."""
    server_header = bool(options.pop("server_header", True))
    date = bool(options.pop("date_header", True))
    # The server refuses an oversized message while its fragments arrive,
    # before assembling it in memory (max_message_size checks it after).
    size = ws_max_size(app)
    if server == "uvicorn":
        if size is not None:
            options.setdefault("ws_max_size", size)
        # One Date and one Server per response: uvicorn would add its own next
        # to a proxied upstream's, so it adds none and the wrapper fills in
        # only what a response lacks ("module:app" strings are left to uvicorn).
        options.update(server_header=False, date_header=False)
    elif server == "hypercorn":
        if size is not None:
            options.setdefault("websocket_max_message_size", size)
        options.update(include_server_header=False, include_date_header=False)
    return DefaultHeaders(app, date=date, server=server if server_header else None)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    block: bool | None = None,
    server: str = "uvicorn",
    **server_options: Any,
) -> Server:
    """Serve ``app`` like h3's ``serve(app)``: with uvicorn, or ``server="hypercorn"``.

    Inside a running event loop it starts in the background and returns a
    ``Server`` (``await server.ready()``). From a plain script (no running
    loop) it blocks until the server stops. ``server_options`` go to the
    server's own settings (``uvicorn.Config``, or hypercorn's ``Config``
    attributes). ``server="granian"`` raises ``ValueError`` with the command
    to run instead (granian runs its own processes).

    Every response carries one ``Date`` and one ``Server: <server>``, added only
    where the app (or a proxied upstream) set none; the server's own, which
    uvicorn and hypercorn add unconditionally, are turned off.
    ``server_header=False`` / ``date_header=False`` leave them out. See
    docs/servers.md.
    """
    handle = Server(app, host, port, server_options, server)
    if block is None:
        try:
            asyncio.get_running_loop()
            block = False
        except RuntimeError:
            block = True
    if block:
        handle.run()
    else:
        handle.start()
    return handle
