"""BackplanePubSub over the docs' in-process ``Bus`` backplane: the seam, without a server.

Several ``BackplanePubSub`` on one bus stand for several processes. What the
composition does for every transport is checked here: no echo, exclude and
namespaces, per-publisher order, history ids and gapless catch-up, malformed
data skipped with one warning, and a publisher that survives a backplane that
raises.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Sequence
from types import ModuleType

import pytest

from h3_fastapi import Backplane, PubSub
from h3_fastapi.backplane import BackplanePubSub
from h3_fastapi.pubsub import Outgoing
from tests.conftest import ROOT

TIMEOUT = 5


def _example() -> ModuleType:
    path = ROOT / "docs" / "examples" / "scaling_backplane.py"
    spec = importlib.util.spec_from_file_location("docs_scaling_backplane_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _example()


class Recorder:
    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.got: list[Outgoing] = []

    def deliver(self, outgoing: Outgoing) -> None:
        self.got.append(outgoing)

    @property
    def data(self) -> list[str | bytes]:
        return [o.data for o in self.got]


def processes(count: int, history: int = 0) -> list[BackplanePubSub]:
    bus = example.Bus()
    return [BackplanePubSub(example.BusBackplane(bus, history), name="bus") for _ in range(count)]


def test_the_protocols_are_met() -> None:
    (a,) = processes(1)
    assert isinstance(a, PubSub) and isinstance(a.backplane, Backplane)


async def test_once_everywhere_no_echo_exclude_and_namespaces() -> None:
    a, b = processes(2)
    sender, near, far = Recorder("/chat"), Recorder("/chat"), Recorder("/chat")
    other_ns, stream = Recorder("/other"), Recorder(None)
    a.subscribe("t", sender)
    a.subscribe("t", near)
    for sub in (far, other_ns, stream):
        b.subscribe("t", sub)
    await a.publish("t", "hi", namespace="/chat", exclude=sender)
    await a.publish("t", b"\x00bin")
    assert sender.data == [b"\x00bin"]
    assert near.data == far.data == ["hi", b"\x00bin"]
    assert other_ns.data == [b"\x00bin"] and stream.data == ["hi", b"\x00bin"]
    await a.close()
    await b.close()


async def test_order_per_publisher_from_threads_and_the_loop() -> None:
    a, b = processes(2)
    far = Recorder()
    b.subscribe("t", far)
    a.subscribe("t", Recorder())  # starts a on this loop

    def from_thread() -> None:
        for i in range(200):
            a.publish("t", f"thread {i}")

    for i in range(200):
        a.publish("t", f"loop {i}")
    await asyncio.to_thread(from_thread)
    await a.publish("t", "last")
    assert far.data[-1] == "last" and len(far.data) == 401
    assert [d for d in far.data if str(d).startswith("loop")] == [f"loop {i}" for i in range(200)]
    assert [d for d in far.data if str(d).startswith("thread")] == [
        f"thread {i}" for i in range(200)
    ]


async def test_history_ids_and_catch_up_without_gaps_or_doubles() -> None:
    a, b = processes(2, history=100)
    watcher = Recorder()
    b.subscribe("t", watcher)
    for i in range(10):
        await a.publish("t", i)
    assert [o.id for o in watcher.got] == [f"{n}-0" for n in range(1, 11)]
    late = Recorder()
    pending = b.subscribe_from("t", late, watcher.got[4].id)
    a.publish("t", "during")  # held back until the missed ones are delivered
    await asyncio.wait_for(pending, TIMEOUT)
    await a.publish("t", "after")
    assert late.data == ["5", "6", "7", "8", "9", "during", "after"]
    assert b.replay("t", "1-0") == []  # history on a backplane is read asynchronously


async def test_malformed_envelopes_are_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="h3_fastapi")
    a, b = processes(2)
    far = Recorder()
    b.subscribe("t", far)
    for junk in (b"[" * 100_000 + b"\nx", b"no header", b'["o",1,true]\nx', b"\xff\n\xff"):
        b.received("t", junk, None)
    await a.publish("t", "valid")
    assert far.data == ["valid"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_backplane_that_raises_is_reported_and_publishing_goes_on() -> None:
    errors: list[Exception] = []
    bus = example.Bus()

    class Flaky(example.BusBackplane):  # type: ignore[name-defined,misc]
        fail = True

        async def publish(self, batch: Sequence[tuple[str, bytes]]) -> list[str | None]:
            if Flaky.fail:
                Flaky.fail = False
                raise RuntimeError("wire broke")
            result: list[str | None] = await super().publish(batch)
            return result

    a = BackplanePubSub(Flaky(bus), on_error=errors.append, reconnect_backoff=(0.0, 0.0))
    b = BackplanePubSub(example.BusBackplane(bus), name="bus")
    far = Recorder()
    b.subscribe("t", far)
    await asyncio.wait_for(a.publish("t", "lost"), TIMEOUT)  # resolves, does not raise
    await asyncio.wait_for(a.publish("t", "kept"), TIMEOUT)
    assert far.data == ["kept"] and len(errors) == 1
