"""Server-Sent Events (placeholder until issue 3 lands)."""

from __future__ import annotations

from typing import Any

__all__ = ["EventStream", "EventStreamMessage", "create_event_stream", "event_stream"]


class EventStreamMessage:
    """Placeholder."""


class EventStream:
    """Placeholder."""


def create_event_stream(request: Any, **options: Any) -> EventStream:
    """Placeholder."""
    raise NotImplementedError


def event_stream(func: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
