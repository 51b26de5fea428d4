"""One guest boot: swtpm, QEMU, the exchange directory, live output, and cleanup whatever happens.

The host and the guest exchange files through a per-run directory shared over 9p: the host writes the
command (command.sh), the guest writes its exit status (status). The command's stdout and stderr come
back on two virtio-serial ports that QEMU appends to files, which a thread copies to ours as they grow.
The serial console (kernel and init messages) goes to a file whose tail is printed on failure.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .initramfs import GUEST_DIR
from .kernel import BootFiles

# Exit statuses of the runner itself, as timeout(1) uses them.
TIMED_OUT = 124
VM_FAILED = 125

# Host variables the command sees inside the guest; everything else starts clean.
PASSED_VARIABLES = ("CI", "PATH", "PYTEST_ADDOPTS")
PASSED_PREFIXES = ("HOSTWARDEN_",)

CONSOLE_TAIL_LINES = 60
_POLL_SECONDS = 0.05
_SHUTDOWN_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


class VmError(RuntimeError):
    """The guest could not be started (swtpm or QEMU failed before the command ran)."""


@dataclass(frozen=True)
class VmConfig:
    boot: BootFiles
    initramfs: Path
    workdir: Path
    command: list[str]
    shares: list[Path] = field(default_factory=list)
    memory_mb: int = 3072
    cpus: int = 2
    timeout_s: float = 1800.0
    accel: str = "tcg"
    show_console: bool = False


@dataclass
class VmResult:
    exit_status: int
    boot_s: float | None  # seconds from start until the guest began the command; None if it never did
    total_s: float
    console_tail: list[str]  # the last CONSOLE_TAIL_LINES lines of the serial console


def _die_with_parent() -> None:
    # Children get SIGKILL if the runner itself is killed (SIGKILL cannot be trapped).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def guest_environment(host: dict[str, str]) -> dict[str, str]:
    """The command's environment inside the guest: the passed-through host variables plus the markers."""
    env = {k: v for k, v in host.items() if k in PASSED_VARIABLES or k.startswith(PASSED_PREFIXES)}
    env["HOME"] = "/root"
    env["HOSTWARDEN_IN_VM"] = "1"
    return env


