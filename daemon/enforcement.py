"""Enforcement: the escalation ladder (hostwarden.policy.ladder) run against the live tool calls.

One thread gathers observations of every running call (memory.current/max/high, memory.events,
memory.pressure, frozen) and of the host (memory budget and PSI), asks the ladder for decisions with the
policy in force, carries out those not marked dry-run on the cgroups, and records every one through
Warden.record_action (ledger row, event with reason and hint, metric). It wakes on memory.events changes
of the call cgroups and on a PSI trigger on the daemon root's memory.pressure, and ticks while calls run
so the ladder's durations elapse; with no call running it sleeps until one starts.

Host arbitration: the processes of low-priority calls get a higher oom_score_adj (+500) and those of
high-priority calls a lower one (-500), so when a host or budget cgroup runs out the kernel kills low-priority
work first. High-priority calls are granted memory.low by the policy, but cgroup v2 honours a
child's protection only up to its ancestors', so each sandbox cgroup and its calls/ dir get memory.low
equal to the summed protection of the calls running below them, rewritten as calls start and end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden.capabilities import Capability
from hostwarden.cgroups.cgroupfs import CgroupFs, parse_keyed
from hostwarden.cgroups.errors import CgroupError, CgroupIOError
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.notify import CgroupWatcher, PsiTrigger
from hostwarden.cgroups.tree import CALLS_DIR, CgroupTree
from hostwarden.cgroups.usage import parse_pressure
from hostwarden.policy.actuator import apply
from hostwarden.policy.ladder import (
    Action,
    CallObservation,
    Decision,
    LadderState,
    MemoryEvents,
    Observations,
    Reason,
    decide,
)
from hostwarden.policy.schema import Policy, Priority
from hostwarden.service import Observer, RunningCall, Sandbox, Warden

if TYPE_CHECKING:
    from hostwarden.app import Daemon

log = logging.getLogger(__name__)

TICK_S = 0.25
# Rounds at least this far apart: memory.events `high` can rise thousands of times a second under throttling.
MIN_ROUND_GAP_S = 0.02
# The kernel's OOM killer (a host or budget cgroup out of memory) picks its victim by badness: processes of
# low-priority calls are made likelier victims, of high-priority calls less likely. Children inherit it.
OOM_SCORE_ADJ = {Priority.LOW: 500, Priority.NORMAL: 0, Priority.HIGH: -500}
# Wake when anything under the root stalls on memory 100 ms within 1 s.
PSI_TRIGGER = ("some", 100_000, 1_000_000)


@dataclass(frozen=True)
class HostMemory:
    """The memory the daemon's calls share: the machine's, or a tighter memory.max above the root."""

    total: int
    available: int
    psi_some_avg10: float
    psi_full_avg10: float
    source: str


def _psi(fs: CgroupFs, file: Path) -> tuple[float, float]:
    """(some avg10, full avg10) of a *.pressure file; zeros where the kernel has no PSI there."""
    try:
        pressure = parse_pressure(fs.read(file))
    except CgroupIOError:
        return 0.0, 0.0
    return pressure.some.avg10, pressure.full.avg10 if pressure.full else 0.0


def _limit(fs: CgroupFs, file: Path) -> int | None:
    try:
        raw = fs.read(file).strip()
    except CgroupIOError:
        return None
    return int(raw) if raw.isdigit() else None


def read_host_memory(fs: CgroupFs, root: Path, mount: Path, proc: Path = Path("/proc")) -> HostMemory:
    """Host memory for the ladder: /proc/meminfo and /proc/pressure/memory, unless the root or one of its
    ancestors below the cgroup mount has a memory.max below the machine's memory; then that cgroup's
    limit, use and pressure (a host slice, or a benchmark's budget)."""
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in
               (proc / "meminfo").read_text().splitlines() if line.split()[1:2] and line.split()[1].isdigit()}
    total, available = meminfo["MemTotal"], meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
    tightest: tuple[int, Path] | None = None
    node = root
    while node != mount and node.is_relative_to(mount):
        limit = _limit(fs, node / "memory.max")
        if limit is not None and limit < total and (tightest is None or limit < tightest[0]):
            tightest = (limit, node)
        node = node.parent
    if tightest is not None:
        limit, node = tightest
        used = _limit(fs, node / "memory.current") or 0
        some, full = _psi(fs, node / "memory.pressure")
        return HostMemory(limit, max(0, min(available, limit - used)), some, full, f"memory.max of {node}")
    some, full = _psi(fs, proc / "pressure" / "memory")
    return HostMemory(total, available, some, full, "/proc/meminfo")


