"""Rejecting a WebSocket handshake, as FastAPI would answer an HTTP request.

- ``deny`` sends the response (ASGI websocket denial response; a server
  without the extension can only refuse, and the client sees 403).
- ``rejection_for`` maps an exception raised by ``upgrade`` or one of its
  dependencies: a ``response`` attribute holding a ``Response`` (crossws
  "throw a Response") is sent as is; otherwise the app's own exception
  handlers are used where it has any, else FastAPI's defaults
  (``HTTPException``: its status, headers and ``{"detail": ...}``; a
  validation error: 422 with FastAPI's body).
- uvicorn's ``websockets-sansio`` and ``wsproto`` implementations log
  ``ASGI callable returned without completing handshake.`` after every denial
  response (they never mark the handshake complete on that path). ``deny``
  marks the current task's context, and a filter on ``uvicorn.error`` drops
  exactly that record only there; a broken app still gets it logged.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException, WebSocketException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketState

__all__ = ["HANDLED", "deny", "exception_response", "install_quiet_denials", "rejection_for"]

# Returned by ``rejection_for`` when the app's handler already closed the socket itself.
HANDLED = Response(status_code=403)

_denied: contextvars.ContextVar[bool] = contextvars.ContextVar("h3_fastapi_denied", default=False)
_UNFINISHED_HANDSHAKE = "ASGI callable returned without completing handshake."
_STARLETTE_DEFAULTS = (ExceptionMiddleware.http_exception, ExceptionMiddleware.websocket_exception)


async def deny(scope: Mapping[str, Any], send: Send, response: Response) -> None:
    """Reject a handshake with an HTTP response (ASGI websocket denial response).

    Servers without the extension can only refuse: the client then sees 403.
    """
    if response is HANDLED:
        return
    _denied.set(True)
    if "websocket.http.response" in scope.get("extensions", {}):
        body = getattr(response, "body", b"") or b""
        headers = [(k, v) for k, v in response.raw_headers if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def exception_response(exc: BaseException) -> Response | None:
    """FastAPI's default answer to ``exc`` (or its ``response`` attribute), else ``None``."""
    response = getattr(exc, "response", None)
    if isinstance(response, Response):
        return response
    if isinstance(exc, HTTPException):
        status, headers = exc.status_code, exc.headers
        if status < 200 or status in (204, 205, 304):  # no body allowed
            return Response(status_code=status, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=status, headers=headers)
    if isinstance(exc, WebSocketException):
        # A refused handshake is a 403; the reason is the detail.
        return JSONResponse({"detail": exc.reason or "Forbidden"}, status_code=403)
    if isinstance(exc, RequestValidationError):
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)
    return None


def _app_handler(scope: Mapping[str, Any], exc: Exception) -> Any:
    try:
        exception_handlers, status_handlers = scope["starlette.exception_handlers"]
    except (KeyError, TypeError, ValueError):
        return None
    handler = None
    if isinstance(exc, HTTPException):
        handler = status_handlers.get(exc.status_code)
    if handler is None:
        for cls in type(exc).__mro__:
            if cls in exception_handlers:
                handler = exception_handlers[cls]
                break
    if getattr(handler, "__func__", None) in _STARLETTE_DEFAULTS:
        return None  # Starlette's plain-text and close-only defaults: FastAPI's answer instead
    return handler


async def rejection_for(
    exc: Exception, request: HTTPConnection, websocket: WebSocket | None
) -> Response | None:
    """The response that rejects the handshake for ``exc``; ``None``: not a known rejection.

    The app's handler gets the upgrade ``Request`` (the ``WebSocket`` for a
    ``WebSocketException``); one that closes the socket itself returns ``HANDLED``.
    """
    response = getattr(exc, "response", None)
    if isinstance(response, Response):
        return response
    handler = _app_handler(request.scope, exc)
    if handler is None:
        return exception_response(exc)
    conn: Any = websocket if isinstance(exc, WebSocketException) and websocket else request
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    ):
        result = await handler(conn, exc)
    else:
        result = await run_in_threadpool(handler, conn, exc)
    if isinstance(result, Response):
        return result
    if isinstance(conn, WebSocket) and conn.application_state is not WebSocketState.CONNECTING:
        _denied.set(True)
        return HANDLED
    return exception_response(exc) or JSONResponse({"detail": "Forbidden"}, status_code=403)


class _QuietDenials(logging.Filter):
    """Drop uvicorn's unfinished-handshake error in a task that sent our denial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_denied.get() and record.msg == _UNFINISHED_HANDSHAKE)


_filter = _QuietDenials()


def install_quiet_denials() -> None:
    """Add the filter to the ``uvicorn.error`` logger (once; idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _filter not in logger.filters:
        logger.addFilter(_filter)
