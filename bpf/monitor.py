"""BpfMonitor: loads hostwarden's eBPF programs with bcc, feeds their events to a callback, and
holds the maps the daemon writes (watched cgroups, spike thresholds) and reads (RSS, reclaim, cost).

bcc is imported only in start(): importing it takes seconds, and nothing else here needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import logging
import os
import platform
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from hostwarden.bpf import kernel
from hostwarden.bpf.btf import Btf, BtfError, KernelLayout, kernel_layout
from hostwarden.bpf.events import BpfEvent, EventDecodeError, EventKind, decode_event
from hostwarden.bpf.programs import (
    DEFAULT_PROGRAMS,
    LIBRARY_UNITS,
    ProgramSpec,
    RawTracepoint,
    RssSource,
    SleepableLsm,
    Tracepoint,
    compose_source,
    packaged_unit,
)

log = logging.getLogger(__name__)

# Lifecycle events are not woken for (see common.bpf.c): they are drained this often.
_DRAIN_INTERVAL_MS = 50
# When the kernel counts programs' run time (BPF_ENABLE_STATS): two clock reads per program run, about 60 ns
# here, as much as a short program itself. "sampled": a window of every period (the daemon's default).
RUN_TIME_STATS_MODES = ("sampled", "always", "off")
STATS_WINDOW_S = 1.0
STATS_PERIOD_S = 10.0
_DETAIL_LINES = 6  # compiler / verifier lines kept in a program's failure detail
_SLOT_MASK = (1 << 32) - 1  # a memory_ref's slot (rss.bpf.c)
_OVERFLOW_WATCHES = 2  # overflow_entries' index of watch_overflow's entry count (common.bpf.c)
_CALIBRATION_SWITCH_S = 0.002  # a sleep on each CPU in turn: the calibration program runs at the switch


@dataclass(frozen=True)
class ProgramStatus:
    """Whether a program runs; `detail` says what it attached to, or why it could not load. `not_needed`: it could
    run here but is not attached, another program doing its job (the other way of counting RSS)."""

    name: str
    loaded: bool
    detail: str
    not_needed: bool = False


@dataclass(frozen=True)
class ProgramStats:
    """A program's own cost (kernel run-time statistics) and the events it could not deliver."""

    run_time_ns: int
    run_count: int
    events_lost: int

    @property
    def mean_run_ns(self) -> float | None:
        return self.run_time_ns / self.run_count if self.run_count else None


@dataclass(frozen=True)
class CgroupRss:
    """Summed resident memory of a watched cgroup's processes, as the memory programs count it (rss.bpf.c)."""

    rss_bytes: int
    peak_bytes: int
    source: str = "process_rss"


@dataclass(frozen=True)
class ReclaimTotals:
    count: int
    duration_ns: int
    reclaimed_pages: int


class BpfMonitorError(RuntimeError):
    """The monitor was used in a state that does not allow it (not started, program not loaded)."""


def tracefs_events_dir(sys_root: Path = Path("/sys")) -> Path | None:
    """The tracefs events directory, where bcc looks for it; None when tracefs is not mounted."""
    for candidate in (sys_root / "kernel/debug/tracing/events", sys_root / "kernel/tracing/events"):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return None


def unavailable_reason(spec: ProgramSpec, sys_root: Path, events_dir: Path | None) -> str | None:
    """Why `spec` cannot run on this kernel, found without loading anything; None if it may."""
    if isinstance(spec.attach, Tracepoint | RawTracepoint):
        # A raw tracepoint exists wherever its regular tracepoint does, which tracefs lists.
        tracepoints = (spec.attach,) if isinstance(spec.attach, Tracepoint) else spec.attach.tracepoints
        if events_dir is None:
            return ("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing): "
                    f"cannot attach {spec.attach}")
        for tracepoint in tracepoints:
            if not (events_dir / tracepoint.category / tracepoint.event).is_dir():
                return f"{tracepoint} does not exist on kernel {platform.release()}"
        return None
    lsm_file = sys_root / "kernel/security/lsm"
    try:
        active = lsm_file.read_text().strip().split(",")
    except OSError:
        return (f"cannot read {lsm_file} (securityfs not mounted?): BPF LSM state unknown, "
                f"{spec.attach} not loaded")
    if "bpf" not in active:
        return f"BPF LSM not active (active LSMs: {','.join(active)}; boot with lsm=...,bpf)"
    if not (sys_root / "kernel/btf/vmlinux").exists():
        return f"no kernel BTF ({sys_root}/kernel/btf/vmlinux): {spec.attach} needs it"
    return None


