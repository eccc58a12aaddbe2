"""h3-fastapi: the h3 API for FastAPI and Starlette.

WebSockets with crossws hooks, Server-Sent Events, a streaming proxy on httpx,
and pub/sub that scales out through Redis, Redis Cluster, PostgreSQL or NATS.
"""

from . import _openapi
from ._event_stream import EventStream, EventStreamMessage, create_event_stream, event_stream
from ._guard import TargetNotAllowed
from ._headers import get_proxy_request_headers, join_proxy_path
from ._positions import Recovery
from ._presence import Presence, presence
from ._proxy import ProxyOptions, fetch_with_event, proxy, proxy_request
from ._transports import close_proxy_clients
from ._websocket_proxy import create_websocket_proxy
from .asyncapi import add_asyncapi, get_asyncapi
from .health import backplane_status, health_router
from .limits import RateLimit
from .message import Message
from .metrics import disable_metrics, enable_metrics, metrics_app
from .nats import NatsPubSub
from .peer import CloseDetails, Peer
from .postgres import PostgresPubSub
from .pubsub import Backplane, MemoryPubSub, PubSub, publish
from .redis import RedisPubSub
from .redis_cluster import RedisClusterPubSub
from .resumable import cancel_resumable, resumable_stream, start_resumable
from .routing import H3, H3Router, Server, serve
from .tracing import disable_tracing, enable_tracing
from .websocket import (
    WebSocketHandler,
    WSError,
    define_websocket,
    define_websocket_handler,
)

# Event-stream routes documented as text/event-stream in /openapi.json (_openapi.py).
_openapi.install()

__version__ = "0.1.0"

__all__ = [
    "H3",
    "Backplane",
    "CloseDetails",
    "EventStream",
    "EventStreamMessage",
    "H3Router",
    "MemoryPubSub",
    "Message",
    "NatsPubSub",
    "Peer",
    "PostgresPubSub",
    "Presence",
    "ProxyOptions",
    "PubSub",
    "RateLimit",
    "Recovery",
    "RedisClusterPubSub",
    "RedisPubSub",
    "Server",
    "TargetNotAllowed",
    "WSError",
    "WebSocketHandler",
    "add_asyncapi",
    "backplane_status",
    "cancel_resumable",
    "close_proxy_clients",
    "create_event_stream",
    "create_websocket_proxy",
    "define_websocket",
    "define_websocket_handler",
    "disable_metrics",
    "disable_tracing",
    "enable_metrics",
    "enable_tracing",
    "event_stream",
    "fetch_with_event",
    "get_asyncapi",
    "get_proxy_request_headers",
    "health_router",
    "join_proxy_path",
    "metrics_app",
    "presence",
    "proxy",
    "proxy_request",
    "publish",
    "resumable_stream",
    "serve",
    "start_resumable",
]
