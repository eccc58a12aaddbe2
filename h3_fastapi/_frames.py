"""WebSocket frames as a server writes them: one function, shared by the
uvicorn protocol (``uvicorn_protocol.py``) and ``Outgoing``, which encodes a
publish into a frame once for every subscriber.

A server's frames are never masked (RFC 6455 section 5.1) and, without an
extension, carry no RSV bits, so a whole frame is a 2-, 4- or 10-byte header
and the payload.
"""

from __future__ import annotations

import struct

__all__ = ["FRAMES_EXTENSION", "encode_frame"]

# The ASGI scope extension of a server that writes encoded frames at once:
# ``scope["extensions"][FRAMES_EXTENSION]["write"](frame) -> bool``.
FRAMES_EXTENSION = "h3.websocket.frames"

_SHORT = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack


def encode_frame(data: str | bytes) -> bytes:
    """One final (FIN) frame: text for ``str`` (UTF-8), binary for ``bytes``."""
    if isinstance(data, str):
        payload = data.encode()
        first = 0x81
    else:
        payload = bytes(data)
        first = 0x82
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _SHORT(first, 126, size) + payload
    return _LONG(first, 127, size) + payload
