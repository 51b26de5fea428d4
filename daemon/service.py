"""The daemon's core: sandboxes and tool calls, with authorization. No gRPC here (see server.py).

A tool call's life: `begin_call` resolves limits through the policy and creates the call cgroup (the
process is attached before it runs), the cgroup watcher reports when the cgroup empties, the deadline
timer kills it at its timeout, and `_finish` writes one summary to the ledger, the event bus and the
metrics, then removes the cgroup. Observers (bpf monitor, energy meter, network accountant) hook in at
start and end through `Observer`.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostwarden.cgroups.errors import CgroupBusy, CgroupError, InvalidName
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.names import validate_name
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.cgroups.usage import read_usage
from hostwarden.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from hostwarden.events import EventBus
from hostwarden.ledger import Ledger, SandboxRow
from hostwarden.policy.resolve import Grant, Intent, IntentError

log = logging.getLogger(__name__)

PRIORITIES = ("low", "normal", "high")
MAX_LABELS = 32
MAX_LABEL_LEN = 256
MAX_TOOL_LEN = 128
MAX_COMMAND_LEN = 200
MAX_RUNNING_CALLS = 4096
AUTO_HISTORY = 200  # peaks handed to the policy for `auto` intents; it uses its own window of them


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (socket access) or one sandbox (its token)."""

    sandbox: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.sandbox is None

    def check(self, sandbox: str) -> None:
        if self.sandbox is not None and sandbox != self.sandbox:
            # Same message whether or not the other sandbox exists: no probing of names.
            raise PermissionDenied(f"this token belongs to sandbox {self.sandbox!r}; it may act only on that "
                                   "sandbox and its calls")


ADMIN = Principal()


@dataclass
class Sandbox:
    name: str
    labels: dict[str, str]
    priority: str
    path: Path
    token_sha256: str
    adopted: bool
    created_at: float


@dataclass
class RunningCall:
    call_id: str
    sandbox: str
    tool: str
    command: str
    path: Path
    cgroup_id: int
    started_at: float
    started_mono: float
    deadline_mono: float | None
    priority: str
    granted: list[dict[str, Any]]
    limits: Limits
    actions: list[dict[str, Any]] = field(default_factory=list)
    attached: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    claimed: bool = False  # set under the service lock by whichever path finishes the call


class Observer:
    """A part that follows sandboxes and calls (bpf monitor, energy meter, network accountant...).

    Hooks run on the thread that changed the state and must be quick. `call_ending` runs before the
    call's cgroup is removed and may add fields to the summary. Defaults do nothing.
    """

    def sandbox_added(self, sandbox: Sandbox) -> None:
        """Created, adopted, or found again at start-up."""

    def sandbox_removed(self, sandbox: Sandbox) -> None:
        """Deleted through the API."""

    def call_started(self, call: RunningCall) -> None:
        """Its cgroup exists; its process may not be attached yet."""

    def call_recovered(self, call: RunningCall) -> None:
        """Found still running at start-up: it began under an earlier daemon (what it did then is unseen)."""

    def process_attached(self, call: RunningCall, pid: int) -> None:
        """Process `pid` was moved into the call's cgroup (BeginToolCall's pid, AttachProcess)."""

    def call_ending(self, call: RunningCall, summary: dict[str, Any]) -> None:
        """Its processes are gone or killed; its cgroup still exists."""


# (sandbox, tool, intent, recent peaks of this tool in this sandbox) -> (cgroup limits, the policy's grant)
Resolver = Callable[[Sandbox, str, Intent, Sequence[int]], tuple[Limits, Grant]]


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"labels: at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not key or len(key) > 63 or not all(c.isalnum() or c in "_.-/" for c in key):
            raise InvalidArgument(f"labels: key {key!r} must be 1..63 characters of letters, digits, _ . - /")
        if len(value) > MAX_LABEL_LEN or any(ord(c) < 32 for c in value):
            raise InvalidArgument(f"labels[{key}]: value must be at most {MAX_LABEL_LEN} printable characters")


def _check_name(name: str, what: str) -> str:
    try:
        return validate_name(name, what)
    except InvalidName as exc:
        raise InvalidArgument(str(exc)) from exc