def command_script(workdir: Path, command: list[str], env: dict[str, str]) -> str:
    """The shell script the guest runs: change to `workdir`, then exec `command` with exactly `env`."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return (f"cd {shlex.quote(str(workdir))} || exit {VM_FAILED}\n"
            f"exec /bin/busybox env -i {assignments} {shlex.join(command)}\n")


def _qemu_path(path: Path) -> str:
    # QEMU option values escape a comma by doubling it.
    return str(path).replace(",", ",,")


def _kernel_cmdline() -> str:
    return " ".join([
        "console=ttyS0", "loglevel=6", "panic=-1",
        "ima_policy=tcb",  # IMA measures what root executes and reads, extending PCR 10
        "hostwarden.vm=1",  # only a guest booted by this runner has it; tests/vm/conftest.py checks
    ])


def qemu_command(config: VmConfig, scratch: Path) -> list[str]:
    serial_port = "virtserialport,bus=ports.0"
    args = [
        "qemu-system-x86_64", "-accel", config.accel, "-m", str(config.memory_mb), "-smp", str(config.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", _qemu_path(config.boot.image), "-initrd", _qemu_path(config.initramfs),
        "-append", _kernel_cmdline(),
        "-chardev", f"file,id=console,path={_qemu_path(scratch / 'console.log')}",
        "-serial", "chardev:console",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={_qemu_path(scratch / 'exchange')},mount_tag=exchange,security_model=none",
        "-chardev", f"socket,id=chrtpm,path={_qemu_path(scratch / 'swtpm.sock')}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
        "-device", "virtio-serial-pci,id=ports",
        "-chardev", f"file,id=stdout,path={_qemu_path(scratch / 'stdout')}",
        "-device", f"{serial_port},chardev=stdout,name=stdout",
        "-chardev", f"file,id=stderr,path={_qemu_path(scratch / 'stderr')}",
        "-device", f"{serial_port},chardev=stderr,name=stderr",
    ]
    if config.boot.firmware is not None:
        args += ["-bios", _qemu_path(config.boot.firmware)]
    for index, share in enumerate(config.shares):
        args += ["-virtfs", f"local,path={_qemu_path(share)},mount_tag=share{index},security_model=none,"
                            "multidevs=remap"]
    return args


class _Follower(threading.Thread):
    """Copies what QEMU appends to the output files onto our own streams, as it arrives."""

    def __init__(self, pairs: list[tuple[Path, BinaryIO]], booted: Path) -> None:
        super().__init__(daemon=True)
        self._pairs = pairs
        self._offsets = [0] * len(pairs)
        self._booted = booted
        self._finished = threading.Event()
        self.booted_at: float | None = None

    def _drain(self) -> None:
        for index, (path, sink) in enumerate(self._pairs):
            try:
                with path.open("rb") as source:
                    source.seek(self._offsets[index])
                    data = source.read()
            except FileNotFoundError:
                continue
            if data:
                self._offsets[index] += len(data)
                sink.write(data)
                sink.flush()

    def run(self) -> None:
        while not self._finished.wait(_POLL_SECONDS):
            if self.booted_at is None and self._booted.exists():
                self.booted_at = time.monotonic()
            self._drain()

    def finish(self) -> None:
        """Stops following and copies whatever is left; safe to call more than once."""
        self._finished.set()
        self.join()
        self._drain()


def _console_tail(scratch: Path) -> list[str]:
    try:
        with (scratch / "console.log").open("rb") as console:
            lines = deque(console, CONSOLE_TAIL_LINES)
    except FileNotFoundError:
        return []
    return [line.decode(errors="replace").rstrip("\r\n") for line in lines]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _swtpm(state: Path) -> Iterator[Path]:
    """A fresh software TPM for one boot; it exits when QEMU disconnects and is killed if still there."""
    socket = state / "swtpm.sock"
    process = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl", f"type=unixio,path={socket}",
         "--flags", "startup-clear", "--terminate", "--log", f"file={state / 'swtpm.log'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log = state / "swtpm.log"
                why = log.read_text(errors="replace").strip() if log.exists() else "no log"
                raise VmError(f"swtpm did not start (exit status {process.poll()}): {why}")
            time.sleep(0.01)
        yield socket
    finally:
        _stop(process)


def boot(config: VmConfig) -> VmResult:
    """Boots the guest, runs the command, and returns its exit status; QEMU and swtpm never outlive it."""
    started = time.monotonic()
    with ExitStack() as cleanup:
        scratch = Path(tempfile.mkdtemp(prefix="hostwarden-vm-"))
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        exchange = scratch / "exchange"
        exchange.mkdir()
        shutil.copyfile(GUEST_DIR / "stage2.sh", exchange / "stage2.sh")
        (exchange / "workdir").write_text(f"{config.workdir}\n")
        (exchange / "shares").write_text("".join(f"{share}\n" for share in config.shares))
        (exchange / "command.sh").write_text(
            command_script(config.workdir, config.command, guest_environment(dict(os.environ))))

        cleanup.enter_context(_swtpm(scratch))
        with (scratch / "qemu.log").open("wb") as qemu_log:
            qemu = subprocess.Popen(qemu_command(config, scratch), stdin=subprocess.DEVNULL, stdout=qemu_log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        cleanup.callback(_stop, qemu)
        streams: list[tuple[Path, BinaryIO]] = [(scratch / "stdout", sys.stdout.buffer),
                                                 (scratch / "stderr", sys.stderr.buffer)]
        if config.show_console:
            streams.append((scratch / "console.log", sys.stderr.buffer))
        follower = _Follower(streams, exchange / "booted")
        follower.start()
        cleanup.callback(follower.finish)
        status_file = exchange / "status"
        timed_out = _wait(qemu, status_file, started + config.timeout_s)
        follower.finish()
        boot_s = _since(started, follower.booted_at)
        if timed_out:
            print(f"vm: timed out after {config.timeout_s:g} s; QEMU and swtpm stopped", file=sys.stderr)
            status = TIMED_OUT
        elif not status_file.exists():
            print(f"vm: the guest stopped before the command finished (QEMU exit status {qemu.returncode})",
                  file=sys.stderr)
            sys.stderr.write((scratch / "qemu.log").read_text(errors="replace"))
            status = VM_FAILED
        else:
            status = int(status_file.read_text())
        return VmResult(status, boot_s, time.monotonic() - started, _console_tail(scratch))


def _wait(qemu: subprocess.Popen[bytes], status_file: Path, deadline: float) -> bool:
    """Waits for QEMU to exit; True when the deadline passed first (QEMU is then stopped)."""
    status_seen_at: float | None = None
    while qemu.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            _stop(qemu)
            return True
        if status_seen_at is None and status_file.exists():
            status_seen_at = now
        # The guest reboots (QEMU exits) right after writing its status; if it hangs instead, stop it.
        if status_seen_at is not None and now - status_seen_at > _SHUTDOWN_GRACE_S:
            _stop(qemu)
            break
        time.sleep(_POLL_SECONDS)
    return False


def _since(started: float, moment: float | None) -> float | None:
    return None if moment is None else moment - started
