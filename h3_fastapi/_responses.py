"""Turn what an h3-style handler returns into a Starlette response."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

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


def exception_to_response(exc: BaseException) -> Response | None:
    """The response an ``HTTPException`` (or a raised ``Response``) stands for, else ``None``."""
    if isinstance(exc, HTTPException):
        headers = dict(exc.headers or {})
        detail: Any = exc.detail
        if isinstance(detail, str):
            return PlainTextResponse(detail, status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)
    response = getattr(exc, "response", None)
    if isinstance(response, Response):
        return response
    return None
