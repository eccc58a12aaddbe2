"""FastAPI dependencies of the ``upgrade`` hook, solved once per connection.

An ``upgrade(request)`` hook with one unannotated parameter is called as it
always was (nothing here runs for it). Any other signature is read once (per
hook function and route path) with FastAPI's own ``get_dependant``: ``Depends``
(``yield`` ones included), path, query, header and cookie parameters, and
``WebSocket``/``HTTPConnection`` parameters, exactly as FastAPI reads a
WebSocket endpoint. Each upgrade solves them with ``solve_dependencies``
against the connection's ``WebSocket``, on the ``AsyncExitStack`` FastAPI put
in the scope for the route (so ``yield`` dependencies finish when the
connection has ended, after the ``close`` hook); a plain-ASGI mount gets its
own stack. The first parameter, when unannotated or annotated ``Request``,
(unannotated, ``Any``, or a ``Request``/``HTTPConnection`` type) is the
upgrade request itself. A validation error is a
``RequestValidationError`` (the caller answers 422 with FastAPI's body).
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant, get_typed_signature, solve_dependencies
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

__all__ = ["UpgradeDependencies", "close_own_stacks", "upgrade_dependencies"]

_INNER, _FUNCTION = "fastapi_inner_astack", "fastapi_function_astack"
_OWN = "h3_fastapi.astack"  # the stack made here for a plain-ASGI mount

_cache: weakref.WeakKeyDictionary[Any, dict[str, UpgradeDependencies | None]] = (
    weakref.WeakKeyDictionary()
)


class UpgradeDependencies:
    """The dependant of one ``upgrade`` hook on one route path, and how to call the hook."""

    __slots__ = ("dependant", "positional", "request_name")

    def __init__(self, dependant: Dependant, request_name: str | None, positional: bool) -> None:
        self.dependant = dependant
        self.request_name = request_name
        self.positional = positional  # the request parameter is positional-only

    async def solve(self, websocket: WebSocket) -> dict[str, Any]:
        """Solve every dependency and parameter; their values by parameter name."""
        scope = websocket.scope
        if _INNER not in scope:  # not a FastAPI route: a stack of our own
            own = contextlib.AsyncExitStack()
            scope[_OWN] = own
            scope[_INNER] = scope[_FUNCTION] = own
        app = scope.get("app")
        provider = app if hasattr(app, "dependency_overrides") else None
        solved = await solve_dependencies(
            request=websocket,
            dependant=self.dependant,
            async_exit_stack=scope[_INNER],
            embed_body_fields=False,
            dependency_overrides_provider=provider,
        )
        if solved.errors:
            raise RequestValidationError(solved.errors)
        return solved.values

    def bind(
        self, hook: Callable[..., Any], request: Request, values: Mapping[str, Any]
    ) -> Callable[[], Any]:
        """``hook`` with its arguments: the request and the solved values."""
        kwargs = dict(values)
        if self.request_name is None:
            return lambda: hook(**kwargs)
        if self.positional:
            return lambda: hook(request, **kwargs)
        kwargs[self.request_name] = request
        return lambda: hook(**kwargs)


def _is_request_parameter(param: inspect.Parameter) -> bool:
    if param.default is not param.empty or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        return False
    annotation = param.annotation
    if annotation in (param.empty, Any, object):
        return True
    return (
        isinstance(annotation, type)
        and issubclass(annotation, HTTPConnection)
        and not issubclass(annotation, WebSocket)
    )


def _read(hook: Callable[..., Any], path: str) -> UpgradeDependencies | None:
    try:
        signature = get_typed_signature(hook)
    except Exception:  # an annotation that cannot be resolved: called as ``upgrade(request)``
        return None
    params = list(signature.parameters.values())
    request_name = None
    positional = False
    if params and _is_request_parameter(params[0]):
        request_name = params[0].name
        positional = params[0].kind is params[0].POSITIONAL_ONLY
        params = params[1:]
    if request_name is not None and not params:
        return None  # the classic ``upgrade(request)``
    stub: Any = lambda: None  # noqa: E731 - never called; only its signature is read
    stub.__signature__ = inspect.Signature(params)
    return UpgradeDependencies(get_dependant(path=path, call=stub), request_name, positional)


def upgrade_dependencies(hook: Callable[..., Any], path: str) -> UpgradeDependencies | None:
    """What FastAPI must solve for ``hook`` on route ``path``; ``None`` for ``upgrade(request)``."""
    key = getattr(hook, "__func__", hook)
    try:
        by_path = _cache.setdefault(key, {})
    except TypeError:  # not weak-referenceable
        return _read(hook, path)
    try:
        return by_path[path]
    except KeyError:
        found = by_path[path] = _read(hook, path)
        return found


async def close_own_stacks(scope: Mapping[str, Any]) -> None:
    """Finish the ``yield`` dependencies of a plain-ASGI connection."""
    own = scope.get(_OWN)
    if own is not None:
        await own.aclose()
