"""A dependency-free sd_notify(3) client: tell systemd the daemon is ready, alive, reloading or stopping.

systemd passes the notification socket in $NOTIFY_SOCKET (a filesystem path, or `@name` for an abstract
socket) and, with WatchdogSec=, the watchdog timeout in $WATCHDOG_USEC (for the process in $WATCHDOG_PID).
Without $NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every method is a no-op.

Ping the watchdog from the loop whose liveness it should prove (not from a thread of its own, which would
keep pinging while the daemon is wedged), every `watchdog_interval` seconds: half the timeout, so one late
ping does not get the daemon killed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def notify_address(value: str) -> str:
    """The AF_UNIX address for a $NOTIFY_SOCKET value: an absolute path, or `@name` -> abstract `\\0name`."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(
        f"{NOTIFY_SOCKET}={value!r} is neither an absolute socket path nor an abstract '@name' socket; "
        f"unset it, or let systemd set it (Type=notify)"
    )


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when the watchdog is off.

    The watchdog is off when $WATCHDOG_USEC is unset, or when $WATCHDOG_PID names another process (the
    variables were inherited from a parent that systemd watches, not meant for us).
    Raises ValueError naming the variable when a value is not a positive integer.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get(WATCHDOG_USEC)
    if raw_usec is None:
        return None
    raw_pid = env.get(WATCHDOG_PID)
    if raw_pid is not None and _positive_int(WATCHDOG_PID, raw_pid) != (os.getpid() if pid is None else pid):
        return None
    return _positive_int(WATCHDOG_USEC, raw_usec) / 1_000_000 / 2


def _positive_int(name: str, raw: str) -> int:
    # int() alone would accept " 5", "+5" and "5_000"; systemd writes plain decimal digits only.
    if not raw.isascii() or not raw.isdigit() or int(raw) == 0:
        raise ValueError(f"{name}={raw!r} is not a positive decimal integer; unset it or let systemd set it")
    return int(raw)


class Notifier:
    """Sends sd_notify messages to one socket. Thread-safe; every method is a no-op without a socket.

    Send failures (systemd gone, socket removed) are logged and reported as False, never raised: a
    daemon must not die because its supervisor did not hear it.
    """

    def __init__(self, socket_value: str | None, watchdog_interval: float | None = None) -> None:
        self._address = None if socket_value is None else notify_address(socket_value)
        self._socket_value = socket_value
        self.watchdog_interval = watchdog_interval
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """A Notifier for $NOTIFY_SOCKET and the watchdog settings, which are then removed from `environ`
        so that processes the daemon starts do not inherit them (as sd_notify's unset_environment does)."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get(NOTIFY_SOCKET) or None, watchdog_interval(env))
        for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
            env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: systemd now reports the unit active."""
        return self._send("READY=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun; send ready() when it is done. MONOTONIC_USEC lets systemd >= 253 match the
        two (older versions ignore it)."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}", status)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self._send("STOPPING=1", status)

    def watchdog(self) -> bool:
        """The daemon is alive: restart the watchdog timer."""
        return self._send("WATCHDOG=1", None)

    def status(self, text: str) -> bool:
        """A one-line status that `systemctl status` shows."""
        return self._send(None, text)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _send(self, message: str | None, status: str | None) -> bool:
        lines = [] if message is None else [message]
        if status is not None:
            if "\n" in status:
                # A newline would start a new assignment that systemd would act on.
                raise ValueError(f"sd_notify status must be one line, got {status!r}")
            lines.append(f"STATUS={status}")
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(payload, self._address)
            except OSError as error:
                log.warning("sd_notify to %s failed: %s", self._socket_value, error)
                return False
        return True
