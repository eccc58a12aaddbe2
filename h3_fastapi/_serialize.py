"""One place that turns application values into wire data.

``peer.send``, ``peer.publish``, ``handler.publish`` and ``EventStream.push`` all
go through here, so a dict is JSON-encoded the same way everywhere and a
broadcast is encoded once, not once per receiver.

JSON goes through pydantic-core's encoder (``pydantic_core.to_json``): Pydantic
models by alias with their own serialisers (datetimes, enums, custom
``@field_serializer``), dataclasses, sets and dicts alike, several times faster
than ``json.dumps``. What it refuses (bytes that are not UTF-8, say) falls back
to ``json.dumps``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pydantic_core import PydanticSerializationError
from pydantic_core import to_json as _core_to_json

__all__ = ["to_json_text", "to_text", "to_wire"]


def _unknown(value: Any) -> Any:
    """pydantic-core's fallback for a type it does not know: a ``model_dump`` or its text."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True)
    return str(value)


def _default(value: Any) -> Any:
    """``json.dumps`` fallback for pydantic models, dataclasses, sets and bytes."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def to_json_text(value: Any) -> str:
    """JSON text for ``value`` (compact, UTF-8 kept as is, model fields by alias)."""
    try:
        return _core_to_json(value, by_alias=True, fallback=_unknown).decode("utf-8")
    except (PydanticSerializationError, ValueError, RecursionError):
        pass
    return json.dumps(value, default=_default, ensure_ascii=False, separators=(",", ":"))


def to_wire(data: Any) -> str | bytes:
    """``str`` for a text frame, ``bytes`` for a binary frame.

    Follows crossws: ``None`` is ``""``, numbers and bools are their text,
    containers and models are JSON, a ``Message`` is its text.
    """
    if isinstance(data, str):
        return data
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if data is None:
        return ""
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, (int, float)):
        return str(data)
    # Looked up on the type: on a Pydantic model an unknown instance attribute
    # goes through BaseModel.__getattr__ and raises (~3 µs per send).
    kind = type(data)
    serializer = getattr(kind, "__pydantic_serializer__", None)
    if serializer is not None:  # a Pydantic model: its own serializer, no type inference
        try:
            return serializer.to_json(data, by_alias=True).decode("utf-8")  # type: ignore[no-any-return]
        except (PydanticSerializationError, ValueError, RecursionError):
            pass
    text = getattr(kind, "_h3_text", None)  # Message
    if text is not None:
        return str(text(data))
    return to_json_text(data)


def to_text(data: Any) -> str:
    """Text for protocols that only carry text (SSE ``data``): bytes become UTF-8."""
    wire = to_wire(data)
    if isinstance(wire, bytes):
        return wire.decode("utf-8", "replace")
    return wire
