"""Turn what an h3-style handler returns into a Starlette response."""

from __future__ import annotations

from typing import Any

from starlette.responses import HTMLResponse, PlainTextResponse, Response

from ._rejection import exception_response as exception_to_response
from ._serialize import to_json_text

__all__ = ["exception_to_response", "to_response"]


def to_response(value: Any) -> Response:
    """Like h3: a ``Response`` as is, text as a page or plain text, bytes as a body, else JSON."""
    if isinstance(value, Response):
        return value
    if value is None:
        return Response(status_code=204)
    if isinstance(value, str):
        if value.lstrip()[:1] == "<":
            return HTMLResponse(value)
        return PlainTextResponse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(bytes(value), media_type="application/octet-stream")
    return Response(to_json_text(value), media_type="application/json")
