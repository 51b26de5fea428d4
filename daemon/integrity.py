"""The integrity part: per-sandbox and host integrity (hostwarden.attest) run inside the daemon.

It builds the `Attestor` from `[attest]`, feeds it the bpf monitor's exec events, evaluates on a thread
of its own (when IMA appended entries or an exec event arrived, checked every `poll_seconds`, and at least
every `interval_seconds`), and turns every change of a scope's verdict into an `integrity_changed` event,
an attestation row in the ledger and metrics. A sandbox that turns UNTRUSTED (or UNKNOWN) gets the
policy's `[attest] on_untrusted` (`on_unknown`) action: its running calls and its agent leaf are frozen
or killed, each recorded through `Warden.record_action` (dry-run respected).

Threading: `evaluate()` is serialised on `_evaluation_lock` (the thread and GetIntegrity share it) and
may block on TPM round trips; Observer hooks and `record_exec` only queue work for the next evaluation
and wake the thread, so sandbox creation never waits for the TPM.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden.attest import (
    AttestConfig,
    Attestor,
    Attribution,
    ImaLogError,
    IntegrityReport,
    IntegrityState,
    LogFormat,
    RuntimePolicy,
    RuntimePolicyError,
    ScopeState,
    TpmError,
    TpmUnavailable,
)
from hostwarden.attest.attestor import QuoteSource
from hostwarden.attest.imalog import DEFAULT_ASCII_LOG
from hostwarden.attest.tpm import DEFAULT_TCTI
from hostwarden.cgroups.errors import CgroupError
from hostwarden.cgroups.tree import AGENT_LEAF
from hostwarden.config import ConfigError
from hostwarden.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from hostwarden.policy.schema import IntegrityAction
from hostwarden.proto import warden_pb2 as pb
from hostwarden.service import Observer, Principal, RunningCall, Sandbox

if TYPE_CHECKING:
    from hostwarden.app import Daemon

log = logging.getLogger(__name__)

EVALUATION_GAP_S = 0.5  # at most two exec-driven evaluations a second

HOST_SCOPE = "host"
# hostwarden_integrity_state values (docs/attestation.md)
STATE_VALUES = {IntegrityState.TRUSTED: 1, IntegrityState.UNTRUSTED: 0, IntegrityState.UNKNOWN: -1}
QUOTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ACTION_REASON = "integrity_untrusted"  # the action metric's reason label for on_untrusted
UNKNOWN_ACTION_REASON = "integrity_unknown"
# GetIntegrity answers from the last evaluation when nothing changed since and it is this recent.
REPORT_MAX_AGE_S = 1.0
_ATTRIBUTION_NAMES = {Attribution.DIGEST: "lsm_digest", Attribution.PATH: "exec_path", Attribution.NONE: "none"}
# Programs of the bpf monitor that report execs (with the IMA digest, or the path only).
_EXEC_PROGRAMS = ("exec_digest", "process_exec")


@dataclass(frozen=True)
class IntegritySettings:
    """`[attest]` in the daemon's config file."""

    enabled: bool = True
    ima_log: Path = DEFAULT_ASCII_LOG
    ima_log_format: LogFormat | None = None  # None: from the file name
    tpm_tcti: str = DEFAULT_TCTI
    runtime_policy: Path | None = None  # the host's keylime runtime policy (JSON)
    sandbox_policy_dir: Path | None = None  # <dir>/<sandbox>.json extends the host policy for that sandbox
    state_dir: Path | None = None  # None: [daemon] state_dir
    tpm_timeout_seconds: float = 10.0
    interval_seconds: float = 60.0
    poll_seconds: float = 1.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> IntegritySettings:
        """Validated settings; ConfigError names the key and what it takes."""
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                raise ConfigError(f"attest.{key}: unknown key (known: {', '.join(sorted(fields))})")
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"attest.enabled: expected true or false, got {value!r}")
            elif key in ("ima_log", "runtime_policy", "sandbox_policy_dir", "state_dir"):
                if not isinstance(value, str) or not value.startswith("/"):
                    raise ConfigError(f"attest.{key}: expected an absolute path, got {value!r}")
                value = Path(value)
            elif key == "ima_log_format":
                formats = [f.value for f in LogFormat]
                if value not in formats:
                    raise ConfigError(f"attest.ima_log_format: expected one of {', '.join(formats)}, got {value!r}")
                value = LogFormat(value)
            elif key == "tpm_tcti":
                if not isinstance(value, str) or ":" not in value:
                    raise ConfigError(f"attest.tpm_tcti: expected a TCTI such as {DEFAULT_TCTI!r} or "
                                      f"'swtpm:host=127.0.0.1,port=2321', got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"attest.{key}: expected a positive number of seconds, got {value!r}")
            else:
                value = float(value)
            values[key] = value
        settings = cls(**values)
        if settings.poll_seconds > settings.interval_seconds:
            raise ConfigError(f"attest.poll_seconds ({settings.poll_seconds:g}) must not exceed "
                              f"attest.interval_seconds ({settings.interval_seconds:g})")
        return settings

    def attest_config(self, default_state_dir: Path) -> AttestConfig:
        return AttestConfig(ima_log=self.ima_log, ima_log_format=self.ima_log_format, tpm_tcti=self.tpm_tcti,
                            runtime_policy=self.runtime_policy, state_dir=self.state_dir or default_state_dir,
                            tpm_timeout_s=self.tpm_timeout_seconds)


def scope_key(state: ScopeState) -> tuple[IntegrityState, frozenset[tuple[str, str | None]]]:
    """What makes a verdict change: the state and which checks failed on which files (not the wording)."""
    return state.state, frozenset((reason.code.value, reason.path) for reason in state.reasons)


def reason_text(state: ScopeState) -> list[str]:
    return [f"{reason.code.value}: {reason.message}" for reason in state.reasons]


class IntegrityCollector(Collector):
    """hostwarden_integrity_state{scope,sandbox} and hostwarden_attestation_failures_total{reason}."""

    def __init__(self, part: IntegrityPart) -> None:
        self._part = part

    def collect(self) -> Iterable[Metric]:
        states = GaugeMetricFamily(
            "hostwarden_integrity_state",
            "Integrity verdict: 1 TRUSTED, 0 UNTRUSTED, -1 UNKNOWN (scope host, or sandbox with its name)",
            labels=["scope", "sandbox"])
        for scope, state in sorted(self._part.states().items()):
            labels = [HOST_SCOPE, ""] if scope == HOST_SCOPE else ["sandbox", scope]
            states.add_metric(labels, STATE_VALUES[state.state])
        yield states
        failures = CounterMetricFamily("hostwarden_attestation_failures",
                                       "Evaluations that found this failed check (or why no verdict)",
                                       labels=["reason"])
        for code, count in sorted(self._part.failure_counts().items()):
            failures.add_metric([code], count)
        yield failures


class IntegrityPart(Observer):
    def __init__(self, daemon: Daemon, settings: IntegritySettings, attestor: Attestor, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._daemon = daemon
        self.settings = settings
        self.attestor = attestor
        self._clock = clock
        self._evaluation_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards _states and _failures (read by the metrics scrape)
        self._states: dict[str, ScopeState] = {}  # scope -> last verdict (host, and live sandboxes)
        self._failures: dict[str, int] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._exec_events = 0  # exec events recorded; compared at each evaluation
        self._sandbox_changes: deque[Callable[[], None]] = deque()  # applied at the start of an evaluation
        self._evaluated_inputs: tuple[int, int | None, int] | None = None
        self.last_report: IntegrityReport | None = None
        self.evaluated_at: float | None = None  # wall time of last_report
        self._evaluated_mono = 0.0
        self._thread = threading.Thread(target=self._run, name="integrity", daemon=True)
        self.quote_seconds = Histogram("hostwarden_tpm_quote_duration_seconds", "TPM quote round trip",
                                       buckets=QUOTE_BUCKETS, registry=daemon.metrics.registry)
        daemon.metrics.register(IntegrityCollector(self))

    # ---- part -------------------------------------------------------------------------------------------

    def start(self) -> None:
        monitor = next((part for part in self._daemon.parts if hasattr(part, "on_exec_digest")), None)
        if monitor is None:
            self.attestor.exec_events_unavailable = (
                "no bpf monitor reports what sandboxes execute ([bpf] enabled = false?): sandboxes cannot be judged")
        else:
            monitor.on_exec_digest = self.record_exec  # type: ignore[attr-defined]
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.tpm_timeout_seconds * 3 + 5)

    def sandbox_added(self, sandbox: Sandbox) -> None:
        self._sandbox_changes.append(functools.partial(self._track_sandbox, sandbox.name))
        self._wake.set()

    def sandbox_removed(self, sandbox: Sandbox) -> None:
        self._sandbox_changes.append(functools.partial(self.attestor.forget_sandbox, sandbox.name))
        with self._state_lock:
            self._states.pop(sandbox.name, None)  # its metric series goes with it

    def record_exec(self, sandbox: str, path: str, digest: str | None) -> None:
        """The monitor's exec sink (any thread): queue for the next evaluation and wake it."""
        try:
            self.attestor.record_exec(sandbox, path, digest)
        except ValueError as exc:
            log.debug("integrity: exec event dropped: %s", exc)
            return
        self._exec_events += 1
        self._wake.set()

    # ---- evaluation -------------------------------------------------------------------------------------

    def _inputs(self) -> tuple[int, int | None, int]:
        return self._exec_events, self.attestor.log_growth_marker(), len(self._sandbox_changes)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._evaluated_inputs is None or self._inputs() != self._evaluated_inputs \
                    or self._clock() - self._evaluated_mono >= self.settings.interval_seconds:
                try:
                    self.evaluate()
                except Exception:  # the next round must still come (a cgroup vanishing under an action, say)
                    log.exception("integrity evaluation failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()
            # Exec events come in bursts (a build execs hundreds of files, an agent hundreds of short calls):
            # let a burst settle, so a busy host costs a few evaluations a second, not one per exec.
            self._stopping.wait(min(EVALUATION_GAP_S, self.settings.poll_seconds))

    def evaluate(self) -> IntegrityReport:
        """One round: attest, then record every verdict that changed and act on sandboxes that turned bad."""
        with self._evaluation_lock:
            inputs = self._inputs()
            while self._sandbox_changes:
                self._sandbox_changes.popleft()()
            self._update_exec_source()
            report = self.attestor.evaluate()
            self._drain_quote_durations()
            self._record(report)
            self.last_report, self.evaluated_at = report, time.time()
            self._evaluated_mono, self._evaluated_inputs = self._clock(), inputs
            return report

    def fresh_report(self) -> IntegrityReport:
        """The last report if nothing changed since and it is recent, else a new evaluation."""
        report = self.last_report
        if report is None or self._inputs() != self._evaluated_inputs \
                or self._clock() - self._evaluated_mono > REPORT_MAX_AGE_S:
            report = self.evaluate()
        return report

    def _update_exec_source(self) -> None:
        monitor = next((part for part in self._daemon.parts if hasattr(part, "on_exec_digest")), None)
        if monitor is None:
            return
        statuses = getattr(monitor, "statuses", {})
        loaded = [name for name in _EXEC_PROGRAMS if name in statuses and statuses[name].loaded]
        self.attestor.exec_events_unavailable = None if loaded else (
            "the bpf monitor loaded no exec program (" + "; ".join(
                f"{name}: {statuses[name].detail}" for name in _EXEC_PROGRAMS if name in statuses)
            + "): what sandboxes execute is not seen, so they cannot be judged")

    def _drain_quote_durations(self) -> None:
        durations = self.attestor.quote_durations
        while durations:
            self.quote_seconds.observe(durations.popleft())

    def _record(self, report: IntegrityReport) -> None:
        live = set(self._daemon.warden.sandboxes)
        current = {HOST_SCOPE: report.host} | {name: state for name, state in report.sandboxes.items()
                                               if name in live}
        codes = {reason.code.value for state in current.values() for reason in state.reasons}
        with self._state_lock:
            previous = dict(self._states)
            self._states = current
            for code in codes:
                self._failures[code] = self._failures.get(code, 0) + 1
        for scope, state in current.items():
            before = previous.get(scope)
            if before is not None and scope_key(before) == scope_key(state):
                continue
            if before is not None or state.state is not IntegrityState.UNKNOWN:
                # Every scope starts out unknown: no rows for a host without IMA or TPM.
                self._report_change(scope, before, state)
            if scope != HOST_SCOPE and state.state is not IntegrityState.TRUSTED \
                    and (before is None or before.state is not state.state):
                self._act(scope, state)

    def _report_change(self, scope: str, before: ScopeState | None, state: ScopeState) -> None:
        was = before.state.value if before is not None else "none"
        first = state.reasons[0].message if state.reasons else "every measured file allowed, quote verified"
        sandbox = "" if scope == HOST_SCOPE else scope
        self._daemon.ledger.add_attestation(time.time(), HOST_SCOPE if scope == HOST_SCOPE else f"sandbox/{scope}",
                                            state.state.value, reason_text(state))
        self._daemon.bus.publish(
            "integrity_changed", f"{scope} integrity {was} -> {state.state.value}: {first}", sandbox=sandbox,
            attributes={"scope": HOST_SCOPE if scope == HOST_SCOPE else "sandbox", "state": state.state.value,
                        "previous": was, "reasons": ",".join(sorted({r.code.value for r in state.reasons}))})
        log.info("integrity of %s: %s -> %s %s", scope, was, state.state.value, reason_text(state)[:3])

    def _act(self, name: str, state: ScopeState) -> None:
        policy = self._daemon.policy.current()
        untrusted = state.state is IntegrityState.UNTRUSTED
        action = policy.attest.on_untrusted if untrusted else policy.attest.on_unknown
        if action is IntegrityAction.REPORT:
            return
        sandbox = self._daemon.warden.sandboxes.get(name)
        if sandbox is None:
            return
        why = "; ".join(reason_text(state)[:3]) or state.state.value
        reason = ACTION_REASON if untrusted else UNKNOWN_ACTION_REASON
        hint = (f"inspect with `hostwarden attest --sandbox {name}`; if the files are legitimate, add them to the "
                f"sandbox's runtime policy and reload (SIGHUP), then thaw or recreate the sandbox")
        calls: list[RunningCall | None] = [call for call in list(self._daemon.warden.calls.values())
                                           if call.sandbox == name]
        for call in [*calls, None]:
            path = call.path if call is not None else sandbox.path / AGENT_LEAF
            what = f"call {call.call_id} ({call.tool})" if call is not None else "agent"
            detail = f"{action.value} {what} of sandbox {name}: integrity {state.state.value}: {why}"
            if not policy.dry_run:
                try:
                    if action is IntegrityAction.FREEZE:
                        self._daemon.tree.freeze(path)
                    else:
                        self._daemon.tree.kill(path)
                except (CgroupError, OSError) as exc:
                    detail += f" (not carried out: {exc})"
            self._daemon.warden.record_action(call, action.value, reason, detail, hint, dry_run=policy.dry_run,
                                              sandbox=name)

    # ---- policy ----------------------------------------------------------------------------------------

    def _track_sandbox(self, name: str) -> None:
        self.attestor.add_sandbox(name)
        self._load_sandbox_policy(name)

    def _load_sandbox_policy(self, name: str) -> None:
        directory = self.settings.sandbox_policy_dir
        path = directory / f"{name}.json" if directory is not None else None
        if path is None or not path.exists():
            self.attestor.set_sandbox_policy(name, None)
            return
        try:
            self.attestor.set_sandbox_policy(name, RuntimePolicy.load(path))
        except RuntimePolicyError as exc:
            # Judged by the host policy alone (an extension only allows more): stricter, never laxer.
            self.attestor.set_sandbox_policy(name, None)
            log.error("integrity: runtime policy %s refused, sandbox %s is judged by the host policy: %s",
                      path, name, exc)
            self._daemon.bus.publish("integrity_policy_rejected", f"runtime policy {path} refused: {exc}",
                                     sandbox=name)

    def reload(self) -> None:
        """SIGHUP: re-read the host runtime policy and every sandbox's, then evaluate."""
        try:
            self.attestor.reload_policy()
        except RuntimePolicyError as exc:
            log.error("integrity: runtime policy reload refused, the policy in force stays: %s", exc)
            self._daemon.bus.publish("integrity_policy_rejected", f"runtime policy reload refused: {exc}")
        for name in list(self._daemon.warden.sandboxes):
            self._load_sandbox_policy(name)
        self._wake.set()
        self._evaluated_inputs = None  # re-judge at once

    # ---- API ----------------------------------------------------------------------------------------------

    def report_message(self, principal: Principal, sandbox: str) -> pb.IntegrityReport:
        report = self.fresh_report()
        assert self.evaluated_at is not None
        names = [sandbox] if sandbox else sorted(name for name in report.sandboxes
                                                 if name in self._daemon.warden.sandboxes
                                                 and (principal.is_admin or name == principal.sandbox))
        host = self._message(HOST_SCOPE, report.host)
        if not principal.is_admin:
            # The host's reasons may name files other sandboxes ran: a sandbox sees which checks failed only.
            del host.reasons[:]
            host.reasons.extend(json.dumps({"code": reason.code.value, "message": "details for the admin only"})
                                for reason in report.host.reasons)
        sandboxes = []
        for name in names:
            state = report.sandboxes.get(name)
            if state is None:  # created since that evaluation
                report = self.evaluate()
                state = report.sandboxes.get(name)
            if state is not None:
                sandboxes.append(self._message(name, state))
        return pb.IntegrityReport(host=host, sandboxes=sandboxes)

    def _message(self, scope: str, state: ScopeState) -> pb.IntegrityState:
        message = pb.IntegrityState(scope=scope, state=state.state.value,
                                    reasons=[json.dumps(reason.as_dict()) for reason in state.reasons],
                                    attribution=_ATTRIBUTION_NAMES[state.attribution])
        assert self.evaluated_at is not None
        message.evaluated_at.FromNanoseconds(int(self.evaluated_at * 1e9))
        return message

    def quote_message(self, principal: Principal, nonce: str, offset: int) -> pb.Quote:
        if not principal.is_admin:
            raise PermissionDenied("only the admin socket may get quotes: the IMA log lists what every sandbox ran")
        try:
            quote = self.attestor.quote(nonce, offset)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        except TpmUnavailable as exc:
            raise Unavailable(f"no TPM to quote with: {exc}") from exc
        except TpmError as exc:
            raise FailedPrecondition(f"the TPM refused the quote: {exc}") from exc
        except ImaLogError as exc:
            raise FailedPrecondition(f"no IMA measurement list to send with the quote: {exc}") from exc
        finally:
            self._drain_quote_durations()
        return pb.Quote(quote=quote.quote, hash_alg=quote.hash_alg, ak_public_pem=quote.ak_public_pem,
                        ima_measurement_list=quote.ima_measurement_list, ima_offset=quote.offset,
                        ima_entries=quote.entries)

    # ---- metrics ------------------------------------------------------------------------------------------

    def states(self) -> dict[str, ScopeState]:
        with self._state_lock:
            return dict(self._states)

    def failure_counts(self) -> dict[str, int]:
        with self._state_lock:
            return dict(self._failures)


def build_integrity(daemon: Daemon, tpm: QuoteSource | None = None) -> IntegrityPart | None:
    """The PART_BUILDERS entry: None when `[attest] enabled = false`; ConfigError for a bad [attest].
    `tpm` replaces tpm2-tools on `[attest] tpm_tcti` (unit tests)."""
    settings = IntegritySettings.from_mapping(daemon.config.attest)
    if not settings.enabled:
        for name in ("ima", "tpm"):
            capability = daemon.capabilities.get(name)
            if capability is not None and capability.available:
                capability.detail += "; not used: [attest] enabled = false"
        return None
    try:
        attestor = Attestor(settings.attest_config(daemon.config.daemon.state_dir), tpm)
    except RuntimePolicyError as exc:
        raise ConfigError(f"attest.runtime_policy: {exc}") from exc
    _claim_capabilities(daemon, settings)
    return IntegrityPart(daemon, settings, attestor)


def _claim_capabilities(daemon: Daemon, settings: IntegritySettings) -> None:
    """`ima` and `tpm` in use as configured: a configured list file or TCTI replaces the probed defaults."""
    ima, tpm = daemon.capabilities.get("ima"), daemon.capabilities.get("tpm")
    if ima is not None:
        if settings.ima_log != DEFAULT_ASCII_LOG:
            readable = os.access(settings.ima_log, os.R_OK)
            ima.available = readable
            ima.detail = f"measurement list at {settings.ima_log} ([attest] ima_log)" if readable \
                else f"[attest] ima_log {settings.ima_log} is not readable"
        ima.in_use = ima.available
    if tpm is not None:
        if settings.tpm_tcti != DEFAULT_TCTI:
            tpm.available, tpm.detail = True, f"TCTI {settings.tpm_tcti} ([attest] tpm_tcti)"
        tpm.in_use = tpm.available
