"""A traced chat on a Redis backplane, for tests/test_tracing.py (one process per server).

Env: ``REDIS_URL``; ``TRACE_FILE`` (finished spans, one JSON object a line);
``ASGI_OTEL=1`` wraps the app in opentelemetry-instrumentation-asgi's
middleware, to show that a connection then gets its server span, not two.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from h3_fastapi import H3Router, Message, Peer, RedisPubSub, enable_tracing


def _line(span: ReadableSpan) -> str:
    return json.dumps(json.loads(span.to_json())) + "\n"


provider = TracerProvider()
_out = open(os.environ["TRACE_FILE"], "a", encoding="utf-8")  # open for the process
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_out, formatter=_line)))
enable_tracing(provider)

pubsub = RedisPubSub(os.environ["REDIS_URL"])
h3 = H3Router(pubsub=pubsub)


def _open(peer: Peer) -> None:
    peer.subscribe("room")


def _message(peer: Peer, message: Message) -> None:
    peer.publish("room", message.text())


h3.ws("/ws", open=_open, message=_message)
fastapi_app = FastAPI()
fastapi_app.include_router(h3)


@fastapi_app.get("/subscribed")
async def subscribed() -> dict[str, Any]:
    """Wait until this process's subscription to ``room`` is confirmed by Redis."""
    await asyncio.wait_for(pubsub.wait_subscribed("room"), 10)
    return {"ok": True}


app: Any = fastapi_app
if os.environ.get("ASGI_OTEL") == "1":
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app = OpenTelemetryMiddleware(fastapi_app, tracer_provider=provider)
