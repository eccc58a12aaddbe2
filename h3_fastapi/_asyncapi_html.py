"""The offline HTML page of an AsyncAPI document: inline CSS, no script, no CDN."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_html"]

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
        parts.extend(_channel_html(document, key, channel))
    if schemas:
        parts.append(f"<h2>Schemas <small>({len(schemas)})</small></h2>")
        for name, schema in schemas.items():
            parts.append(
                f"<details class='schema' id='schema-{esc(name)}'><summary>{esc(name)}</summary>"
                f"<pre>{_pretty(schema)}</pre></details>"
            )
    parts.append("</main></body></html>")
    return "".join(parts)


def _channel_html(document: dict[str, Any], key: str, channel: dict[str, Any]) -> list[str]:
    esc = html.escape
    kind = (channel.get("tags") or [{"name": ""}])[0]["name"]
    label = "WebSocket" if kind == "websocket" else "SSE"
    parts = [
        f"<section class='channel' id='channel-{esc(key)}' data-channel='{esc(key)}'>"
        f"<h3>{esc(channel.get('address', ''))}"
        f"<span class='tag {esc(kind)}'>{label}</span></h3>"
    ]
    if channel.get("description"):
        parts.append(f"<p>{esc(channel['description'])}</p>")
    if channel.get("parameters"):
        names = ", ".join(f"<code>{esc(p)}</code>" for p in channel["parameters"])
        parts.append(f"<p class='params'>Path parameters: {names}</p>")
    for op_key, op in document.get("operations", {}).items():
        if op.get("channel", {}).get("$ref") == f"#/channels/{key}":
            parts.extend(_operation_html(document, op_key, op))
    parts.append("</section>")
    return parts


def _operation_html(document: dict[str, Any], op_key: str, op: dict[str, Any]) -> list[str]:
    esc = html.escape
    components = document.get("components", {})
    messages = components.get("messages", {})
    schemas = components.get("schemas", {})
    action = op.get("action", "")
    parts = [
        f"<div class='op {esc(action)}' data-operation='{esc(op_key)}'>"
        f"<span class='action'>{esc(action)}</span> {esc(op.get('summary', ''))}"
    ]
    for ref in op.get("messages", []):
        name = ref["$ref"].rsplit("/", 1)[-1]
        message = messages.get(name, {})
        payload = message.get("payload", {})
        schema_ref = payload.get("$ref", "") if isinstance(payload, dict) else ""
        link = ""
        if schema_ref.startswith("#/components/schemas/") and len(payload) == 1:
            model = schema_ref.rsplit("/", 1)[-1]
            payload = schemas.get(model, payload)  # show the model, link to it
            link = f" <a href='#schema-{esc(model)}'>schema</a>"
        parts.append(
            f"<details><summary>{esc(message.get('title') or name)}</summary>"
            f"<pre>{_pretty(payload)}</pre>{link}</details>"
        )
    parts.append("</div>")
    return parts
