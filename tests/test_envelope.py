"""The envelope codec and the event-id parser on untrusted input (property tests).

Both read what arrives from outside: envelopes from a backplane any process
(or attacker) can publish to, and ``Last-Event-ID`` headers from any client.
Every input gives a result or the codec's own error, and within a time bound
however it is crafted.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h3_fastapi import _envelope
from h3_fastapi.pubsub import parse_event_id

origins = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
namespaces = st.none() | st.text(max_size=100)
payloads = st.text() | st.binary()


@given(origins, namespaces, payloads)
def test_encode_then_decode_gives_back_what_was_sent(
    origin: str, namespace: str | None, data: str | bytes
) -> None:
    decoded = _envelope.decode(_envelope.encode(origin, namespace, data))
    assert (decoded.origin, decoded.namespace, decoded.data) == (origin, namespace, data)
    assert type(decoded.data) is type(data)  # text stays text, binary stays binary
    assert decoded.extensions is None


@given(origins, st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3))
def test_extensions_travel_and_unknown_ones_are_kept(origin: str, ext: dict[str, str]) -> None:
    decoded = _envelope.decode(_envelope.encode(origin, None, "x", ext))
    assert decoded.extensions == (ext or None)


@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_raise_the_codec_error(raw: bytes) -> None:
    try:
        decoded = _envelope.decode(raw)
    except _envelope.MalformedEnvelope:
        return
    assert isinstance(decoded.origin, str)


@given(st.text(alphabet='[]{}",:0123456789ab \n', max_size=3000))
def test_json_shaped_junk_decodes_or_raises_the_codec_error(text: str) -> None:
    try:
        _envelope.decode(text.encode())
    except _envelope.MalformedEnvelope:
        pass


ADVERSARIAL = [
    b"[" * 1_000_000 + b"\nx",  # nesting deeper than the recursion limit
    b'["a",' + b"[" * 3000 + b"\nx",  # deeper than the recursion limit, within the bound
    b'["' + b"a" * 1_000_000 + b'",null,false]\nx',  # a huge header
    b"\n" * 1_000_000,
    b'["a",null,false,' + b"{" * 300 + b"\nx",
    b'["a",null,false]\n' + b"\xff" * 1_000_000,  # text that is not UTF-8
]


@pytest.mark.parametrize("raw", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_envelopes_are_refused_quickly(raw: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(_envelope.MalformedEnvelope):
        _envelope.decode(raw)
    assert time.perf_counter() - started < 0.5


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_every_stream_id_parses(ms: int, seq: int) -> None:
    assert parse_event_id(f"{ms}-{seq}") == (ms, seq)
    assert parse_event_id(str(ms)) == (ms, 0)


@settings(max_examples=300)
@given(st.text(max_size=100))
def test_any_text_is_an_id_in_range_or_none(text: str) -> None:
    parsed = parse_event_id(text)
    if parsed is not None:
        ms, seq = parsed
        assert 0 <= ms < 2**64 and 0 <= seq < 2**64
        assert text.strip().isascii()


@pytest.mark.parametrize(
    "event_id",
    [
        "\xb2",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
        "1\xb2-3",
        "\u0661\u0662-0",  # Arabic-Indic digits: int() would accept them
        "1" * 4301,  # over Python's int-from-string digit limit
        "1-" + "1" * 4301,
        "18446744073709551616-0",  # 2**64: beyond a Redis stream id
        "0-18446744073709551616",
        "-1",
        "1--2",
        "1-2-3",
        " ",
        "1" * 100_000,
    ],
)
def test_invalid_ids_are_treated_as_absent(event_id: str) -> None:
    started = time.perf_counter()
    assert parse_event_id(event_id) is None
    assert time.perf_counter() - started < 0.1
