"""Streaming reverse proxy (placeholder until issue 4 lands)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "create_websocket_proxy",
    "fetch_with_event",
    "get_proxy_request_headers",
    "proxy",
    "proxy_request",
]


async def proxy(request: Any, target: str, **options: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


async def proxy_request(request: Any, target: str, **options: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def get_proxy_request_headers(request: Any, **options: Any) -> dict[str, str]:
    """Placeholder."""
    raise NotImplementedError


async def fetch_with_event(request: Any, url: str, **init: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def create_websocket_proxy(target: str, **options: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
