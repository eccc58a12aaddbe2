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

import html
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import routing as fastapi_routing
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, WebSocketRoute

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


# --- finding the routes -------------------------------------------------------


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


# --- the document -------------------------------------------------------------


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
    routes = getattr(app, "routes", None) or []
    channels = list(_channels(routes))

    # All payload types in one pass so shared models get one component each.
    inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
    for index, channel in enumerate(channels):
        if channel.receive is not None and channel.receive is not Message:
            inputs.append(((index, "receive"), "validation", type_adapter(channel.receive)))
        if channel.send is not None and channel.send is not Message:
            inputs.append(((index, "send"), "serialization", type_adapter(channel.send)))
    schemas: dict[Any, Any] = {}
    definitions: dict[str, Any] = {}
    if inputs:
        by_key, top = TypeAdapter.json_schemas(inputs, ref_template=_REF_TEMPLATE)
        schemas = {key: value for (key, _mode), value in by_key.items()}
        definitions = top.get("$defs", {})

    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    taken_channels: set[str] = set()
    taken_messages: set[str] = set()
    for index, channel in enumerate(channels):
        named = channel.name and channel.name != WebSocketHandler.__name__
        key = _key(str(channel.name) if named else channel.address, taken_channels)
        entry: dict[str, Any] = {"address": channel.address}
        summary = "WebSocket" if channel.kind == "websocket" else "Server-Sent Events"
        entry["title"] = f"{channel.address} ({summary})"
        if channel.description:
            entry["description"] = channel.description
        params = _PATH_PARAM.findall(channel.address)
        if params:
            entry["parameters"] = {p: {"description": f"Path parameter {p}"} for p in params}
        if channel.kind == "websocket":
            entry["bindings"] = {"ws": {"method": "GET", "bindingVersion": WS_BINDING_VERSION}}
        entry["tags"] = [{"name": "websocket" if channel.kind == "websocket" else "sse"}]
        channel_messages: dict[str, Any] = {}
        for role, action in (("receive", "receive"), ("send", "send")):
            tp = channel.receive if role == "receive" else channel.send
            if tp is None and not (channel.kind == "sse" and role == "send"):
                continue
            if tp is None or tp is Message:
                found = [_any_message(key, role, channel.kind)]
            else:
                found = _messages_for(schemas[(index, role)], tp, role, key, channel.kind)
            refs = []
            for name, message in found:
                if name not in channel_messages:
                    component = messages.get(name)
                    if component is not None and component != _asyncapi_schema(message):
                        name = _key(f"{key}.{name}", taken_messages)
                    else:
                        taken_messages.add(name)
                    messages[name] = _asyncapi_schema(message)
                    channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
                refs.append({"$ref": f"#/channels/{key}/messages/{name}"})
            operation: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": refs,
            }
            if channel.kind == "sse":
                operation["summary"] = "Events the server streams"
                operation["bindings"] = {
                    "http": {
                        "method": channel.methods[0] if channel.methods else "GET",
                        "bindingVersion": HTTP_BINDING_VERSION,
                    }
                }
            elif action == "receive":
                operation["summary"] = "Messages clients send (the message hook)"
            else:
                operation["summary"] = "Messages the server sends (send=)"
            operations[f"{key}.{action}"] = operation
        entry["messages"] = channel_messages
        doc_channels[key] = entry

    info: dict[str, Any] = {
        "title": title or getattr(app, "title", None) or "h3-fastapi app",
        "version": version or getattr(app, "version", None) or "0.1.0",
    }
    if description:
        info["description"] = description
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "channels": doc_channels,
        "operations": operations,
    }
    components: dict[str, Any] = {}
    if definitions:
        components["schemas"] = _asyncapi_schema(definitions)
    if messages:
        components["messages"] = messages
    if components:
        document["components"] = components
    return document


