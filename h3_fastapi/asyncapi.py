"""AsyncAPI 3.0 for an app's real-time routes: ``get_asyncapi`` and ``add_asyncapi``.

OpenAPI describes request/response; WebSockets and Server-Sent Events are
message channels, which is what AsyncAPI 3.0 describes. ``get_asyncapi(app)``
walks the app's routes (included routers, mounted sub-apps and ``H3.use``
mounts too) and makes:

- one channel per WebSocket route whose endpoint is a ``WebSocketHandler``:
  its address (path parameters as AsyncAPI parameters) and ``ws`` bindings; a
  ``receive`` operation with what the ``message`` hook takes (its annotation),
  a ``send`` operation with what ``send=`` declares;
- one channel per event-stream route (``@event_stream``, ``response_class=
  EventStream``, ``-> EventStream``), with a ``send`` operation of its items;
- the Pydantic schemas once, under ``components.schemas`` (``$ref`` as FastAPI
  shares them in OpenAPI). A discriminated union becomes one message per member.

The operations are the server's point of view, as in AsyncAPI: ``receive`` is
what clients send to the app. ``add_asyncapi(app)`` serves the document and a
self-contained HTML page (inline CSS, no script, no CDN) that reads offline.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import routing as fastapi_routing
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, WebSocketRoute

from ._asyncapi_html import render_html
from ._openapi import stream_item
from ._typing import type_adapter
from .message import Message
from .websocket import WebSocketHandler

__all__ = ["add_asyncapi", "get_asyncapi"]

ASYNCAPI_VERSION = "3.0.0"
WS_BINDING_VERSION = "0.1.0"
HTTP_BINDING_VERSION = "0.3.0"
_REF_TEMPLATE = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


@dataclass
class _Channel:
    """One real-time route found in the app."""

    kind: str  # "websocket" | "sse"
    address: str
    name: str | None
    description: str
    receive: Any = None  # type a client sends (WebSocket ``message`` hook)
    send: Any = None  # type the server sends
    methods: list[str] = field(default_factory=list)


def _contexts(routes: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """``(original route, route as served)`` with included routers' prefixes applied."""
    iter_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if iter_contexts is None:  # FastAPI that copies included routes
        for route in routes:
            yield route, route
        return
    for context in iter_contexts(routes):
        yield context.original_route, getattr(context, "_effective_route", context.original_route)


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path or "/"
    if not path or path == "/":
        return prefix or "/"
    return prefix.rstrip("/") + path


def _channels(routes: Sequence[Any], prefix: str = "") -> Iterator[_Channel]:
    for original, route in _contexts(routes):
        path = _join(prefix, str(getattr(route, "path_format", None) or getattr(route, "path", "")))
        endpoint = getattr(route, "endpoint", None)
        if isinstance(original, (fastapi_routing.APIWebSocketRoute, WebSocketRoute)):
            if isinstance(endpoint, WebSocketHandler):
                yield _websocket_channel(endpoint, path, getattr(route, "name", None))
        elif isinstance(original, fastapi_routing.APIRoute):
            if not getattr(route, "include_in_schema", True):
                continue
            is_stream, item = stream_item(route)
            if is_stream:
                yield _Channel(
                    kind="sse",
                    address=path,
                    name=getattr(route, "name", None),
                    description=getattr(route, "description", "") or "",
                    send=item,
                    methods=sorted(getattr(route, "methods", None) or ["GET"]),
                )
        elif isinstance(original, Mount):
            mount_path = getattr(route, "path", "") or ""
            app = getattr(route, "app", None)
            if isinstance(app, WebSocketHandler):
                yield _websocket_channel(app, mount_path or "/", getattr(route, "name", None))
            else:
                sub_routes = getattr(app, "routes", None)
                if sub_routes:
                    yield from _channels(sub_routes, _join(prefix, mount_path))


def _websocket_channel(handler: WebSocketHandler, path: str, name: str | None) -> _Channel:
    return _Channel(
        kind="websocket",
        address=path,
        name=name,
        description="",
        receive=getattr(handler, "message_type", None),
        send=getattr(handler, "send_type", None),
    )


