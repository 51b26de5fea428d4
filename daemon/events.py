"""The event bus: every subscriber has a bounded queue; a slow one loses events and is told how many.

Publishing never blocks: the daemon's hot paths (tool-call begin/end, bpf callbacks) must not wait on a
client that stopped reading.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    kind: str
    message: str
    sandbox: str = ""
    call_id: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    kernel_time_ns: int = 0
    at: float = field(default_factory=time.time)
    seq: int = 0
    dropped: int = 0


class Subscription:
    """One subscriber's bounded queue. `get` returns a synthetic `dropped` event first after losses."""

    def __init__(self, bus: EventBus, capacity: int, sandbox: str, kinds: frozenset[str]) -> None:
        self._bus = bus
        self._capacity = capacity
        self.sandbox = sandbox
        self.kinds = kinds
        self._items: deque[Event] = deque()
        self._dropped = 0
        self._cond = threading.Condition()
        self.closed = False

    def wants(self, event: Event) -> bool:
        if self.sandbox and event.sandbox != self.sandbox:
            return False
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: Event) -> bool:
        with self._cond:
            if len(self._items) >= self._capacity:
                self._dropped += 1
                return False
            self._items.append(event)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Event | None:
        with self._cond:
            if self._dropped:
                lost, self._dropped = self._dropped, 0
                return Event(kind="dropped", message=f"{lost} events dropped: this subscriber read too slowly",
                             sandbox=self.sandbox, dropped=lost)
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.dropped_total = 0
        self.published_total = 0

    def subscribe(self, sandbox: str = "", kinds: Iterable[str] = ()) -> Subscription:
        sub = Subscription(self, self._capacity, sandbox, frozenset(kinds))
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, kind: str, message: str, *, sandbox: str = "", call_id: str = "",
                attributes: dict[str, str] | None = None, kernel_time_ns: int = 0) -> Event:
        with self._lock:
            event = Event(kind=kind, message=message, sandbox=sandbox, call_id=call_id,
                          attributes=attributes or {}, kernel_time_ns=kernel_time_ns, seq=next(self._seq))
            subs = [s for s in self._subs if s.wants(event)]
            self.published_total += 1
        lost = sum(1 for s in subs if not s.offer(event))
        if lost:
            with self._lock:
                self.dropped_total += lost
        return event

    def close_all(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