class TreeActuator:
    """The ladder's Actuator on the daemon's cgroup tree."""

    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree

    def set_memory_high(self, path: str, value: int) -> None:
        self.tree.set_limits(Path(path), Limits(memory_high=value))

    def freeze(self, path: str) -> None:
        self.tree.freeze(Path(path))

    def thaw(self, path: str) -> None:
        self.tree.thaw(Path(path))

    def kill(self, path: str) -> None:
        self.tree.kill(Path(path))


class EnforcementCollector(Collector):
    def __init__(self, enforcer: Enforcer) -> None:
        self._enforcer = enforcer

    def collect(self) -> Iterable[Metric]:
        state = self._enforcer.state
        yield GaugeMetricFamily("hostwarden_enforcement_frozen_calls", "Tool calls the ladder holds frozen",
                                value=len(state.frozen_at))
        yield GaugeMetricFamily("hostwarden_enforcement_throttled_calls",
                                "Tool calls whose memory.high the ladder lowered", value=len(state.throttled_to))
        yield CounterMetricFamily("hostwarden_enforcement_rounds", "Ladder decisions taken",
                                  value=self._enforcer.rounds)
        yield CounterMetricFamily("hostwarden_enforcement_failures",
                                  "Ladder decisions that could not be carried out on the cgroups",
                                  value=self._enforcer.failures)


