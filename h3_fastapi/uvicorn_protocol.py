"""uvicorn's WebSocket protocol with a short path for the frames most apps exchange.

uvicorn's ``websockets-sansio`` protocol (the fastest measured, see
docs/servers.md) hands every byte to the websockets library's generic parser
and frames every ``websocket.send`` through it. Profiles of echo and broadcast
put most of the server's CPU there, not in the app. ``WebSocketProtocol``
keeps that protocol for everything (handshake, control frames, fragmented or
compressed messages, errors, close, keepalive) and takes the common case
itself:

- **receive**: a whole, final, masked text or binary frame without RSV bits is
  unmasked (websockets' C ``apply_mask``) and queued as the ASGI
  ``websocket.receive`` uvicorn would have queued. Any other frame is handed
  to websockets whole, so its parser always starts at a frame boundary and
  decides what is an error exactly as before.
- **send**: a ``websocket.send`` on an open connection without extensions is
  framed here and written (a server frame is a header and the payload).
- **the ``h3.websocket.frames`` ASGI extension**: ``write(frame) -> bool``
  writes an already-encoded frame now, without an ASGI message or a coroutine.
  h3-fastapi encodes a publish once and writes the same bytes to every
  subscriber; ``False`` (flow control, closing, an extension negotiated)
  means "use ``send``", which waits as usual.

Run it with ``serve(app)`` (its default for uvicorn) or
``uvicorn.run("module:app", ws="h3_fastapi.uvicorn_protocol:WebSocketProtocol")``.
Any ASGI app can use it; only h3-fastapi uses the extension.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets installed without its C extension
    from websockets.utils import apply_mask

from ._frames import FRAMES_EXTENSION, encode_frame

__all__ = ["FRAMES_EXTENSION", "WebSocketProtocol"]

_OPEN = State.OPEN
# What ``data_received`` does with the bytes: the request head (until its blank
# line), frames (the short path), or everything to uvicorn's protocol.
_HEAD, _FRAMES, _UVICORN = 0, 1, 2


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` WebSocket protocol with a short path for plain frames.

    Pass it to uvicorn as ``ws`` (``uvicorn.run(..., ws=WebSocketProtocol)`` or
    ``--ws h3_fastapi.uvicorn_protocol:WebSocketProtocol``); ``serve()`` does.
    Whole text and binary frames are unmasked and framed here; everything
    else (handshake, control and fragmented frames, errors, close) is
    uvicorn's and websockets' code, unchanged. Connections that negotiated
    permessage-deflate take uvicorn's path for every frame they send.

    Offers the ``h3.websocket.frames`` ASGI extension: ``write(frame)`` and
    ``batch(frame)`` (written at the end of the loop turn, one write per
    connection) take an encoded frame and return ``False`` when the ASGI
    ``send`` must be used instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode = _HEAD
        self._head = b""  # the last bytes of the request head read so far
        self._buffer = bytearray()  # an incomplete frame
        self._need = 0  # bytes ``_buffer`` needs before it holds a whole frame
        self._in_message = False  # a fragmented message is under way (websockets has it)
        self._max_size = self.config.ws_max_size
        self._plain = True  # no extension negotiated: frames are written as they are
        # Frames of this loop turn not written yet (``batch_frame``); ``None`` when
        # the connection is not waiting for ``_write_batches``.
        self._batch: list[bytes] | None = None
        self._batch_size = 0

    # --- receive -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode == _FRAMES:
            self._frames_received(data)
        elif mode == _HEAD:
            self._head_received(data)
        else:
            self._write_batch()
            super().data_received(data)

    def _head_received(self, data: bytes) -> None:
        """Give websockets the request head and nothing after it; frames come here."""
        seen = self._head
        end = (seen + data).find(b"\r\n\r\n")
        if end < 0:
            self._head = (seen + data)[-3:]
            super().data_received(data)
            return
        cut = end + 4 - len(seen)
        self._head = b""
        super().data_received(data[:cut])
        rest = data[cut:]
        if self.handshake_initiated and not self.close_sent and self.conn.parser_exc is None:
            self._mode = _FRAMES
            self._plain = not self.conn.extensions
            self.scope["extensions"][FRAMES_EXTENSION] = {
                "write": self.write_frame,
                "batch": self.batch_frame,
            }
            if rest:
                self._frames_received(rest)
        else:
            self._mode = _UVICORN
            if rest:
                super().data_received(rest)

    def _frames_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return
            data = bytes(buffer)
            buffer.clear()
        size = len(data)
        pos = 0
        need = 2
        while size - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length >= 126:  # the length follows in 2 (126) or 8 (127) bytes
                start += 2 if length == 126 else 8
                if size < start:
                    need = start - pos
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
            if length > self._max_size:
                # Too big (or a bad length): websockets says so, with its close code.
                self._hand_over(data[pos:])
                return
            if second & 0x80:
                start += 4
            end = start + length
            if end > size:
                need = end - pos
                break
            if (first == 0x81 or first == 0x82) and second & 0x80 and not self._in_message:
                if not self.close_sent:  # after our close, data is dropped (as uvicorn does)
                    payload = apply_mask(data[start:end], data[start - 4 : start])
                    if first == 0x81:
                        try:
                            event: Any = {"type": "websocket.receive", "text": payload.decode()}
                        except UnicodeDecodeError:  # websockets' path closes with 1007
                            self._hand_over(data[pos:])
                            return
                    else:
                        event = {"type": "websocket.receive", "bytes": payload}
                    queue = self.queue
                    queue.put_nowait(event)
                    if not self.read_paused and (
                        length > PAUSE_SIZE or queue.qsize() >= PAUSE_MESSAGES
                    ):
                        self.read_paused = True
                        self.transport.pause_reading()
            else:
                opcode = first & 0x0F
                if opcode < 3:  # continuation, text or binary: a message's fragment
                    self._in_message = not first & 0x80
                self._write_batch()  # a pong or a close reply goes after them
                super().data_received(data[pos:end])
                if self.conn.state is not _OPEN or self.conn.parser_exc is not None:
                    self._mode = _UVICORN
                    if end < size:
                        super().data_received(data[end:])
                    return
            pos = end
            need = 2
        if pos < size:
            buffer += data[pos:] if pos else data
            self._need = need

    def _hand_over(self, data: bytes) -> None:
        """From here on every byte goes to uvicorn's protocol."""
        self._mode = _UVICORN
        self._write_batch()
        super().data_received(data)

    # --- send --------------------------------------------------------------------

    def _takes_frames(self) -> bool:
        """Open, accepted, not closing, no extension, and the transport not paused."""
        return (
            self._plain
            and self.handshake_complete
            and self.writable.is_set()
            and not self.close_sent
            and self.initial_response is None
            and not self.disconnected
            and self.conn.state is _OPEN
        )

    def write_frame(self, frame: bytes) -> bool:
        """Write an encoded frame now if the connection can take it; else ``False``.

        Frames batched earlier (``batch_frame``) go out first, in the same write.
        """
        if self._takes_frames():
            batch = self._batch
            if batch:
                batch.append(frame)
                self._write_batch()
            else:
                self.transport.write(frame)
            return True
        return False

    def batch_frame(self, frame: bytes) -> bool:
        """Like ``write_frame``, but written at the end of this loop turn.

        A publish reaches every subscriber in the same turn; when several do,
        (a publisher's burst), each subscriber gets them in one write instead
        of one system call per frame. Over ``BATCH_LIMIT`` bytes the batch is
        written at once, so the transport's flow control still sees the bytes.
        """
        if self._takes_frames():
            batch = self._batch
            if batch is None:
                self._batch = [frame]
                self._batch_size = len(frame)
                loop = self.loop
                pending = _BATCHED.get(loop)
                if pending is None:
                    pending = _BATCHED[loop] = []
                    loop.call_soon(_write_batches, loop)
                pending.append(self)
            else:
                batch.append(frame)
                self._batch_size += len(frame)
                if self._batch_size > BATCH_LIMIT:
                    self._write_batch()
            return True
        return False

    def _write_batch(self) -> None:
        """Write the batched frames (one write), if any; the connection may be gone."""
        batch = self._batch
        if batch:
            self._batch = []  # still registered for this turn's ``_write_batches``
            self._batch_size = 0
            if not self.disconnected:
                self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send":
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            if data is not None and self.write_frame(encode_frame(data)):
                return
        self._write_batch()
        await super().send(message)

    # Everything else uvicorn writes goes after the frames batched before it.

    def shutdown(self) -> None:
        self._write_batch()
        super().shutdown()

    def send_keepalive_ping(self) -> None:
        self._write_batch()
        super().send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        self._write_batch()
        super().keepalive_timeout()


# Reading pauses once this many messages wait for the app, or at once after a
# message over PAUSE_SIZE bytes (at most ~1 MiB queued per connection); uvicorn
# pauses after every message, and a pause and resume cost system calls per message.
PAUSE_MESSAGES = 16
PAUSE_SIZE = 65536

# Bytes a connection batches in one loop turn before they are written at once.
BATCH_LIMIT = 65536

# Per event loop: the connections with a batch to write at the end of this turn.
# Weak keys: a loop closed before its last turn ran does not stay here.
_BATCHED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[WebSocketProtocol]] = (
    weakref.WeakKeyDictionary()
)


def _write_batches(loop: asyncio.AbstractEventLoop) -> None:
    for protocol in _BATCHED.pop(loop, ()):
        protocol._write_batch()
        protocol._batch = None