class Warden:
    def __init__(self, tree: CgroupTree, cgroup_mount: Path, ledger: Ledger, bus: EventBus, resolver: Resolver, *,
                 observers: list[Observer] | None = None,
                 on_call_finished: Callable[[dict[str, Any]], None] | None = None,
                 on_action: Callable[[str, str], None] | None = None) -> None:
        self.tree = tree
        self.cgroup_mount = cgroup_mount
        self.ledger = ledger
        self.bus = bus
        self.resolver = resolver
        self.observers = observers or []
        self._on_call_finished = on_call_finished
        self._on_action = on_action
        self._lock = threading.RLock()
        self.sandboxes: dict[str, Sandbox] = {}
        self.calls: dict[str, RunningCall] = {}
        self._calls_by_path: dict[Path, RunningCall] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_cond = threading.Condition(self._lock)
        self._stopping = False
        self._timer = threading.Thread(target=self._deadline_loop, name="call-deadlines", daemon=True)
        self.started_at = time.time()
        # Set by the daemon: called with a call cgroup path to start/stop watching for it to empty.
        self.watch_emptied: Callable[[Path], None] = lambda _p: None
        self.unwatch_emptied: Callable[[Path], None] = lambda _p: None

    # lifecycle

    def _notify(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:  # one broken part must not break the API or lose a call's summary
                log.exception("%s.%s failed", type(observer).__name__, hook)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._deadline_cond.notify_all()
        self._timer.join(timeout=2)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            return ADMIN
        digest = _hash_token(token)
        with self._lock:
            for sandbox in self.sandboxes.values():
                if secrets.compare_digest(sandbox.token_sha256, digest):
                    return Principal(sandbox.name)
        raise Unauthenticated("unknown sandbox token: use the token CreateSandbox returned for this sandbox")

    # sandboxes

    def _sandbox(self, principal: Principal, name: str) -> Sandbox:
        _check_name(name, "sandbox")
        principal.check(name)
        try:
            return self.sandboxes[name]
        except KeyError:
            raise NotFound(f"no sandbox {name!r} (ListSandboxes shows the existing ones)") from None

    def _register_sandbox(self, name: str, labels: dict[str, str], priority: str, path: Path,
                          adopted: bool) -> tuple[Sandbox, str]:
        token = secrets.token_urlsafe(32)
        sandbox = Sandbox(name, dict(labels), priority, path, _hash_token(token), adopted, time.time())
        self.ledger.add_sandbox(SandboxRow(name, sandbox.labels, priority, str(path), sandbox.token_sha256,
                                           adopted, sandbox.created_at))
        self.sandboxes[name] = sandbox
        self._notify("sandbox_added", sandbox)
        self.bus.publish("sandbox_created" if not adopted else "sandbox_adopted",
                         f"sandbox {name} {'adopted from ' + str(path) if adopted else 'created'}", sandbox=name)
        return sandbox, token

    def _validate_new_sandbox(self, principal: Principal, name: str, labels: dict[str, str],
                              priority: str) -> None:
        if not principal.is_admin:
            raise PermissionDenied("only the admin socket may create or adopt sandboxes")
        _check_name(name, "sandbox")
        _check_labels(labels)
        if priority not in PRIORITIES:
            raise InvalidArgument(f"priority: must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        if name in self.sandboxes:
            raise FailedPrecondition(f"sandbox {name!r} already exists: delete it first or pick another name")

    def create_sandbox(self, principal: Principal, name: str, labels: dict[str, str],
                       priority: str) -> tuple[Sandbox, str]:
        with self._lock:
            self._validate_new_sandbox(principal, name, labels, priority)
            path = self.tree.create_sandbox(name)
            return self._register_sandbox(name, labels, priority, path, adopted=False)

    def adopt_sandbox(self, principal: Principal, name: str, cgroup_path: str, labels: dict[str, str],
                      priority: str) -> tuple[Sandbox, str]:
        with self._lock:
            self._validate_new_sandbox(principal, name, labels, priority)
            if not cgroup_path or "\x00" in cgroup_path:
                raise InvalidArgument("cgroup_path: give the absolute path of an existing cgroup v2 directory")
            try:
                path = self.tree.adopt_sandbox(name, Path(cgroup_path))
            except (ValueError, FileNotFoundError) as exc:
                raise InvalidArgument(f"cgroup_path: {exc}") from exc
            return self._register_sandbox(name, labels, priority, path, adopted=True)

    def delete_sandbox(self, principal: Principal, name: str, force: bool) -> None:
        with self._lock:
            if not principal.is_admin:
                raise PermissionDenied("only the admin socket may delete sandboxes")
            sandbox = self._sandbox(principal, name)
            running = [c for c in self.calls.values() if c.sandbox == name]
            if running and not force:
                raise FailedPrecondition(f"sandbox {name!r} has {len(running)} running calls: end them, or "
                                         "delete with force to kill them")
        for call in running:
            self._finish(call, "killed", None, kill=True)
        with self._lock:
            try:
                self.tree.delete_sandbox(name, force=force)
            except CgroupBusy as exc:
                raise FailedPrecondition(f"sandbox {name!r} still has processes ({exc}): delete with force to "
                                         "kill them") from exc
            self.ledger.delete_sandbox(name)
            del self.sandboxes[sandbox.name]
        self._notify("sandbox_removed", sandbox)
        self.bus.publish("sandbox_deleted", f"sandbox {name} deleted", sandbox=name)

    def list_sandboxes(self, principal: Principal) -> list[Sandbox]:
        with self._lock:
            return [s for n, s in sorted(self.sandboxes.items()) if principal.is_admin or n == principal.sandbox]

    def running_calls_of(self, sandbox: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls.values() if c.sandbox == sandbox)

    # tool calls

    def begin_call(self, principal: Principal, sandbox_name: str, tool: str, intent: Intent, command: str,
                   pid: int = 0) -> RunningCall:
        if not tool or len(tool) > MAX_TOOL_LEN or any(ord(c) < 32 for c in tool):
            raise InvalidArgument(f"tool: give the tool's name, 1..{MAX_TOOL_LEN} printable characters")
        try:
            intent.validate()
        except IntentError as exc:
            raise InvalidArgument(str(exc)) from exc
        if pid < 0:
            raise InvalidArgument(f"pid: must be a process id, got {pid}")
        with self._lock:
            sandbox = self._sandbox(principal, sandbox_name)
            if len(self.calls) >= MAX_RUNNING_CALLS:
                raise ResourceExhausted(f"{MAX_RUNNING_CALLS} tool calls are running: end some first")
            if pid:
                self._check_attachable(principal, sandbox, pid)
            peaks = self.ledger.recent_peaks(sandbox.name, tool, AUTO_HISTORY) if intent.auto else []
            limits, grant = self.resolver(sandbox, tool, intent, peaks)
            call_id = uuid.uuid4().hex[:16]
            path, outcomes = self.tree.create_call(sandbox.name, call_id, limits)
            granted = [{"name": o.file, "value": o.value, "enforced": o.enforced,
                        "reason": grant.reasons.get(o.file, "") if o.enforced else o.reason} for o in outcomes]
            granted.append({"name": "priority", "value": str(grant.priority), "enforced": True,
                            "reason": grant.reasons.get("priority", "")})
            granted.append({"name": "timeout", "value": f"{grant.timeout_s:g}", "enforced": True,
                            "reason": grant.reasons.get("timeout", "")})
            now, mono = time.time(), time.monotonic()
            deadline = mono + grant.timeout_s if grant.timeout_s else None
            call = RunningCall(call_id, sandbox.name, tool, command[:MAX_COMMAND_LEN], path,
                               self.tree.cgroup_id(path), now, mono, deadline, str(grant.priority), granted,
                               limits)
            self.calls[call_id] = call
            self._calls_by_path[path] = call
            self.ledger.begin_call(call_id, sandbox.name, tool, call.command, str(path), now,
                                   now + grant.timeout_s if grant.timeout_s else None, granted)
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, call_id))
                if self._deadlines[0][1] == call_id:  # only an earlier deadline changes the timer's wait
                    self._deadline_cond.notify()
        self._notify("call_started", call)
        if pid:
            self._attach(call, pid)
        self.bus.publish("call_started", f"{tool} started in {sandbox.name}", sandbox=sandbox.name,
                         call_id=call_id, attributes={"tool": tool})
        return call

    def _check_attachable(self, principal: Principal, sandbox: Sandbox, pid: int) -> None:
        """A sandbox may only move its own processes: the pid must already live in its cgroup subtree."""
        if principal.is_admin:  # may move any process: only check it exists, before anything is created
            if not os.path.isdir(f"/proc/{pid}"):
                raise NotFound(f"pid {pid}: no such process")
            return
        try:
            cgroup_line = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            raise NotFound(f"pid {pid}: no such process") from None
        v2 = next((line.split(":", 2)[2] for line in cgroup_line.splitlines() if line.startswith("0::")), "")
        relative = "/" + str(sandbox.path.relative_to(self.cgroup_mount))
        if not (v2 == relative or v2.startswith(relative + "/")):
            raise PermissionDenied(f"pid {pid} is not in sandbox {sandbox.name!r}: a sandbox may attach only its "
                                   "own processes")

    def _call(self, principal: Principal, call_id: str) -> RunningCall:
        if not call_id or len(call_id) > 64 or not call_id.isalnum():
            raise InvalidArgument(f"call_id: the id BeginToolCall returned (letters and digits), got {call_id!r}")
        with self._lock:
            call = self.calls.get(call_id)
        if call is None:
            row = self.ledger.get_call(call_id)
            if row is None:
                raise NotFound(f"no tool call {call_id!r}")
            principal.check(row.sandbox)
            reason = (row.summary or {}).get("end_reason", "finished")
            raise FailedPrecondition(f"tool call {call_id} already finished ({reason}); GetToolCall shows its summary")
        principal.check(call.sandbox)
        return call

    def attach(self, principal: Principal, call_id: str, pid: int) -> None:
        if pid <= 0:
            raise InvalidArgument(f"pid: must be a positive process id, got {pid}")
        call = self._call(principal, call_id)
        self._check_attachable(principal, self.sandboxes[call.sandbox], pid)
        self._attach(call, pid)

    def _attach(self, call: RunningCall, pid: int) -> None:
        try:
            self.tree.attach(call.path, pid)
        except ProcessLookupError:
            raise NotFound(f"pid {pid}: no such process (it may have exited)") from None
        except OSError as exc:
            raise FailedPrecondition(f"cannot move pid {pid} into call {call.call_id}: {exc}") from exc
        call.attached = True
        self._notify("process_attached", call, pid)
        self.watch_emptied(call.path)

    def end_call(self, principal: Principal, call_id: str, exit_code: int | None) -> dict[str, Any]:
        try:
            call = self._call(principal, call_id)
        except FailedPrecondition:
            summary = self.get_call(principal, call_id)  # finished already, e.g. its cgroup emptied first
        else:
            summary = self._finish(call, "ended", exit_code, kill=True)
        if exit_code is not None and summary.get("exit_code") is None:
            # The cgroup emptied before the caller reported how its process ended: record what it saw.
            summary = self.ledger.set_exit_code(call_id, exit_code) or summary
        return summary

    def get_call(self, principal: Principal, call_id: str) -> dict[str, Any]:
        try:
            call = self._call(principal, call_id)
        except FailedPrecondition:
            row = self.ledger.get_call(call_id)
            assert row is not None and row.summary is not None
            return row.summary
        return self._running_summary(call)

    def list_calls(self, principal: Principal, sandbox: str, since: float | None,
                   limit: int) -> list[dict[str, Any]]:
        if sandbox:
            self._sandbox(principal, sandbox)
        elif not principal.is_admin:
            sandbox = principal.sandbox or ""
        if not 0 < limit <= 10000:
            raise InvalidArgument(f"limit: between 1 and 10000, got {limit}")
        rows = self.ledger.query_calls(sandbox or None, since, limit)
        with self._lock:
            return [row.summary if row.summary else (self._running_summary(self.calls[row.call_id])
                                                     if row.call_id in self.calls else self._row_summary(row))
                    for row in rows]

    @staticmethod
    def _row_summary(row: Any) -> dict[str, Any]:
        return {"call_id": row.call_id, "sandbox": row.sandbox, "tool": row.tool, "command": row.command,
                "state": row.state, "started_at": row.started_at, "limits": row.limits}

    def _running_summary(self, call: RunningCall) -> dict[str, Any]:
        return {"call_id": call.call_id, "sandbox": call.sandbox, "tool": call.tool, "command": call.command,
                "state": "running", "started_at": call.started_at,
                "duration_seconds": time.monotonic() - call.started_mono, "limits": call.granted,
                "actions": list(call.actions)}

    # finishing

    def on_emptied(self, path: Path) -> None:
        """The cgroup watcher says a call cgroup has no processes left."""
        with self._lock:
            call = self._calls_by_path.get(path)
        if call is not None and call.attached:
            self._finish(call, "emptied", None, kill=False)

    def _deadline_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                if self._deadlines and self._deadlines[0][0] <= now:
                    _, call_id = heapq.heappop(self._deadlines)
                    call = self.calls.get(call_id)
                    if call is not None:
                        threading.Thread(target=self._timeout, args=(call,), daemon=True).start()
                    continue
                wait = self._deadlines[0][0] - now if self._deadlines else None
                self._deadline_cond.wait(wait)

    def _timeout(self, call: RunningCall) -> None:
        limit = next((g["value"] for g in call.granted if g["name"] == "timeout"), "?")
        self.record_action(call, "kill", "timeout", f"ran past its {limit} s timeout",
                           "raise the intent's timeout_seconds, or split the work into shorter calls",
                           dry_run=False)
        self._finish(call, "timeout", None, kill=True)

    def record_action(self, call: RunningCall | None, kind: str, reason: str, detail: str, hint: str, *,
                      dry_run: bool, sandbox: str = "") -> None:
        now = time.time()
        sandbox = call.sandbox if call else sandbox
        action = {"at": now, "kind": kind, "reason": reason, "detail": detail, "hint": hint, "dry_run": dry_run}
        if call is not None:
            call.actions.append(action)
        self.ledger.add_action(now, sandbox, call.call_id if call else None, kind, reason, detail, hint, dry_run)
        if self._on_action:
            self._on_action(kind, reason)
        self.bus.publish("action", f"{'(dry run) ' if dry_run else ''}{kind}: {detail}. {hint}", sandbox=sandbox,
                         call_id=call.call_id if call else "",
                         attributes={"action": kind, "reason": reason, "hint": hint, "dry_run": str(dry_run).lower()})

    def _finish(self, call: RunningCall, end_reason: str, exit_code: int | None, *,
                kill: bool) -> dict[str, Any]:
        with self._lock:
            claimed_by_other, call.claimed = call.claimed, True
        if claimed_by_other:
            call.finished.wait(timeout=30)
            return self.get_call(ADMIN, call.call_id)
        try:
            return self._summarise(call, end_reason, exit_code, kill)
        finally:
            call.finished.set()

    def _summarise(self, call: RunningCall, end_reason: str, exit_code: int | None,
                   kill: bool) -> dict[str, Any]:
        self.unwatch_emptied(call.path)
        if kill:
            self.tree.kill(call.path)
        usage = read_usage(call.path, self.tree.fs, totals_only=True)
        ended = time.time()
        peak, peak_source = (usage.memory_peak, "memory.peak") if usage.memory_peak is not None else (None,
                                                                                                       "unavailable")
        oom_kills = int(usage.memory_events.get("oom_kill", 0)) if usage.memory_events else 0
        summary: dict[str, Any] = {
            "call_id": call.call_id, "sandbox": call.sandbox, "tool": call.tool, "command": call.command,
            "state": "finished", "end_reason": end_reason, "started_at": call.started_at, "ended_at": ended,
            "exit_code": exit_code, "duration_seconds": time.monotonic() - call.started_mono,
            "peak_memory_bytes": peak, "peak_memory_source": peak_source,
            "cpu_seconds": (usage.cpu_usage_usec or 0) / 1e6, "energy_joules": None,
            "energy_source": "unavailable", "oom_killed": oom_kills > 0, "actions": list(call.actions),
            "executables": [], "limits": call.granted, "net_rx_bytes": None, "net_tx_bytes": None,
            "net_source": "no network binding", "priority": call.priority,
        }
        self._notify("call_ending", call, summary)
        try:
            self.tree.remove(call.path)
        except CgroupError as exc:
            log.warning("call %s: cgroup %s not removed yet (%s); the reaper will retry", call.call_id,
                        call.path, exc)
        # The ledger row first: until the call leaves `calls`, readers see it running, never half-finished.
        self.ledger.finish_call(call.call_id, ended, summary)
        with self._lock:
            self.calls.pop(call.call_id, None)
            self._calls_by_path.pop(call.path, None)
        if self._on_call_finished:
            self._on_call_finished(summary)
        self.bus.publish("call_ended", f"{call.tool} in {call.sandbox} {end_reason}"
                         + (f" with exit code {exit_code}" if exit_code is not None else ""),
                         sandbox=call.sandbox, call_id=call.call_id,
                         attributes={"tool": call.tool, "end_reason": end_reason,
                                     "peak_memory_bytes": str(summary["peak_memory_bytes"] or ""),
                                     "peak_memory_source": str(summary["peak_memory_source"]),
                                     "duration_seconds": f"{summary['duration_seconds']:.6f}"})
        return summary

    # restart

    def recover(self) -> None:
        """Rebuild state from the ledger and the cgroup tree after a (re)start; remove nothing that runs."""
        found = {s.name: s for s in self.tree.scan()}
        with self._lock:
            for row in self.ledger.sandboxes():
                path = Path(row.cgroup_path)
                if row.name not in found:
                    path = self.tree.create_sandbox(row.name)
                self.sandboxes[row.name] = Sandbox(row.name, row.labels, row.priority, path, row.token_sha256,
                                                   row.adopted, row.created_at)
                self._notify("sandbox_added", self.sandboxes[row.name])
            for name, state in found.items():
                if name not in self.sandboxes:
                    self._register_sandbox(name, {}, "normal", state.path, adopted=True)
        live = {c.call_id: c for s in found.values() for c in s.calls}
        for row in self.ledger.running_calls():
            cgroup = live.pop(row.call_id, None)
            limits_row = {g["name"]: g for g in row.limits}
            deadline = None
            if row.deadline is not None:
                deadline = time.monotonic() + max(0.0, row.deadline - time.time())
            call = RunningCall(row.call_id, row.sandbox, row.tool, row.command, Path(row.cgroup_path),
                               self.tree.cgroup_id(Path(row.cgroup_path)) if cgroup else 0, row.started_at,
                               time.monotonic() - (time.time() - row.started_at), deadline,
                               str(limits_row.get("priority", {}).get("value", "normal")), row.limits, Limits(),
                               attached=True)
            if cgroup is None or not cgroup.populated:
                # It ended while the daemon was down: summarise what the cgroup still tells, then remove it.
                if cgroup is None:
                    self._finish_gone(call)
                else:
                    self._finish(call, "recovered", None, kill=False)
                continue
            with self._lock:
                self.calls[call.call_id] = call
                self._calls_by_path[call.path] = call
                if deadline is not None:
                    heapq.heappush(self._deadlines, (deadline, call.call_id))
            self.watch_emptied(call.path)
            self._notify("call_recovered", call)
            self.bus.publish("call_recovered", f"{call.tool} in {call.sandbox} still running after restart",
                             sandbox=call.sandbox, call_id=call.call_id)
        for stray in live.values():
            if not stray.populated:
                self.tree.remove(stray.path)

    def _finish_gone(self, call: RunningCall) -> None:
        summary = {"call_id": call.call_id, "sandbox": call.sandbox, "tool": call.tool, "command": call.command,
                   "state": "finished", "end_reason": "recovered", "started_at": call.started_at,
                   "ended_at": time.time(), "exit_code": None, "duration_seconds": None,
                   "peak_memory_bytes": None, "peak_memory_source": "unavailable: cgroup gone while daemon down",
                   "cpu_seconds": None, "energy_joules": None, "energy_source": "unavailable", "oom_killed": False,
                   "actions": [], "executables": [], "limits": call.granted}
        self.ledger.finish_call(call.call_id, time.time(), summary)
