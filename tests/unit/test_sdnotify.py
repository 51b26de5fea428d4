"""sd_notify client against a fake notification socket (an AF_UNIX datagram socket we bind ourselves)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostwarden.sdnotify import Notifier, notify_address, watchdog_interval


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        sock.settimeout(2)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def assert_nothing_more(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield FakeSystemd(sock, str(path))


@pytest.fixture
def abstract_socket() -> Iterator[FakeSystemd]:
    name = f"hostwarden-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield FakeSystemd(sock, "@" + name)


def test_each_message_arrives_as_one_datagram(path_socket: FakeSystemd) -> None:
    notifier = Notifier(path_socket.env_value)
    assert notifier.enabled
    assert notifier.ready(status="serving on /run/hostwarden/hostwarden.sock")
    assert notifier.watchdog()
    assert notifier.status("3 sandboxes, 1 running call")
    assert notifier.stopping()
    assert path_socket.receive() == "READY=1\nSTATUS=serving on /run/hostwarden/hostwarden.sock"
    assert path_socket.receive() == "WATCHDOG=1"
    assert path_socket.receive() == "STATUS=3 sandboxes, 1 running call"
    assert path_socket.receive() == "STOPPING=1"
    path_socket.assert_nothing_more()
    notifier.close()


def test_reloading_carries_the_monotonic_time_it_began(path_socket: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(path_socket.env_value).reloading(status="reloading policy")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic, status = path_socket.receive().split("\n")
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=")
    assert before <= int(monotonic.removeprefix("MONOTONIC_USEC=")) <= after
    assert status == "STATUS=reloading policy"


def test_abstract_socket_names_work(abstract_socket: FakeSystemd) -> None:
    assert Notifier(abstract_socket.env_value).ready()
    assert abstract_socket.receive() == "READY=1"


def test_without_a_socket_every_method_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready(status="up")
    assert not notifier.watchdog()
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert not notifier.status("idle")
    notifier.close()


def test_from_environment_reads_and_then_removes_the_variables(path_socket: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": path_socket.env_value, "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/usr/bin"}
    notifier = Notifier.from_environment(env)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval == 15.0
    assert notifier.ready()
    assert path_socket.receive() == "READY=1"


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert not notifier.watchdog()


def test_status_with_a_newline_is_refused_before_anything_is_sent(path_socket: FakeSystemd) -> None:
    notifier = Notifier(path_socket.env_value)
    with pytest.raises(ValueError, match="one line"):
        notifier.ready(status="up\nSTOPPING=1")
    path_socket.assert_nothing_more()


@pytest.mark.parametrize("value", ["relative/notify", "@", "vsock:2:1234", "notify"])
def test_unusable_socket_values_are_errors_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        Notifier(value)


def test_notify_address_maps_abstract_names() -> None:
    assert notify_address("@hostwarden/notify") == "\0hostwarden/notify"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_concurrent_senders_each_get_their_datagram_through(path_socket: FakeSystemd) -> None:
    notifier = Notifier(path_socket.env_value)
    senders = [threading.Thread(target=notifier.status, args=(f"sender {n}",)) for n in range(8)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    received = sorted(path_socket.receive() for _ in senders)
    assert received == sorted(f"STATUS=sender {n}" for n in range(8))
    path_socket.assert_nothing_more()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1"}, 0.0000005),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
])
def test_watchdog_interval_is_half_the_timeout_for_our_pid(env: dict[str, str], expected: float | None):
    assert watchdog_interval(env, pid=4242) == expected


@pytest.mark.parametrize(("env", "culprit"), [
    ({"WATCHDOG_USEC": ""}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "30s"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": " 30"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "3_0"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "\u0663\u0660"}, "WATCHDOG_USEC"),  # Arabic-Indic digits: isdigit() but not ASCII
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, "WATCHDOG_PID"),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "0"}, "WATCHDOG_PID"),
])
def test_bad_watchdog_values_are_errors_naming_the_variable(env: dict[str, str], culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        watchdog_interval(env, pid=4242)


def test_watchdog_interval_defaults_to_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
