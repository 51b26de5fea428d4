from __future__ import annotations

import threading

from hostwarden.events import EventBus
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create


def test_slow_subscriber_is_told_how_many_it_lost():
    bus = EventBus(capacity=3)
    sub = bus.subscribe()
    for i in range(10):
        bus.publish("x", str(i))
    first = sub.get(timeout=0)
    assert first.kind == "dropped" and first.dropped == 7
    assert [sub.get(timeout=0).message for _ in range(3)] == ["0", "1", "2"]
    assert sub.get(timeout=0) is None
    assert bus.dropped_total == 7


def test_filters_by_sandbox_and_kind():
    bus = EventBus()
    sub = bus.subscribe("a", ["call_started"])
    bus.publish("call_started", "m", sandbox="b")
    bus.publish("call_ended", "m", sandbox="a")
    bus.publish("call_started", "m", sandbox="a")
    event = sub.get(timeout=0)
    assert (event.kind, event.sandbox) == ("call_started", "a")
    assert sub.get(timeout=0) is None


def test_watch_events_stream(daemon, admin):
    stream = admin.watch(pb.WatchEventsRequest(kinds=["sandbox_created"]))
    got: list[pb.Event] = []
    reader = threading.Thread(target=lambda: got.append(next(stream)))
    reader.start()
    for _ in range(100):
        if daemon.bus._subs:
            break
        threading.Event().wait(0.02)
    create(admin, "sb")
    reader.join(timeout=5)
    stream.cancel()
    assert got and got[0].kind == "sandbox_created" and got[0].sandbox == "sb" and got[0].seq > 0