def _ima_active(sys_root: Path) -> bool:
    return (sys_root / "kernel/security/ima").is_dir()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (clang, libbpf's verifier log) writes to fd 2 while the block runs.

    bcc reports compile errors and verifier logs only on stderr; a program's failure detail needs them.
    """
    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _error_detail(error: BaseException, stderr_text: str) -> str:
    lines = [line for line in stderr_text.splitlines() if "error" in line.lower() or line.startswith("R")]
    tail = lines[-_DETAIL_LINES:] or stderr_text.strip().splitlines()[-_DETAIL_LINES:]
    return "; ".join([str(error).strip().splitlines()[0], *tail])


_Result = TypeVar("_Result")


def _call_bcc(call: Callable[[], _Result]) -> tuple[_Result | None, str | None]:
    """Runs a bcc compile, load or attach: (its result, None), or (None, why it failed: the exception and the
    compiler's or verifier's lines from stderr)."""
    failure: Exception | None = None
    with _captured_stderr() as stderr:
        try:
            return call(), None
        except Exception as refused:  # bcc raises bare Exception for compile, load and attach errors
            failure = refused
    return None, _error_detail(failure, "".join(stderr))  # the captured text is complete once the block has ended


def _ensure_tracefs(sys_root: Path) -> None:
    """Mount tracefs where bcc looks for it, if nothing is mounted yet (programs attach through it)."""
    if tracefs_events_dir(sys_root) is not None:
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(sys_root / "kernel/tracing")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.warning("could not mount tracefs: %s", result.stderr.strip())


class BpfMonitor:
    """Loads the programs, delivers their events, and exposes their maps as plain data.

    Threading: start() and stop() from one thread. Events are decoded on a background thread
    ("hostwarden-bpf-events") and passed to `on_event` there, in ring-buffer order: spike, OOM
    and reclaim events at once, lifecycle and exec-digest events within 50 ms, or at once on the
    thread that calls flush(). One record is delivered at a time (never two calls of on_event
    at once); on_event must be quick since it holds up delivery of the next one. watch(),
    unwatch(), set_threshold(), flush() and the readers may be called from any thread.
    """

    def __init__(
        self,
        on_event: Callable[[BpfEvent], None],
        *,
        programs: Sequence[ProgramSpec] = DEFAULT_PROGRAMS,
        extra_units: Mapping[str, str] | None = None,
        sys_root: Path = Path("/sys"),
        event_kinds: Collection[EventKind] = tuple(EventKind),
        dedup_execs: bool = False,
        rss_sampling: bool = True,
        run_time_stats: str = "always",
    ) -> None:
        """`extra_units` are C sources (by unit name) for programs not shipped in the package.
        `event_kinds` are the events to deliver; the programs send no others to user space (each
        event costs a ring-buffer record in the kernel and a decode here). `dedup_execs`: exec
        events report each path once per watch() of a cgroup (its first exec), not every exec;
        rarely a path is reported again (when its set of the kernel's table was full: lifecycle.bpf.c).
        `rss_sampling=False` counts RSS from kmem:rss_stat at every change even where it could be sampled (to
        compare costs and timeliness).
        `run_time_stats` (RUN_TIME_STATS_MODES): when the kernel counts the programs' run time and runs."""
        if run_time_stats not in RUN_TIME_STATS_MODES:
            raise ValueError(f"run_time_stats must be one of {', '.join(RUN_TIME_STATS_MODES)}, got {run_time_stats!r}")
        self._on_event = on_event
        self._event_kinds = frozenset(event_kinds)
        self._dedup_execs = dedup_execs
        self._rss_sampling = rss_sampling
        self._layout: KernelLayout | None = None
        self._layout_missing = ""  # why there is no kernel layout
        self._rss_source = RssSource.EVERY_CHANGE
        self._rss_detail = ""  # how RSS is sampled, or why it is not
        self._watch_serials = itertools.count(1)
        self._memory_refs: dict[int, int] = {}  # watched cgroup id -> its memory_ref (rss.bpf.c)
        self._free_memory_slots: list[int] = []
        self._overflow_watches: set[int] = set()  # watched cgroup ids in watch_overflow, not in their slot
        self._memory_watches = itertools.count(1)  # the upper half of a memory_ref
        self._programs = tuple(programs)
        self._extra_units = dict(extra_units or {})
        self._sys_root = sys_root
        self._lock = threading.Lock()
        self._bpf: Any = None
        self._started = False
        self._program_fds: dict[str, int] = {}
        self._lsm_fds: list[int] = []  # programs and links loaded here rather than by bcc
        self._run_time_stats = run_time_stats
        self._stats_lock = threading.Lock()
        self._stats_fd: int | None = None
        self._stats_on_since = 0.0
        self._stats_seconds = 0.0
        self._stats_refused = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._consume_lock = threading.Lock()  # libbpf's consumer position must not be advanced twice at once
        self._ring_ready_fd: int | None = None
        self._wake_pipe: tuple[int, int] | None = None
        self._undecodable = 0

    # ---- loading -------------------------------------------------------------------------

    def start(self) -> dict[str, ProgramStatus]:
        """Load and attach every program that this kernel allows; report each one's status.

        A program that cannot load is reported (loaded=False, with the reason) and the others
        still run. Raises BpfMonitorError only if already started.
        """
        if self._started:
            raise BpfMonitorError("BpfMonitor.start() called twice: stop() it first")
        self._started = True
        try:
            bcc = importlib.import_module("bcc")
        except ImportError as missing:
            reason = (f"python module bcc not importable ({missing}): install Debian's python3-bpfcc "
                      "in a venv made with --system-site-packages")
            return {spec.name: ProgramStatus(spec.name, False, reason) for spec in self._programs}

        _ensure_tracefs(self._sys_root)
        events_dir = tracefs_events_dir(self._sys_root)
        statuses: dict[str, ProgramStatus] = {}
        candidates: list[ProgramSpec] = []
        for spec in self._programs:
            reason = unavailable_reason(spec, self._sys_root, events_dir)
            if reason is None:
                candidates.append(spec)
            else:
                statuses[spec.name] = ProgramStatus(spec.name, False, reason)

        units = list(dict.fromkeys(spec.unit for spec in candidates))
        self._read_kernel_layout()
        self._bpf, compile_failures = self._compile(bcc, units)
        if self._bpf is not None:
            self._memory_refs.clear()
            self._overflow_watches.clear()
            self._free_memory_slots = list(reversed(range(self._table("cgroup_memory").max_entries)))
            wanted = self._bpf[b"event_wanted"]
            for kind in self._event_kinds:
                wanted[wanted.Key(int(kind))] = wanted.Leaf(1)
            if self._dedup_execs and self._table_known("exec_dedup"):
                dedup = self._table("exec_dedup")
                dedup[dedup.Key(0)] = dedup.Leaf(1)
            self._choose_rss_source(bcc, candidates)
        for spec in candidates:
            if spec.unit in compile_failures:
                statuses[spec.name] = ProgramStatus(spec.name, False, compile_failures[spec.unit])
            elif spec.rss_source is not None and spec.rss_source is not self._rss_source:
                statuses[spec.name] = self._unused_memory_program(spec)
            else:
                statuses[spec.name] = self._load(bcc, spec)

        if self._program_fds:
            self._start_delivery()
        elif self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        return {spec.name: statuses[spec.name] for spec in self._programs}

    def _read_kernel_layout(self) -> None:
        """The struct offsets the programs read, from this kernel's BTF (they are compiled in as -D flags)."""
        try:
            self._layout = kernel_layout(Btf.load(self._sys_root / "kernel/btf/vmlinux"))
        except BtfError as missing:
            self._layout, self._layout_missing = None, str(missing)
            log.warning("no kernel layout from BTF (%s): exit statuses unknown, RSS from kmem:rss_stat", missing)

    def _cflags(self) -> list[str]:
        if self._layout is None:
            return []
        return self._layout.cflags(os.sysconf("SC_PAGE_SIZE"), len(cpu_list(self._sys_root, "possible")))

    def _choose_rss_source(self, bcc: ModuleType, candidates: list[ProgramSpec]) -> None:
        """Sampled RSS where the kernel's layout allows it (and, for percpu counters, every online CPU's offset
        was found), else kmem:rss_stat at every change; `_rss_detail` says which and why."""
        self._rss_source = RssSource.EVERY_CHANGE
        if not self._rss_sampling:
            self._rss_detail = "RSS sampling turned off"
        elif self._layout is None:
            self._rss_detail = f"no kernel layout: {self._layout_missing}"
        elif self._layout.rss is None:
            self._rss_detail = f"mm counters unreadable: {self._layout.rss_unavailable}"
        elif not (samplers := [spec for spec in candidates if spec.rss_source is RssSource.SAMPLED]):
            self._rss_detail = "no sampling program can attach on this kernel"
        elif refusals := [f"{spec.name}: {refusal}" for spec in samplers
                          if (refusal := self._try_load(bcc, spec.attach.function)[1]) is not None]:
            self._rss_detail = f"the sampler does not load on this kernel ({'; '.join(refusals)})"
        elif self._layout.rss.percpu is None:
            self._rss_source, self._rss_detail = RssSource.SAMPLED, "RSS sampled from atomic mm counters"
        else:
            failure = self._calibrate_cpu_offsets(bcc)
            if failure is None:
                self._rss_source = RssSource.SAMPLED
                cpus = len(cpu_list(self._sys_root, "online"))
                self._rss_detail = f"RSS sampled: percpu mm counters summed over {cpus} online CPUs' parts"
            else:
                self._rss_detail = f"per-CPU offsets not found: {failure}"
        if self._rss_source is RssSource.EVERY_CHANGE:
            log.info("RSS counted at every change on kmem:rss_stat (%s)", self._rss_detail)

    def _calibrate_cpu_offsets(self, bcc: ModuleType) -> str | None:
        """Fill cpu_offsets: the calibration program runs at a context switch on each online CPU in turn
        (a thread of this process sleeps there). None when every online CPU's offset was found and checks
        out, else what went wrong."""
        function, refusal = self._try_load(bcc, "calibrate_cpu_offset")
        if function is None:
            return f"calibration program: {refusal}"
        try:
            link = kernel.attach_raw_tracepoint(function.fd, "sched_switch")
        except OSError as refused:
            return f"calibration program: cannot attach to sched_switch: {refused}"
        online = cpu_list(self._sys_root, "online")
        try:
            for cpu in online:
                visit = threading.Thread(target=_switch_on_cpu, args=(cpu,), name=f"hostwarden-cpu{cpu}")
                visit.start()
                visit.join()
        finally:
            os.close(link)
        offsets, runqueues = self._table("cpu_offsets"), self._table("cpu_runqueues")
        found = {cpu: (offsets[offsets.Key(cpu)].value, runqueues[runqueues.Key(cpu)].value) for cpu in online}
        return check_cpu_offsets(found)

    def _try_load(self, bcc: ModuleType, function: str) -> tuple[Any, str | None]:
        """Loads raw-tracepoint function `function` (bcc keeps it: attaching it later loads nothing more); the
        function, or None and why the kernel refused it."""
        return _call_bcc(lambda: self._bpf.load_func(function.encode(), bcc.BPF.RAW_TRACEPOINT))

    def _unused_memory_program(self, spec: ProgramSpec) -> ProgramStatus:
        if self._rss_source is RssSource.SAMPLED:
            samplers = ", ".join(other.name for other in self._programs if other.rss_source is RssSource.SAMPLED)
            return ProgramStatus(spec.name, False, f"not attached: not needed, {self._rss_detail} ({samplers})",
                                 not_needed=True)
        return ProgramStatus(spec.name, False,
                             f"not attached: RSS counted at every change on kmem:rss_stat instead ({self._rss_detail})",
                             not_needed=not self._rss_sampling)

    def _unit_source(self, unit: str) -> str:
        return self._extra_units[unit] if unit in self._extra_units else packaged_unit(unit)

    def _compile(self, bcc: ModuleType, units: list[str]) -> tuple[Any, dict[str, str]]:
        """One bcc module for all units (one clang run: ~25 s on an emulated VM). If that fails,
        each unit alone finds the culprits, and the module is rebuilt without them."""
        if not units:
            return None, {}
        bpf_class = _manual_attach_class(bcc)
        try:
            sources = {name: self._unit_source(name) for name in [*LIBRARY_UNITS, *units]}
        except OSError as unreadable:
            return None, {unit: f"source unreadable: {unreadable}" for unit in units}

        def build(names: list[str]) -> Any:
            built, refusal = _call_bcc(lambda: bpf_class(text=compose_source(sources, names).encode(),
                                                         cflags=self._cflags()))
            if refusal is not None:
                raise _CompileError(refusal)
            return built

        try:
            return build(units), {}
        except _CompileError as combined:
            log.warning("bpf programs failed to compile together (%s); compiling each alone", combined)
        failures: dict[str, str] = {}
        for unit in units:
            try:
                build([unit]).cleanup()
            except _CompileError as alone:
                failures[unit] = f"compile failed: {alone}"
        working = [unit for unit in units if unit not in failures]
        if not working:
            return None, failures
        try:
            return build(working), failures
        except _CompileError as rebuilt:
            return None, {unit: f"compile failed: {rebuilt}" for unit in units}

    def _load(self, bcc: ModuleType, spec: ProgramSpec) -> ProgramStatus:
        def attach() -> str:
            if isinstance(spec.attach, SleepableLsm):
                return self._load_sleepable_lsm(bcc, spec, spec.attach)
            if isinstance(spec.attach, RawTracepoint):
                function = self._bpf.load_func(spec.attach.function.encode(), bcc.BPF.RAW_TRACEPOINT)
                for tracepoint in spec.attach.tracepoints:
                    self._bpf.attach_raw_tracepoint(tp=tracepoint.event.encode(), fn_name=function.name)
                self._program_fds[spec.name] = function.fd
                return f"attached to {spec.attach} ({self._rss_detail})"
            detail = self._attach_tracepoint(bcc, spec, spec.attach)
            if spec.without_layout and self._layout is None:
                detail += f" ({spec.without_layout} unknown: {self._layout_missing})"
            return detail

        detail, refusal = _call_bcc(attach)
        if refusal is not None:
            return ProgramStatus(spec.name, False, refusal)
        return ProgramStatus(spec.name, True, detail)

    def _attach_tracepoint(self, bcc: ModuleType, spec: ProgramSpec, tracepoint: Tracepoint) -> str:
        function = self._bpf.load_func(tracepoint.function.encode(), bcc.BPF.TRACEPOINT)
        self._bpf.attach_tracepoint(tp=f"{tracepoint.category}:{tracepoint.event}".encode(), fn_name=function.name)
        self._program_fds[spec.name] = function.fd
        return f"attached to {tracepoint}"

    def _load_sleepable_lsm(self, bcc: ModuleType, spec: ProgramSpec, attach: SleepableLsm) -> str:
        instructions = self._bpf.dump_func(attach.function.encode())
        license_text = bcc.libbcc.lib.bpf_module_license(self._bpf.module)
        try:
            program_fd = kernel.load_sleepable_lsm(instructions, attach.hook, spec.name, license_text)
        except kernel.BpfSyscallError as refused:
            verifier = refused.log.strip().splitlines()[-_DETAIL_LINES:]
            raise RuntimeError("; ".join([str(refused), *verifier])) from None
        try:
            link_fd = kernel.attach_lsm(program_fd)
        except OSError:
            os.close(program_fd)
            raise
        self._lsm_fds += [link_fd, program_fd]
        self._program_fds[spec.name] = program_fd
        if _ima_active(self._sys_root):
            return f"attached to {attach}, IMA digests"
        return f"attached to {attach}; IMA not active: events carry the path, no digest"

    # ---- delivery ------------------------------------------------------------------------

    def _start_delivery(self) -> None:
        self._stats_refused = False
        self._set_run_time_stats(self._run_time_stats == "always")
        self._bpf[b"events"].open_ring_buffer(self._on_record)
        # Wait on the ring's epoll fd ourselves (instead of bcc's ring_buffer_poll, which also
        # consumes) so that consuming happens only under _consume_lock: flush() may then drain
        # the ring from any thread without the poller delivering the same records twice.
        self._ring_ready_fd = kernel.ring_buffer_epoll_fd(self._bpf._ringbuf_manager)
        self._wake_pipe = os.pipe()
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="hostwarden-bpf-events", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        assert self._ring_ready_fd is not None and self._wake_pipe is not None
        waiter = select.poll()
        waiter.register(self._ring_ready_fd, select.POLLIN)
        waiter.register(self._wake_pipe[0], select.POLLIN)
        while not self._stop.is_set():
            waiter.poll(_DRAIN_INTERVAL_MS)
            self.flush()
            if self._run_time_stats == "sampled":
                self._set_run_time_stats(time.monotonic() % STATS_PERIOD_S < STATS_WINDOW_S)

    def _set_run_time_stats(self, on: bool) -> None:
        """Turn the kernel's run-time statistics on or off (a BPF_ENABLE_STATS fd: undone when it closes, also
        if this process dies), keeping the time they were on."""
        with self._stats_lock:
            if on and self._stats_fd is None and not self._stats_refused:
                try:
                    self._stats_fd = kernel.enable_run_time_stats()
                except OSError as refused:
                    self._stats_refused = True
                    log.warning("BPF run-time statistics unavailable (%s): program costs read as 0", refused)
                    return
                self._stats_on_since = time.monotonic()
            elif not on and self._stats_fd is not None:
                os.close(self._stats_fd)
                self._stats_fd = None
                self._stats_seconds += time.monotonic() - self._stats_on_since

    def run_time_stats_seconds(self) -> float:
        """How long the kernel has counted the programs' run time and runs (program_stats() covers only that)."""
        with self._stats_lock:
            if self._stats_fd is None:
                return self._stats_seconds
            return self._stats_seconds + time.monotonic() - self._stats_on_since

    def flush(self) -> None:
        """Deliver every record submitted so far, on the calling thread, before returning.

        Lifecycle records wait up to 50 ms for the periodic drain; a caller that needs them now
        (e.g. the executables of a call that just ended) flushes."""
        with self._consume_lock:
            if self._bpf is not None and self._ring_ready_fd is not None:
                self._bpf.ring_buffer_consume()

    def _on_record(self, _context: object, data: int, size: int) -> int:
        try:
            event = decode_event(ctypes.string_at(data, size))
        except EventDecodeError as undecodable:
            self._undecodable += 1
            log.warning("dropped a ring-buffer record: %s", undecodable)
            return 0
        try:
            self._on_event(event)
        except Exception:  # a consumer's bug must not stop the delivery of later events
            log.exception("on_event raised for %s", event)
        return 0

    def stop(self) -> None:
        """Detach every program, stop delivery, close all kernel objects. Idempotent."""
        self._stop.set()
        if self._poller is not None:
            assert self._wake_pipe is not None
            os.write(self._wake_pipe[1], b"x")
            self._poller.join()
            self._poller = None
        if self._wake_pipe is not None:
            for fd in self._wake_pipe:
                os.close(fd)
            self._wake_pipe = None
        with self._consume_lock:
            self._ring_ready_fd = None  # owned by bcc's ring-buffer manager, freed by cleanup()
        for fd in self._lsm_fds:
            os.close(fd)
        self._lsm_fds.clear()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        self._set_run_time_stats(False)
        self._program_fds.clear()
        self._started = False

    # ---- maps the daemon writes ----------------------------------------------------------

    def _table(self, name: str) -> Any:
        if self._bpf is None:
            raise BpfMonitorError("no BPF program is loaded: start() the monitor first (and check "
                                  "its program statuses)")
        try:
            return self._bpf[name.encode()]
        except KeyError:
            raise BpfMonitorError(f"map {name} does not exist: the program owning it did not load") from None

    def _table_known(self, name: str) -> bool:
        try:
            self._table(name)
        except BpfMonitorError:
            return False
        return True

    def watch(self, cgroup_id: int, *, spike_threshold_bytes: int | None = None,
              processes: Collection[int] = ()) -> None:
        """Observe the processes of cgroup `cgroup_id` (its cgroup v2 inode number). The programs track a process
        from its fork or exec in a watched cgroup; `processes` (tgids, e.g. its cgroup.procs) are there already
        and tracked from now on (their RSS is sampled only once tracked). Watching a watched cgroup again keeps
        its totals and sets its threshold; BpfMonitorError when as many cgroups as the kernel's tables hold are
        watched already."""
        _check_cgroup_id(cgroup_id)
        _check_threshold(spike_threshold_bytes)
        _check_processes(processes)
        with self._lock:
            memory = self._table("cgroup_memory")
            ref = self._memory_refs.get(cgroup_id)
            if ref is None:
                if not self._free_memory_slots:
                    raise BpfMonitorError(f"cannot watch cgroup {cgroup_id}: {memory.max_entries} cgroups are "
                                          "watched already, the most the kernel's tables hold")
                ref = (next(self._memory_watches) % (1 << 32) or 1) << 32 | self._free_memory_slots.pop()
                memory[memory.Key(ref & _SLOT_MASK)] = memory.Leaf(0, 0, ref)
                self._memory_refs[cgroup_id] = ref
            self._write_spike(ref, cgroup_id, spike_threshold_bytes)
            self._write_watch(cgroup_id, next(self._watch_serials), ref)
            self._track_processes(cgroup_id, ref, processes)
            if self._table_known("reclaim_totals"):
                totals = self._table("reclaim_totals")
                if totals.Key(cgroup_id) not in totals:
                    totals[totals.Key(cgroup_id)] = totals.Leaf()

    def set_threshold(self, cgroup_id: int, spike_threshold_bytes: int | None) -> None:
        """Replace a watched cgroup's spike threshold (None: no spike detection) and re-arm it.

        A threshold reports one crossing; call this again to be told of the next one."""
        _check_cgroup_id(cgroup_id)
        _check_threshold(spike_threshold_bytes)
        with self._lock:
            self._write_spike(self._watched_ref(cgroup_id), cgroup_id, spike_threshold_bytes)

    def track(self, cgroup_id: int, processes: Collection[int]) -> None:
        """Track processes (tgids) that entered the watched cgroup `cgroup_id` since its watch() (moved into it):
        the programs saw neither their fork nor an exec there. BpfMonitorError if the cgroup is not watched."""
        _check_cgroup_id(cgroup_id)
        _check_processes(processes)
        with self._lock:
            self._track_processes(cgroup_id, self._watched_ref(cgroup_id), processes)

    def _watched_ref(self, cgroup_id: int) -> int:
        """A watched cgroup's memory_ref (under self._lock); BpfMonitorError if it is not watched."""
        ref = self._memory_refs.get(cgroup_id)
        if ref is None:
            raise BpfMonitorError(f"cgroup {cgroup_id} is not watched: watch() it first")
        return ref

    def _track_processes(self, cgroup_id: int, ref: int, processes: Collection[int]) -> None:
        """Put processes already in a watched cgroup (there at watch(), or moved in since) in the process table
        (common.bpf.c), where their slot is free.
        Where a live process holds it (only where pid_max > the table's size) the process is left out: the
        overflow hash's entry count is the kernel's to keep. The kernel writes a slot only for a process of its
        own tgid, so none of these writes races with one of its."""
        slots = self._table("process_slots")
        for tgid in processes:
            key = slots.Key(tgid % slots.max_entries)
            held = slots[key].tgid
            if held == 0:
                slots[key] = slots.Leaf(tgid, 0, cgroup_id, 0, ref)
            elif held != tgid:
                log.info("process %d of cgroup %d not tracked: its slot is held by process %d", tgid, cgroup_id,
                         held)

    def _write_watch(self, cgroup_id: int, watch_serial: int, ref: int) -> None:
        """The cgroup's entry in the programs' first filter (common.bpf.c's find_watch): its slot of watch_slots if
        free or its own, else watch_overflow, whose entry count the programs read before looking there."""
        slots = self._table("watch_slots")
        key = slots.Key(watch_slot_index(cgroup_id, slots.max_entries))
        if cgroup_id not in self._overflow_watches and slots[key].cgroup_id in (0, cgroup_id):
            entry = slots.Leaf()
            entry.cgroup_id = cgroup_id
            entry.config.watch_serial = watch_serial
            entry.config.memory_ref = ref
            slots[key] = entry
            return
        overflow = self._table("watch_overflow")
        overflow[overflow.Key(cgroup_id)] = overflow.Leaf(watch_serial, ref)
        if cgroup_id not in self._overflow_watches:
            self._overflow_watches.add(cgroup_id)
            self._count_overflow_watches()

    def _remove_watch(self, cgroup_id: int) -> None:
        if cgroup_id in self._overflow_watches:
            overflow = self._table("watch_overflow")
            del overflow[overflow.Key(cgroup_id)]
            self._overflow_watches.discard(cgroup_id)
            self._count_overflow_watches()
            return
        slots = self._table("watch_slots")
        key = slots.Key(watch_slot_index(cgroup_id, slots.max_entries))
        if slots[key].cgroup_id == cgroup_id:
            slots[key] = slots.Leaf()

    def _count_overflow_watches(self) -> None:
        counts = self._table("overflow_entries")
        counts[counts.Key(_OVERFLOW_WATCHES)] = counts.Leaf(len(self._overflow_watches))

    def _write_spike(self, ref: int, cgroup_id: int, spike_threshold_bytes: int | None) -> None:
        spike = self._table("cgroup_spike")
        spike[spike.Key(ref & _SLOT_MASK)] = spike.Leaf(spike_threshold_bytes or 0, 0, ref, cgroup_id)

    def unwatch(self, cgroup_id: int) -> None:
        """Stop observing a cgroup and drop its kernel-side totals. Unknown ids are ignored."""
        _check_cgroup_id(cgroup_id)
        with self._lock:
            self._remove_watch(cgroup_id)
            if self._table_known("reclaim_totals"):
                totals = self._table("reclaim_totals")
                with contextlib.suppress(KeyError):
                    del totals[totals.Key(cgroup_id)]
            ref = self._memory_refs.pop(cgroup_id, None)
            if ref is not None:
                for name in ("cgroup_memory", "cgroup_spike"):  # ref 0: what was counted for it no longer matches
                    table = self._table(name)
                    table[table.Key(ref & _SLOT_MASK)] = table.Leaf()
                self._free_memory_slots.append(ref & _SLOT_MASK)

    # ---- what the daemon reads -----------------------------------------------------------

    def cgroup_rss(self, cgroup_id: int) -> CgroupRss | None:
        """Current and peak summed RSS of a watched cgroup's processes; None if not watched."""
        table = self._table("cgroup_memory")
        with self._lock:
            ref = self._memory_refs.get(cgroup_id)
        if ref is None:
            return None
        value = table[table.Key(ref & _SLOT_MASK)]
        if value.memory_ref != ref:
            return None  # unwatched meanwhile
        return CgroupRss(rss_bytes=max(0, value.rss), peak_bytes=max(0, value.peak))

    def reclaim_totals(self, cgroup_id: int) -> ReclaimTotals | None:
        table = self._table("reclaim_totals")
        try:
            value = table[table.Key(cgroup_id)]
        except KeyError:
            return None
        return ReclaimTotals(count=value.count, duration_ns=value.duration_ns,
                             reclaimed_pages=value.reclaimed_pages)

    def program_stats(self) -> dict[str, ProgramStats]:
        """Each loaded program's cumulative run time, run count and lost events."""
        lost = self._table("events_lost")
        stats: dict[str, ProgramStats] = {}
        for spec in self._programs:
            fd = self._program_fds.get(spec.name)
            if fd is None:
                continue
            counters = kernel.program_counters(fd)
            events_lost = sum(lost.sum(lost.Key(int(kind))).value for kind in spec.event_kinds)
            stats[spec.name] = ProgramStats(counters.run_time_ns, counters.run_count, events_lost)
        return stats

    def histogram(self, name: str) -> dict[int, int]:
        """The non-zero buckets of BPF_HISTOGRAM `name`, which a unit passed in `extra_units` defines (benchmarks
        that instrument a program: bench/bpf_run_times.py); BpfMonitorError if no loaded unit defines it."""
        return {key.value: count.value for key, count in self._table(name).items() if count.value}

    @property
    def undecodable_records(self) -> int:
        return self._undecodable


class _CompileError(Exception):
    pass


def _manual_attach_class(bcc: ModuleType) -> type:
    """bcc.BPF without its automatic attaching of tracepoint__/lsm__ functions at construction:
    that would stop at the first program that cannot attach, and load the LSM program without
    the sleepable flag. Programs here are loaded and attached one by one instead."""

    class ManualAttachBPF(bcc.BPF):  # type: ignore[misc,name-defined]
        def _trace_autoload(self) -> None:
            pass

    return ManualAttachBPF


def cpu_list(sys_root: Path, which: str) -> list[int]:
    """The CPUs in /sys/devices/system/cpu/<which> ("possible", "online"), e.g. "0-3,6" -> [0, 1, 2, 3, 6]."""
    text = (sys_root / "devices/system/cpu" / which).read_text().strip()
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def _switch_on_cpu(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})  # this thread only
    except OSError as refused:
        log.warning("calibration cannot run on CPU %d: %s", cpu, refused)
        return
    time.sleep(_CALIBRATION_SWITCH_S)


def check_cpu_offsets(found: Mapping[int, tuple[int, int]]) -> str | None:
    """None if each CPU's (per-CPU offset, runqueue address) pair was found and they agree: a variable's copies
    are as far apart as the CPUs' offsets. Else what is wrong."""
    missing = sorted(cpu for cpu, (offset, runqueue) in found.items() if not offset or not runqueue)
    if missing:
        return (f"no offset for CPUs {missing} (the calibration program did not run there, or the runqueue it "
                "found did not name the CPU)")
    first_cpu = min(found)
    first_offset, first_runqueue = found[first_cpu]
    for cpu, (offset, runqueue) in sorted(found.items()):
        if offset - first_offset != runqueue - first_runqueue:
            return (f"CPU {cpu}'s offset {offset:#x} and runqueue {runqueue:#x} disagree with CPU {first_cpu}'s "
                    f"({first_offset:#x}, {first_runqueue:#x})")
    if len({offset for offset, _ in found.values()}) != len(found):
        return "two CPUs have the same per-CPU offset"
    return None


def watch_slot_index(cgroup_id: int, slots: int) -> int:
    """The watch_slots entry of a cgroup id: common.bpf.c's watch_slot_index (Fibonacci hashing, the upper half
    of the 64-bit product, modulo the table's size)."""
    return (((cgroup_id * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 32) % slots


def _check_cgroup_id(cgroup_id: int) -> None:
    if not isinstance(cgroup_id, int) or isinstance(cgroup_id, bool) or cgroup_id <= 0:
        raise ValueError(f"cgroup id must be a positive integer (the cgroup directory's inode), "
                         f"got {cgroup_id!r}")


def _check_processes(processes: Collection[int]) -> None:
    for tgid in processes:
        if not isinstance(tgid, int) or isinstance(tgid, bool) or tgid <= 0:
            raise ValueError(f"processes must be positive pids, got {tgid!r}")


def _check_threshold(spike_threshold_bytes: int | None) -> None:
    if spike_threshold_bytes is None:
        return
    if not isinstance(spike_threshold_bytes, int) or spike_threshold_bytes <= 0:
        raise ValueError(f"spike threshold must be a positive number of bytes or None, "
                         f"got {spike_threshold_bytes!r}")
