"""Pydantic types for real-time messages: typed ``message`` hooks and typed SSE items.

Everything type-related is resolved once, when a handler or an ``@event_stream``
endpoint is made, never per message:

- ``type_adapter(tp)`` caches one ``TypeAdapter`` per type (``Message.model`` and
  the typed hooks share it).
- ``typed_message_hook(hook)`` reads the annotation of the hook's second
  parameter. Unannotated or ``Message``: the hook is returned as is (no cost).
  Anything else: a plain ``(peer, message)`` hook that validates the frame's JSON
  first and raises ``InvalidMessage`` (its ``__cause__`` the ``ValidationError``)
  when it does not fit; the WebSocket core maps that to ``WSError`` + close 1007.
- ``stream_producer(func)`` turns an ``@event_stream`` generator (async or sync)
  into an async generator whose items are validated and JSON-encoded as the
  ``AsyncIterator[tp]``/``Iterator[tp]`` annotation says, as FastAPI's native
  SSE does.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import sys
import typing
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

__all__ = [
    "InvalidMessage",
    "hook_error",
    "hooks_message_type",
    "is_async_callable",
    "message_type_of",
    "server_sent_event_fields",
    "stream_item_type",
    "stream_producer",
    "type_adapter",
    "typed_message_hook",
]

T = TypeVar("T")

# Close code for a frame whose data does not fit the declared type (RFC 6455:
# "data within a message that was not consistent with the type of the message").
INVALID_DATA = 1007

_adapters: dict[Any, TypeAdapter[Any]] = {}


def type_adapter(tp: Any) -> TypeAdapter[Any]:
    """The cached ``TypeAdapter`` for ``tp`` (a fresh one for an unhashable type)."""
    try:
        return _adapters[tp]
    except KeyError:
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
        _adapters[tp] = adapter
        return adapter
    except TypeError:  # unhashable annotation (e.g. Annotated with a dict in it)
        return TypeAdapter(tp)


class InvalidMessage(ValueError):
    """A frame that failed validation for a typed ``message`` hook (close 1007).

    Private: the ``error`` hook sees a ``WSError`` whose ``__cause__`` is the
    ``ValidationError`` itself.
    """


def hook_error(exc: BaseException) -> tuple[BaseException, int, str]:
    """What the core reports for a hook exception: (cause, close code, reason)."""
    if isinstance(exc, InvalidMessage) and exc.__cause__ is not None:
        return exc.__cause__, INVALID_DATA, "Invalid message"
    return exc, 1011, "Internal Error"


# --- typed message hooks ------------------------------------------------------

# The annotation of a function's message parameter, resolved once per function
# (a factory's per-upgrade objects share their class's functions).
_message_types: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_UNTYPED: Any = object()


def _function_of(hook: Any) -> Any:
    func = getattr(hook, "__func__", hook)  # bound method -> function
    if not inspect.isfunction(func) and not inspect.isbuiltin(func) and callable(func):
        call = getattr(type(func), "__call__", None)  # noqa: B004 - an object: its __call__
        if call is not None:
            return call
    return func


def _resolve_message_type(hook: Any, unbound: bool) -> Any:
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return _UNTYPED
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    index = 2 if unbound else 1  # a class's function still has ``self``
    if len(params) <= index:
        return _UNTYPED
    param = params[index]
    annotation = param.annotation
    if annotation is param.empty:
        return _UNTYPED
    if isinstance(annotation, str):
        try:
            hints = typing.get_type_hints(_function_of(hook), include_extras=True)
            annotation = hints[param.name]
        except Exception:
            annotation = _evaluate(annotation, hook)
            if isinstance(annotation, str):
                return _UNTYPED
    if annotation is Any or annotation is object or _is_message(annotation):
        return _UNTYPED
    return annotation


def _evaluate(annotation: str, hook: Any) -> Any:
    module = sys.modules.get(getattr(_function_of(hook), "__module__", "") or "")
    namespace = dict(vars(module)) if module is not None else {}
    try:
        return eval(annotation, namespace)
    except Exception:
        return annotation


def _is_message(annotation: Any) -> bool:
    from .message import Message

    return isinstance(annotation, type) and issubclass(annotation, Message)


def message_type_of(hook: Any, *, unbound: bool = False) -> Any | None:
    """The type a ``message`` hook declares for its message, or ``None`` (a ``Message``).

    ``unbound``: ``hook`` is a function read from a class (its first parameter is ``self``).
    """
    declared = getattr(hook, "__h3_message_type__", None)
    if declared is not None:
        return declared
    key = _function_of(hook)
    try:
        found = _message_types[key]
    except (KeyError, TypeError):
        found = _resolve_message_type(hook, unbound)
        try:
            _message_types[key] = found
        except TypeError:  # not weak-referenceable: resolve again next time
            pass
    return None if found is _UNTYPED else found


def is_async_callable(hook: Any) -> bool:
    """``async def`` (a function, bound method, partial of one, or an object's ``__call__``)."""
    while isinstance(hook, functools.partial):
        hook = hook.func
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object's async __call__
    )


_is_async = is_async_callable


def typed_message_hook(hook: Any) -> Any:
    """``hook`` itself when it takes a ``Message``; else a validating ``(peer, message)`` hook.

    The wrapper keeps the hook's sync/async kind, so the core runs it the same way.
    """
    if hook is None or getattr(hook, "__h3_message_type__", None) is not None:
        return hook
    tp = message_type_of(hook)
    if tp is None:
        return hook
    validate = type_adapter(tp).validate_json

    def parse(raw: str | bytes) -> Any:
        try:
            return validate(raw)
        except ValidationError as exc:
            raise InvalidMessage(f"message does not fit {_type_name(tp)}: {exc}") from exc

    wrapper: Any
    if _is_async(hook):

        async def wrapper(peer: Any, message: Any) -> Any:
            return await hook(peer, parse(message.raw_data))

    else:

        def wrapper(peer: Any, message: Any) -> Any:
            return hook(peer, parse(message.raw_data))

    functools.update_wrapper(wrapper, hook)
    del wrapper.__wrapped__  # introspection must see (peer, message), not the typed hook
    wrapper.__h3_message_type__ = tp
    return wrapper