class Enforcer(Observer):
    """Runs the ladder on its own thread; Observer hooks only wake it."""

    def __init__(self, warden: Warden, tree: CgroupTree, policy: Callable[[], Policy],
                 host_memory: Callable[[], HostMemory], *, tick_s: float = TICK_S,
                 clock: Callable[[], float] = time.monotonic, psi: Capability | None = None,
                 proc: Path = Path("/proc")) -> None:
        self.warden = warden
        self.tree = tree
        self.fs = tree.fs
        self.policy = policy
        self.host_memory = host_memory
        self.tick_s = tick_s
        self.clock = clock
        self._psi_capability = psi
        self.proc = proc
        self.actuator = TreeActuator(tree)
        self.state = LadderState()
        self.rounds = 0
        self.failures = 0
        self.psi_trigger_detail = "not started"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._watcher = CgroupWatcher(on_emptied=lambda _path: None, on_memory_event=self._on_memory_event,
                                      fs=self.fs)
        self._trigger: PsiTrigger | None = None
        self._watched: set[Path] = set()
        self._seed_checked: set[str] = set()  # frozen calls whose ledger history was looked up
        self._granted_high: dict[str, int] = {}  # call id -> memory.high as granted (what release restores)
        self._call_low: dict[str, int] = {}  # call id -> its memory.low (protection its ancestors must cover)
        self._oom_adjusted: dict[str, set[int]] = {}  # call id -> pids whose oom_score_adj was set
        self._protection: dict[Path, int] = {}  # sandbox or calls/ dir -> memory.low written
        self._thread = threading.Thread(target=self._run, name="enforcement", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._watcher.start()
        try:
            self._trigger = PsiTrigger(self.tree.root / "memory.pressure", *PSI_TRIGGER)
            self._watcher.add_trigger(self._trigger, lambda _trigger: self._wake.set())
            self.psi_trigger_detail = f"PSI trigger on {self.tree.root}/memory.pressure"
            if self._psi_capability is not None:
                self._psi_capability.in_use = True
        except (CgroupIOError, OSError) as exc:
            self._trigger = None
            self.psi_trigger_detail = f"no PSI trigger ({exc}); the ladder runs on its {self.tick_s:g} s tick"
            log.warning("enforcement: %s", self.psi_trigger_detail)
        self._thread.start()

    def stop(self) -> None:
        """Stop deciding; frozen and throttled calls stay as they are (seeded again at the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._watcher.stop()
        if self._trigger is not None:
            self._trigger.close()

    def sandbox_added(self, sandbox: Sandbox) -> None:
        self._wake.set()

    # A call's start or end changes what the ladder must do at once only where it carries memory.low (the
    # ancestors' protection sums change); anything else waits for the next tick, so a burst of short calls
    # does not run a round per call.
    def call_started(self, call: RunningCall) -> None:
        if call.limits.memory_low:
            self._wake.set()

    def call_ending(self, call: RunningCall, summary: dict[str, object]) -> None:
        if call.limits.memory_low:
            self._wake.set()

    def _on_memory_event(self, _path: Path, _increases: dict[str, int]) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Tick while calls run or protection is still to be taken back; otherwise sleep until woken.
            busy = bool(self.warden.calls) or any(self._protection.values())
            self._wake.wait(self.tick_s if busy else None)
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                self.step()
            except Exception:  # the ladder must outlive one bad round (a cgroup vanishing mid-read, say)
                log.exception("enforcement round failed")
            self._stopping.wait(MIN_ROUND_GAP_S)

    # --- one round ---------------------------------------------------------------------------------------

    def step(self) -> list[Decision]:
        """Observe, decide, act, record; returns the decisions (tests call this directly)."""
        calls = {call.call_id: call for call in list(self.warden.calls.values())}
        self._follow(calls)
        self._protect(calls.values())
        self._adjust_oom_scores(calls.values())
        host = self.host_memory()
        observed = [obs for call in calls.values() if (obs := self._observe(call, host.total)) is not None]
        self._seed_frozen(observed)
        observations = Observations(tuple(observed), host.total, host.available, host.psi_some_avg10,
                                    host.psi_full_avg10)
        decisions, self.state = decide(self.policy(), observations, self.state, self.clock())
        self.rounds += 1
        for decision in decisions:
            self._carry_out(decision, calls.get(decision.call_id))
        return decisions

    def _carry_out(self, decision: Decision, call: RunningCall | None) -> None:
        detail = decision.detail
        try:
            apply([decision], self.actuator)
        except (CgroupError, OSError) as exc:
            self.failures += 1
            log.warning("enforcement: %s of %s failed: %s", decision.action, decision.cgroup_path, exc)
            detail = f"{detail} (not carried out: {exc})"
        self.warden.record_action(call, decision.action.value, decision.reason.value, detail, decision.hint,
                                  dry_run=decision.dry_run, sandbox=decision.sandbox)

    def _follow(self, calls: dict[str, RunningCall]) -> None:
        """Watch memory.events of calls that appeared (started, or recovered after a restart); forget ended."""
        paths = {call.path for call in calls.values()}
        for path in paths - self._watched:
            try:
                self._watcher.watch(path, attached=False)
            except CgroupIOError as exc:
                log.debug("enforcement: not watching %s: %s", path, exc)
                continue
            self._watched.add(path)
        for path in self._watched - paths:
            self._watcher.unwatch(path)
            self._watched.discard(path)
        for cache in (self._granted_high, self._call_low, self._oom_adjusted):
            for call_id in set(cache) - set(calls):
                del cache[call_id]

    def _protect(self, calls: Iterable[RunningCall]) -> None:
        """memory.low of each sandbox and its calls/ dir = the summed memory.low of its running calls."""
        sandboxes = {sandbox.name: sandbox.path for sandbox in list(self.warden.sandboxes.values())}
        wanted = {node: 0 for path in sandboxes.values() for node in (path, path / CALLS_DIR)}
        for call in calls:
            if call.sandbox not in sandboxes:
                continue
            if call.call_id not in self._call_low:
                # A call recovered after a restart carries no Limits: its cgroup says what it was granted.
                self._call_low[call.call_id] = call.limits.memory_low or _limit(self.fs, call.path / "memory.low") or 0
            for node in (sandboxes[call.sandbox], sandboxes[call.sandbox] / CALLS_DIR):
                wanted[node] += self._call_low[call.call_id]
        for node, low in wanted.items():
            if self._protection.get(node) == low:
                continue
            try:
                self.tree.set_limits(node, Limits(memory_low=low))
            except CgroupError as exc:
                log.warning("enforcement: memory.low of %s not set: %s", node, exc)
                continue
            self._protection[node] = low
        for node in set(self._protection) - set(wanted):
            del self._protection[node]

    def _adjust_oom_scores(self, calls: Iterable[RunningCall]) -> None:
        """oom_score_adj by priority for the processes of each call not yet adjusted (forks inherit it)."""
        for call in calls:
            adjustment = OOM_SCORE_ADJ[Priority(call.priority)]
            if not adjustment:
                continue
            try:
                pids = set(self.fs.read_pids(call.path))
            except CgroupIOError:
                continue
            done = self._oom_adjusted.setdefault(call.call_id, set())
            for pid in pids - done:
                try:
                    (self.proc / str(pid) / "oom_score_adj").write_text(str(adjustment))
                except OSError:
                    continue  # exited since cgroup.procs was read
                done.add(pid)

    def _observe(self, call: RunningCall, host_total: int) -> CallObservation | None:
        try:
            current = int(self.fs.read(call.path / "memory.current"))
            memory_high = _limit(self.fs, call.path / "memory.high")
            memory_max = _limit(self.fs, call.path / "memory.max")
            events = parse_keyed(self.fs.read(call.path / "memory.events"))
            frozen = self.fs.read_keyed(call.path / "cgroup.events").get("frozen", 0) == 1
        except (CgroupIOError, ValueError):
            return None  # ended meanwhile, or no memory controller: nothing the ladder can act on
        memory_max = memory_max if memory_max is not None else max(current, host_total)
        memory_high = memory_high if memory_high is not None else memory_max
        granted = self._granted_high.setdefault(
            call.call_id, call.limits.memory_high if call.limits.memory_high is not None else memory_high)
        some, full = _psi(self.fs, call.path / "memory.pressure")
        return CallObservation(
            call_id=call.call_id, sandbox=call.sandbox, cgroup_path=str(call.path),
            priority=Priority(call.priority), memory_current=current, memory_max=memory_max,
            memory_high=memory_high, granted_memory_high=granted,
            events=MemoryEvents(**{k: events.get(k, 0) for k in ("low", "high", "max", "oom", "oom_kill")}),
            psi_some_avg10=some, psi_full_avg10=full, frozen=frozen)

    def _seed_frozen(self, observed: list[CallObservation]) -> None:
        """After a restart the ladder's memory is gone: a frozen call whose last freeze/thaw in the ledger is
        the ladder's own freeze is the ladder's again (to thaw or kill), timed from now."""
        unknown = [c for c in observed if c.frozen and c.call_id not in self.state.frozen_at
                   and c.call_id not in self._seed_checked]
        self._seed_checked = {c.call_id for c in observed if c.frozen} & (self._seed_checked | {
            c.call_id for c in unknown})
        if not unknown:
            return
        seeded = dict(self.state.frozen_at)
        for call in unknown:
            history = [a for a in self.warden.ledger.actions(call.call_id)
                       if a["kind"] in (Action.FREEZE, Action.THAW) and not a["dry_run"]]
            if history and history[-1]["kind"] == Action.FREEZE \
                    and history[-1]["reason"] == Reason.HIGHER_PRIORITY_PRESSURE:
                seeded[call.call_id] = self.clock()
        if seeded != self.state.frozen_at:
            self.state = replace(self.state, frozen_at=MappingProxyType(seeded))


def build_enforcement(daemon: Daemon) -> Enforcer:
    """The PART_BUILDERS entry: the ladder on the daemon's tree, policy, warden and metrics."""
    mount = daemon.warden.cgroup_mount
    enforcer = Enforcer(daemon.warden, daemon.tree, daemon.policy.current,
                        lambda: read_host_memory(daemon.tree.fs, daemon.root, mount),
                        psi=daemon.capabilities.get("psi"))
    daemon.metrics.register(EnforcementCollector(enforcer))
    return enforcer
