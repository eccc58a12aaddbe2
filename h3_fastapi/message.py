"""A message received from a WebSocket peer (crossws ``Message``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._typing import type_adapter

if TYPE_CHECKING:
    from .peer import Peer

T = TypeVar("T")

__all__ = ["Message"]


class Message:
    """One text or binary frame, with lazy views of its data.

    ``text()`` never raises (invalid UTF-8 becomes U+FFFD); ``json()`` raises
    ``ValueError`` for invalid JSON so a handler can answer instead of crashing.
    """

    __slots__ = ("_id", "_text", "event", "peer", "raw_data")

    def __init__(
        self,
        raw_data: str | bytes,
        peer: Peer | None = None,
        event: Mapping[str, Any] | None = None,
    ) -> None:
        self.raw_data: str | bytes = raw_data
        self.peer = peer
        # The ASGI ``websocket.receive`` event the frame came in (crossws ``message.event``).
        self.event = event
        self._id: str | None = None
        self._text: str | None = None

    @property
    def id(self) -> str:
        """A random uuid4 for this message, made on first use."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @property
    def data(self) -> str | bytes:
        """The raw value: ``str`` for a text frame, ``bytes`` for a binary frame."""
        return self.raw_data

    @property
    def is_binary(self) -> bool:
        """``True`` when the frame was binary."""
        return isinstance(self.raw_data, bytes)

    def text(self) -> str:
        """The data as text; binary data is decoded as UTF-8 with replacement."""
        raw = self.raw_data
        if raw.__class__ is str:  # a text frame (the common case): nothing to decode
            return raw
        if self._text is None:
            self._text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        return self._text

    # Used by the serialiser to send a Message as its text.
    _h3_text = text

    def json(self) -> Any:
        """The data parsed as JSON; raises ``ValueError`` when it is not JSON.

        Nesting too deep for the parser (``[[[[...``, a cheap attack) is a
        ``ValueError`` too, not a ``RecursionError``.
        """
        try:
            return json.loads(self.raw_data)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"WebSocket message is not valid JSON: {exc}") from exc

    @overload
    def model(self, tp: type[T]) -> T: ...
    @overload
    def model(self, tp: Any) -> Any: ...
    def model(self, tp: Any) -> Any:
        """The data's JSON validated into ``tp``: a Pydantic model or any type Pydantic takes.

        ``message.model(Chat)``, ``message.model(list[int])``, or an ``Annotated``
        union with a discriminator. Raises ``pydantic.ValidationError`` (a
        ``ValueError``) when the data is not JSON or does not fit. One
        ``TypeAdapter`` per type is made on first use and reused.
        """
        return type_adapter(tp).validate_json(self.raw_data)

    def bytes(self) -> bytes:
        """The data as bytes; text is encoded as UTF-8."""
        raw = self.raw_data
        return raw if isinstance(raw, bytes) else raw.encode("utf-8")

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        kind = "binary" if self.is_binary else "text"
        return f"<Message {kind} {len(self.raw_data)}>"
