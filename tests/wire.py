"""A WebSocket client on a raw socket, for what a library client will not do.

Bad frames, a client that never reads, reading the server's close frame.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator

__all__ = ["frame", "handshake", "server_close_code", "server_frames"]

TIMEOUT = 5


def frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A masked client frame (``length`` overrides the declared payload length)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes([first, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def handshake(
    port: int, path: str, receive_buffer: int | None = None
) -> tuple[socket.socket, bytes]:
    """Open a WebSocket on a raw socket; the socket and the bytes after the 101 head.

    ``receive_buffer`` sets ``SO_RCVBUF`` first: a client that does not read then
    leaves little room in the kernel (loopback's autotuned buffers take tens of MiB).
    """
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def server_frames(sock: socket.socket, buffered: bytes) -> Iterator[tuple[int, bytes]]:
    """The server's frames as ``(first byte, payload)``, until the stream ends.

    A reset or (with a socket timeout) a silent server also ends it.
    """
    data = buffered
    while True:
        while len(data) >= 2:
            n = data[1] & 0x7F
            offset = 2
            if n == 126:
                n, offset = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                n, offset = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < offset + n:
                break
            yield data[0], data[offset : offset + n]
            data = data[offset + n :]
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return
        if not chunk:
            return
        data += chunk


def server_close_code(sock: socket.socket, buffered: bytes) -> int | None:
    """Read frames until the server's close frame; its code (None if dropped without one)."""
    for first, payload in server_frames(sock, buffered):
        if first & 0x0F == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None