def _key(text: str, taken: set[str]) -> str:
    """A unique component key (``^[\\w\\d.\\-_]+$``)."""
    base = re.sub(r"[^\w.\-]+", "_", text).strip("_") or "root"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}_{n}", n + 1
    taken.add(key)
    return key


def _title(tp: Any) -> str:
    name = getattr(tp, "__name__", None)
    if isinstance(name, str) and name.isidentifier():
        return name
    return re.sub(r"[^\w]+", "_", repr(tp)).strip("_")


def _asyncapi_schema(schema: Any) -> Any:
    """JSON Schema from Pydantic as an AsyncAPI Schema Object.

    AsyncAPI's ``discriminator`` is the property name (a string), not OpenAPI's object.
    """
    if isinstance(schema, dict):
        out = {k: _asyncapi_schema(v) for k, v in schema.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator.get("propertyName")
        return out
    if isinstance(schema, list):
        return [_asyncapi_schema(v) for v in schema]
    return schema


def _messages_for(
    schema: dict[str, Any], tp: Any, role: str, channel_key: str, kind: str
) -> list[tuple[str, dict[str, Any]]]:
    """``(name, message object)`` for a payload schema: one per member of a union of models."""
    content_type = "application/json"
    members = schema.get("oneOf") or schema.get("anyOf")
    if members and all(isinstance(m, dict) and "$ref" in m for m in members):
        found = []
        for member in members:
            model = member["$ref"].rsplit("/", 1)[-1]
            found.append(
                (
                    model,
                    {
                        "name": model,
                        "title": model,
                        "contentType": content_type,
                        "payload": member,
                    },
                )
            )
        return found
    if "$ref" in schema and len(schema) == 1:
        name = schema["$ref"].rsplit("/", 1)[-1]
    else:
        name = f"{channel_key}.{role}"
    message: dict[str, Any] = {"name": name, "title": _title(tp), "payload": schema}
    message["contentType"] = content_type
    return [(name, message)]


def _any_message(channel_key: str, role: str, kind: str) -> tuple[str, dict[str, Any]]:
    name = f"{channel_key}.{role}"
    if kind == "sse":
        return name, {
            "name": name,
            "title": "Event",
            "summary": "One Server-Sent Event (its data field)",
            "contentType": "text/plain",
            "payload": {"type": "string"},
        }
    return name, {
        "name": name,
        "title": "Message",
        "summary": "Any text or binary message (the message hook takes a Message)",
        "payload": {},
    }


def get_asyncapi(
    app: Any,
    *,
    title: str | None = None,
    version: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``app``'s WebSocket and event-stream routes.

    ``title``/``version`` default to the FastAPI app's own. Schemas come from
    the annotations of ``message`` hooks, ``send=`` and ``AsyncIterator[Model]``
    event-stream generators; the document validates against the official
    AsyncAPI 3.0.0 JSON Schema.
    """
    channels = list(_channels(getattr(app, "routes", None) or []))
    schemas, definitions = _payload_schemas(channels)
    document = _Document(schemas)
    for index, channel in enumerate(channels):
        document.add_channel(index, channel)
    info: dict[str, Any] = {
        "title": title or getattr(app, "title", None) or "h3-fastapi app",
        "version": version or getattr(app, "version", None) or "0.1.0",
    }
    if description:
        info["description"] = description
    return document.build(info, definitions)


def _payload_schemas(channels: list[_Channel]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Every payload type's schema, made in one pass so shared models get one component."""
    inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
    for index, channel in enumerate(channels):
        if channel.receive is not None and channel.receive is not Message:
            inputs.append(((index, "receive"), "validation", type_adapter(channel.receive)))
        if channel.send is not None and channel.send is not Message:
            inputs.append(((index, "send"), "serialization", type_adapter(channel.send)))
    if not inputs:
        return {}, {}
    by_key, top = TypeAdapter.json_schemas(inputs, ref_template=_REF_TEMPLATE)
    schemas = {key: value for (key, _mode), value in by_key.items()}
    return schemas, top.get("$defs", {})


def _channel_entry(channel: _Channel) -> dict[str, Any]:
    """The channel object, without its messages."""
    summary = "WebSocket" if channel.kind == "websocket" else "Server-Sent Events"
    entry: dict[str, Any] = {
        "address": channel.address,
        "title": f"{channel.address} ({summary})",
    }
    if channel.description:
        entry["description"] = channel.description
    params = _PATH_PARAM.findall(channel.address)
    if params:
        entry["parameters"] = {p: {"description": f"Path parameter {p}"} for p in params}
    if channel.kind == "websocket":
        entry["bindings"] = {"ws": {"method": "GET", "bindingVersion": WS_BINDING_VERSION}}
    entry["tags"] = [{"name": "websocket" if channel.kind == "websocket" else "sse"}]
    return entry


def _operation(channel: _Channel, action: str, key: str, refs: list[Any]) -> dict[str, Any]:
    """The ``receive``/``send`` operation of a channel (the server's point of view)."""
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{key}"},
        "messages": refs,
    }
    if channel.kind == "sse":
        operation["summary"] = "Events the server streams"
        method = channel.methods[0] if channel.methods else "GET"
        operation["bindings"] = {"http": {"method": method, "bindingVersion": HTTP_BINDING_VERSION}}
    elif action == "receive":
        operation["summary"] = "Messages clients send (the message hook)"
    else:
        operation["summary"] = "Messages the server sends (send=)"
    return operation


class _Document:
    """Channels, operations and message components, collected route by route."""

    __slots__ = (
        "channels",
        "messages",
        "operations",
        "schemas",
        "taken_channels",
        "taken_messages",
    )

    def __init__(self, schemas: dict[Any, Any]) -> None:
        self.schemas = schemas
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.taken_channels: set[str] = set()
        self.taken_messages: set[str] = set()

    def add_channel(self, index: int, channel: _Channel) -> None:
        named = channel.name and channel.name != WebSocketHandler.__name__
        key = _key(str(channel.name) if named else channel.address, self.taken_channels)
        entry = _channel_entry(channel)
        channel_messages: dict[str, Any] = {}
        for action in ("receive", "send"):
            tp = channel.receive if action == "receive" else channel.send
            if tp is None and not (channel.kind == "sse" and action == "send"):
                continue
            if tp is None or tp is Message:
                found = [_any_message(key, action, channel.kind)]
            else:
                found = _messages_for(self.schemas[(index, action)], tp, action, key, channel.kind)
            names = [self._add_message(n, m, key, channel_messages) for n, m in found]
            refs = [{"$ref": f"#/channels/{key}/messages/{name}"} for name in names]
            self.operations[f"{key}.{action}"] = _operation(channel, action, key, refs)
        entry["messages"] = channel_messages
        self.channels[key] = entry

    def _add_message(
        self, name: str, message: dict[str, Any], key: str, channel_messages: dict[str, Any]
    ) -> str:
        """Share ``message`` as a component (renamed if another one took its name)."""
        if name in channel_messages:
            return name
        schema = _asyncapi_schema(message)
        component = self.messages.get(name)
        if component is not None and component != schema:
            name = _key(f"{key}.{name}", self.taken_messages)
        else:
            self.taken_messages.add(name)
        self.messages[name] = schema
        channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        return name

    def build(self, info: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": "application/json",
            "channels": self.channels,
            "operations": self.operations,
        }
        components: dict[str, Any] = {}
        if definitions:
            components["schemas"] = _asyncapi_schema(definitions)
        if self.messages:
            components["messages"] = self.messages
        if components:
            document["components"] = components
        return document


def add_asyncapi(
    app: Any,
    *,
    json_url: str = "/asyncapi.json",
    docs_url: str | None = "/asyncapi",
    title: str | None = None,
    version: str | None = None,
) -> None:
    """Serve ``get_asyncapi(app)`` at ``json_url`` and a readable page at ``docs_url``.

    The document is made on first request (when every route is registered)
    and kept, as FastAPI does for ``/openapi.json``. The page needs no network.
    """
    cached: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if "doc" not in cached:
            cached["doc"] = get_asyncapi(app, title=title, version=version)
        return cached["doc"]  # type: ignore[no-any-return]

    async def asyncapi_json(request: Request) -> Response:
        return JSONResponse(document())

    app.add_route(json_url, asyncapi_json, include_in_schema=False)
    if docs_url is not None:

        async def asyncapi_html(request: Request) -> Response:
            return HTMLResponse(render_html(document(), json_url=json_url))

        app.add_route(docs_url, asyncapi_html, include_in_schema=False)
