"""The Server-Sent Events wire format: what ``EventStream.push`` turns values into."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._serialize import to_json_text, to_text
from ._typing import server_sent_event_fields

__all__ = ["EventStreamMessage", "encode", "format_comment", "format_event"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MESSAGE_FIELDS = frozenset({"data", "id", "event", "retry"})


@dataclass(slots=True)
class EventStreamMessage:
    """One event: ``data`` plus the optional ``id``, ``event`` name and ``retry`` (ms).

    ``data`` that is not a ``str`` is sent as JSON (bytes as UTF-8 text).
    ``id`` is written as ``str(id)`` unless it is ``None`` or ``""``; ``retry``
    only when it is a real ``int``.
    """

    data: Any = ""
    id: str | int | None = None
    event: str | None = None
    retry: int | None = None


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        return value.replace("\r", "").replace("\n", "")
    return value


def format_event(
    data: str | None,
    id: Any = None,
    event: Any = None,
    retry: Any = None,
    comment: str | None = None,
) -> str:
    """The text of one event, byte exact (fields ``id``, ``event``, ``retry``, ``data``).

    CR and LF are removed from ``id`` and ``event``; ``retry`` is written only
    for an ``int`` that is not a ``bool``; ``data`` is split on ``\\r\\n``,
    ``\\r`` or ``\\n`` into ``data:`` lines. ``data=None`` writes no ``data``
    line (used for sse-starlette events without data). ``comment`` lines come
    first. A blank line ends the event.
    """
    parts: list[str] = []
    if comment is not None:
        parts.extend(f": {line}\n" for line in _LINE_BREAK.split(comment))
    if id is not None and id != "":
        parts.append(f"id: {_single_line(str(id))}\n")
    if event is not None and event != "":
        parts.append(f"event: {_single_line(str(event))}\n")
    if isinstance(retry, int) and not isinstance(retry, bool):
        parts.append(f"retry: {int(retry)}\n")
    if data is not None:
        if "\r" in data or "\n" in data:
            parts.extend(f"data: {piece}\n" for piece in _LINE_BREAK.split(data))
        else:
            parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts)


def format_comment(text: str) -> str:
    """``: <line>`` for each line of ``text``, then a blank line."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)) + "\n"


def _data_text(value: Any) -> str:
    """``data`` as text: a ``str`` as is, bytes as UTF-8, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return to_text(value)
    return to_json_text(value)


def _is_message_dict(value: Mapping[Any, Any]) -> bool:
    return "data" in value and all(key in _MESSAGE_FIELDS for key in value)


def _sse_starlette_event_type() -> type | None:
    """sse-starlette's ``ServerSentEvent`` when that package is loaded (never imported here)."""
    module = sys.modules.get("sse_starlette.event")
    found = getattr(module, "ServerSentEvent", None) if module is not None else None
    return found if isinstance(found, type) else None


def _format_one(item: Any) -> str:
    if isinstance(item, str):
        return format_event(item)
    if isinstance(item, EventStreamMessage):
        return format_event(_data_text(item.data), item.id, item.event, item.retry)
    if isinstance(item, Mapping) and _is_message_dict(item):
        return format_event(
            _data_text(item["data"]), item.get("id"), item.get("event"), item.get("retry")
        )
    fastapi_event = server_sent_event_fields(item)  # fastapi.sse.ServerSentEvent
    if fastapi_event is not None:
        return format_event(*fastapi_event)
    sse_type = _sse_starlette_event_type()
    if sse_type is not None and isinstance(item, sse_type):
        data = getattr(item, "data", None)
        comment = getattr(item, "comment", None)
        return format_event(
            None if data is None else _data_text(data),
            getattr(item, "id", None),
            getattr(item, "event", None),
            getattr(item, "retry", None),
            None if comment is None else str(comment),
        )
    return format_event(_data_text(item))


def encode(message: Any) -> bytes:
    """Bytes for what ``push`` accepts: one value, or a list/tuple of them."""
    cls = message.__class__
    if cls is str and "\n" not in message and "\r" not in message:
        # The common case, ``format_event`` inlined: one ``data:`` line.
        return f"data: {message}\n\n".encode("utf-8", "replace")
    if cls is bytes and b"\n" not in message and b"\r" not in message:
        try:
            message.decode("utf-8")  # well-formed UTF-8 is sent as it is
        except UnicodeDecodeError:
            pass
        else:
            return b"data: %b\n\n" % message
    if isinstance(message, (list, tuple)):
        text = "".join(_format_one(item) for item in message)
    else:
        text = _format_one(message)
    # A lone surrogate cannot be UTF-8; it becomes "?" rather than an error.
    return text.encode("utf-8", "replace")