def hooks_message_type(source: Any, override: Any = None) -> Any | None:
    """The message type of a handler's ``message`` hook, for schema docs.

    ``source`` is what ``define_websocket_handler`` got (dict, object, class or
    factory). Returns the declared type, ``Message`` for an untyped hook, or
    ``None`` when there is no ``message`` hook that can be known before an upgrade.
    """
    from .message import Message

    hook = override
    unbound = False
    if hook is None and source is not None:
        if isinstance(source, Mapping):
            hook = source.get("message")
        elif inspect.isclass(source):
            hook = source.__dict__.get("message") or getattr(source, "message", None)
            unbound = inspect.isfunction(hook)
        elif hasattr(source, "message"):
            hook = source.message
        elif callable(source):  # a factory: its return annotation may name a hooks class
            try:
                returned = typing.get_type_hints(source).get("return")
            except Exception:
                returned = None
            if inspect.isclass(returned):
                hook = getattr(returned, "message", None)
                unbound = inspect.isfunction(hook)
    if hook is None or not callable(hook):
        return None
    return message_type_of(hook, unbound=unbound) or Message


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


# --- typed SSE items ----------------------------------------------------------

_STREAM_ORIGINS = {
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
}


def stream_item_type(func: Callable[..., Any]) -> Any | None:
    """``tp`` of a generator annotated ``AsyncIterator[tp]``/``Iterator[tp]`` (or ``None``)."""
    try:
        returned = typing.get_type_hints(func, include_extras=True).get("return")
    except Exception:
        returned = None
    if returned is None or get_origin(returned) not in _STREAM_ORIGINS:
        return None
    args = get_args(returned)
    return args[0] if args else None


def _is_event_shape(tp: Any) -> bool:
    """Types pushed as they are (SSE messages, text, raw data): no validation."""
    if tp is Any or tp is object or tp is str or tp is bytes:
        return True
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _is_event_shape(get_args(tp)[0])
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return any(_is_event_shape(arg) for arg in get_args(tp))
    if origin is not None:
        tp = origin
    if not isinstance(tp, type):
        return False
    if issubclass(tp, (Mapping, str, bytes)):
        return True
    return _is_event_object_type(tp)


def _is_event_object_type(tp: type) -> bool:
    from ._sse import EventStreamMessage

    if issubclass(tp, EventStreamMessage):
        return True
    return tp.__name__ == "ServerSentEvent" and tp.__module__.split(".")[0] in (
        "fastapi",
        "sse_starlette",
    )


def _passes_through(item: Any) -> bool:
    return _is_event_object_type(type(item))


def stream_producer(
    func: Callable[..., Any],
) -> tuple[Callable[..., AsyncIterator[Any]], Any | None]:
    """The async generator function ``@event_stream`` runs, and the item type it validates.

    Sync generators run in the threadpool. With a declared item type (other
    than text or SSE message types) each item is validated and pushed as its
    JSON (aliases applied); SSE message objects pass through unchanged.
    """
    is_async = inspect.isasyncgenfunction(func)
    if not is_async and not inspect.isgeneratorfunction(func):
        raise TypeError("@event_stream needs a generator function (async def ... yield, or def)")
    item_type = stream_item_type(func)
    encode: Callable[[Any], Any] | None = None
    if item_type is not None and not _is_event_shape(item_type):
        encode = _item_encoder(item_type)
    else:
        item_type = None  # text or SSE message objects: no JSON schema to promise
    if is_async and encode is None:
        return func, None

    @functools.wraps(func)
    async def produce(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        items = func(*args, **kwargs)
        source = items if is_async else _in_threadpool(items)
        try:
            if encode is None:
                async for item in source:
                    yield item
            else:
                async for item in source:
                    yield item if _passes_through(item) else encode(item)
        finally:
            if is_async:
                await items.aclose()
            else:
                items.close()

    return produce, item_type


def _item_encoder(tp: Any) -> Callable[[Any], str]:
    adapter = type_adapter(tp)
    validate = adapter.validate_python
    dump = adapter.dump_json

    def encode(item: Any) -> str:
        return dump(validate(item), by_alias=True).decode("utf-8")

    return encode


async def _in_threadpool(items: Any) -> AsyncIterator[Any]:
    from starlette.concurrency import iterate_in_threadpool

    async for item in iterate_in_threadpool(items):
        yield item


def server_sent_event_fields(item: Any) -> tuple[Any, ...] | None:
    """``(data, id, event, retry, comment)`` of a ``fastapi.sse.ServerSentEvent``.

    ``data`` is JSON (strings quoted), ``raw_data`` is sent as is: FastAPI's
    meaning of the two fields. ``None`` when ``item`` is not one.
    """
    module = sys.modules.get("fastapi.sse")
    event_type = getattr(module, "ServerSentEvent", None) if module is not None else None
    if event_type is None or not isinstance(item, event_type):
        return None
    from ._serialize import to_json_text

    data: str | None
    if item.raw_data is not None:
        data = item.raw_data
    elif item.data is not None:
        data = to_json_text(item.data)
    else:
        data = None
    return data, item.id, item.event, item.retry, item.comment