# --- serving it ---------------------------------------------------------------


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


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
header{background:#263238;color:#fff;padding:1.2rem 2rem}header h1{margin:0;font-size:1.5rem}
header p{margin:.2rem 0 0;opacity:.8}main{max-width:960px;margin:0 auto;padding:1rem 2rem 3rem}
h2{border-bottom:1px solid #d0d5dd;padding-bottom:.3rem}
.channel{background:#fff;border:1px solid #d0d5dd;border-radius:8px;margin:1rem 0;padding:1rem}
.channel h3{margin:0;font-family:ui-monospace,Menlo,monospace;font-size:1.05rem}
.tag{display:inline-block;border-radius:4px;padding:0 .45rem;font-size:.75rem;font-weight:600;
margin-left:.5rem;vertical-align:middle;color:#fff}.websocket{background:#1565c0}.sse{background:#6a1b9a}
.op{margin:.8rem 0 0;padding:.6rem .8rem;border-left:4px solid #90a4ae;background:#f9fafb}
.op.receive{border-color:#2e7d32}.op.send{border-color:#ef6c00}.action{font-weight:700;
text-transform:uppercase;font-size:.8rem}
pre{background:#0f1720;color:#e6edf3;padding:.7rem;border-radius:6px;overflow:auto;font-size:.8rem}
code{font-family:ui-monospace,Menlo,monospace}details summary{cursor:pointer;font-weight:600}
.params{font-size:.9rem;color:#475467}
"""


def _pretty(value: Any) -> str:
    return html.escape(json.dumps(value, indent=2, ensure_ascii=False))


def render_html(document: dict[str, Any], *, json_url: str = "/asyncapi.json") -> str:
    """A self-contained page for an AsyncAPI document: channels, operations, schemas."""
    esc = html.escape
    info = document.get("info", {})
    channels = document.get("channels", {})
    operations = document.get("operations", {})
    messages = document.get("components", {}).get("messages", {})
    schemas = document.get("components", {}).get("schemas", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(str(info.get('title', 'AsyncAPI')))} – AsyncAPI</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{esc(str(info.get('title', '')))}</h1>",
        f"<p>AsyncAPI {esc(str(document.get('asyncapi', '')))} · version "
        f"{esc(str(info.get('version', '')))} · <a style='color:#fff' href='{esc(json_url)}'>"
        "JSON document</a></p></header><main>",
        f"<h2>Channels <small>({len(channels)})</small></h2>",
    ]
    if info.get("description"):
        parts.insert(6, f"<p>{esc(str(info['description']))}</p>")
    for key, channel in channels.items():
        kind = (channel.get("tags") or [{"name": ""}])[0]["name"]
        label = "WebSocket" if kind == "websocket" else "SSE"
        parts.append(
            f"<section class='channel' id='channel-{esc(key)}' data-channel='{esc(key)}'>"
            f"<h3>{esc(channel.get('address', ''))}"
            f"<span class='tag {esc(kind)}'>{label}</span></h3>"
        )
        if channel.get("description"):
            parts.append(f"<p>{esc(channel['description'])}</p>")
        if channel.get("parameters"):
            names = ", ".join(f"<code>{esc(p)}</code>" for p in channel["parameters"])
            parts.append(f"<p class='params'>Path parameters: {names}</p>")
        for op_key, op in operations.items():
            if op.get("channel", {}).get("$ref") != f"#/channels/{key}":
                continue
            action = op.get("action", "")
            parts.append(
                f"<div class='op {esc(action)}' data-operation='{esc(op_key)}'>"
                f"<span class='action'>{esc(action)}</span> {esc(op.get('summary', ''))}"
            )
            for ref in op.get("messages", []):
                name = ref["$ref"].rsplit("/", 1)[-1]
                message = messages.get(name, {})
                payload = message.get("payload", {})
                ref = payload.get("$ref", "") if isinstance(payload, dict) else ""
                link = ""
                if ref.startswith("#/components/schemas/") and len(payload) == 1:
                    model = ref.rsplit("/", 1)[-1]
                    payload = schemas.get(model, payload)  # show the model, link to it
                    link = f" <a href='#schema-{esc(model)}'>schema</a>"
                parts.append(
                    f"<details><summary>{esc(message.get('title') or name)}</summary>"
                    f"<pre>{_pretty(payload)}</pre>{link}</details>"
                )
            parts.append("</div>")
        parts.append("</section>")
    if schemas:
        parts.append(f"<h2>Schemas <small>({len(schemas)})</small></h2>")
        for name, schema in schemas.items():
            parts.append(
                f"<details class='schema' id='schema-{esc(name)}'><summary>{esc(name)}</summary>"
                f"<pre>{_pretty(schema)}</pre></details>"
            )
    parts.append("</main></body></html>")
    return "".join(parts)
