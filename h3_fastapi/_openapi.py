"""Event-stream routes in FastAPI's OpenAPI: ``text/event-stream`` with an item schema.

FastAPI documents its own ``EventSourceResponse`` generator routes through two
route attributes, ``is_sse_stream`` and ``stream_item_field``; every other
route gets ``application/json``. An ``EventStream`` route (``@event_stream``,
``response_class=EventStream`` or ``-> EventStream``) is a plain ``async def``
to FastAPI, so nothing in the route says "SSE" when FastAPI builds it, and an
included router's routes are rebuilt lazily by FastAPI. FastAPI has no hook for
a response class to describe itself, so ``install()`` wraps the one function
``FastAPI.openapi()`` calls (``fastapi.applications.get_openapi``): before the
schema is made, ``document_event_streams`` sets those two attributes on every
event-stream route, and FastAPI writes the same shape as for its own SSE.
They only feed OpenAPI: the request handler of a non-generator endpoint never
reads them.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import routing as fastapi_routing
from starlette.routing import BaseRoute

__all__ = ["document_event_streams", "event_stream_routes", "install", "stream_item"]


def stream_item(route: Any) -> tuple[bool, Any | None]:
    """``(is an event-stream route, item type or None)`` for an API route."""
    endpoint = getattr(route, "endpoint", None)
    if endpoint is None:
        return False, None
    if hasattr(endpoint, "__h3_stream_item__"):  # @event_stream
        return True, endpoint.__h3_stream_item__
    from ._event_stream import EventStream

    response_class = getattr(route, "response_class", None)
    response_class = getattr(response_class, "value", response_class)  # DefaultPlaceholder
    if inspect.isclass(response_class) and issubclass(response_class, EventStream):
        return True, None
    try:
        returned = typing.get_type_hints(endpoint).get("return")
    except Exception:
        returned = None
    if inspect.isclass(returned) and issubclass(returned, EventStream):
        return True, None
    return False, None


def _api_routes(routes: Sequence[Any]) -> Iterator[Any]:
    """Every API route as FastAPI's OpenAPI sees it (included routers' copies too)."""
    iter_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if iter_contexts is None:  # FastAPI that copies included routes
        for route in routes:
            if isinstance(route, fastapi_routing.APIRoute):
                yield route
        return
    for context in iter_contexts(routes):
        if isinstance(context.original_route, fastapi_routing.APIRoute):
            yield getattr(context, "_effective_route", context.original_route)


def event_stream_routes(routes: Sequence[Any]) -> Iterator[tuple[Any, Any | None]]:
    """``(route, item type)`` for each event-stream API route in ``routes``."""
    for route in _api_routes(routes):
        is_stream, item = stream_item(route)
        if is_stream:
            yield route, item


def document_event_streams(routes: Sequence[BaseRoute | Any]) -> None:
    """Mark event-stream routes the way FastAPI marks its own SSE routes (idempotent)."""
    from fastapi.utils import create_model_field

    for route, item in event_stream_routes(routes):
        if getattr(route, "is_sse_stream", False):
            continue
        route.is_sse_stream = True
        route.is_json_stream = False
        route.response_model = None
        route.response_field = None
        if item is not None:
            route.stream_item_type = item
            route.stream_item_field = create_model_field(
                name=f"StreamItem_{getattr(route, 'unique_id', 'event_stream')}",
                type_=item,
                mode="serialization",
            )


def install() -> None:
    """Wrap ``fastapi.applications.get_openapi`` once (see the module docstring)."""
    from fastapi import applications

    original = getattr(applications, "get_openapi", None)
    if original is None:
        return
    if getattr(original, "__h3_wrapped__", False):
        return
    try:
        from fastapi.sse import EventSourceResponse  # noqa: F401 - the shape we reuse
    except ImportError:  # FastAPI before native SSE: no itemSchema shape to borrow
        return

    @functools.wraps(original)
    def get_openapi(*args: Any, **kwargs: Any) -> dict[str, Any]:
        document_event_streams(list(kwargs.get("routes") or ()))
        schema: dict[str, Any] = original(*args, **kwargs)
        return schema

    get_openapi.__h3_wrapped__ = True  # type: ignore[attr-defined]
    setattr(applications, "get_openapi", get_openapi)  # noqa: B010 - not a public attribute
