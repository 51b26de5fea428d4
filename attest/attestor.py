"""Per-sandbox integrity: the IMA log, exec events that tie its entries to sandboxes, runtime policies, quotes.

Threading: `record_exec` may be called from any thread at any rate (it only queues). `evaluate`, `quote`,
`reload_policy` and the sandbox-policy methods are serialised on one lock; `evaluate` may block for up to
three TPM round trips (each bounded by the TPM timeout), so run it off the event loop.
"""

from __future__ import annotations

import gc
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hostwarden.attest.imalog import DEFAULT_ASCII_LOG, ImaLogError, ImaLogReader, LogFormat
from hostwarden.attest.measurements import MeasurementLog
from hostwarden.attest.quote import QuoteVerificationError, keylime_quote_string, verify_quote
from hostwarden.attest.report import (
    UNKNOWN_CODES,
    Attribution,
    IntegrityReport,
    IntegrityState,
    KeylimeQuote,
    Reason,
    ReasonCode,
    ScopeState,
)
from hostwarden.attest.runtime_policy import PolicyChecker, RuntimePolicy
from hostwarden.attest.tpm import (
    DEFAULT_TCTI,
    QUOTE_HASH_ALG,
    Tpm2Tools,
    TpmError,
    TpmQuote,
    TpmUnavailable,
    check_nonce,
)

QUOTE_ATTEMPTS = 3  # IMA appends to the list before extending the PCR: a quote can trail the list briefly
_HEX_DIGEST = re.compile(r"^(?:[0-9a-f]{2}){16,64}$")


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Entries hold no reference cycles, but creating 10^5 of them that all stay alive makes the cyclic
    collector traverse the growing heap again and again (measured: about a third of a full read)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class QuoteSource(Protocol):
    """What the attestor needs from a TPM (`Tpm2Tools`, or a fake in unit tests)."""

    def unavailable_reason(self) -> str | None: ...
    def ensure_ak(self) -> str: ...
    def tpm_ak_public(self) -> str | None: ...
    def quote(self, nonce: str) -> TpmQuote: ...


@dataclass(frozen=True)
class AttestConfig:
    """The `[attest]` section of the daemon's configuration."""

    ima_log: Path = DEFAULT_ASCII_LOG
    ima_log_format: LogFormat | None = None  # None: from the file name ("binary" in it means binary)
    tpm_tcti: str = DEFAULT_TCTI
    runtime_policy: Path | None = None
    state_dir: Path = Path("/var/lib/hostwarden")
    tpm_timeout_s: float = 10.0


@dataclass
class _Sandbox:
    checker: PolicyChecker
    matched: set[int] = field(default_factory=set)
    verdicts: dict[int, list[Reason]] = field(default_factory=dict)  # only entries with policy failures
    unmatched: list[tuple[str, str | None]] = field(default_factory=list)
    by_path_only: bool = False


@dataclass(frozen=True)
class _QuoteOutcome:
    verified: bool
    reason: Reason | None = None  # why not verified (UNTRUSTED or UNKNOWN by its code)
    pcr10: str | None = None
    seconds: float | None = None


class Attestor:
    def __init__(self, config: AttestConfig, tpm: QuoteSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.tpm: QuoteSource = tpm or Tpm2Tools(config.tpm_tcti, config.state_dir, config.tpm_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._exec_events: deque[tuple[str, str, str | None]] = deque()
        self._host_policy = RuntimePolicy.load(config.runtime_policy) if config.runtime_policy else None
        self._host_checker = PolicyChecker(self._host_policy)
        self._sandbox_extensions: dict[str, RuntimePolicy] = {}
        self._reset_log()
        self._ak_pem: str | None = None
        self.last_report: IntegrityReport | None = None
        # Why no exec events can arrive (no bpf monitor): sandboxes are then UNKNOWN, never TRUSTED.
        self.exec_events_unavailable: str | None = None
        # TPM quote durations in seconds, newest last; the daemon drains them into its histogram.
        self.quote_durations: deque[float] = deque(maxlen=256)

    def _reset_log(self) -> None:
        self._reader = ImaLogReader(self.config.ima_log, self.config.ima_log_format)
        self._log = MeasurementLog(self._host_checker.log_hash_alg)
        self._host_failures: dict[int, list[Reason]] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._claims: dict[int, int] = {}  # entry -> number of sandboxes (present or deleted) that caused it
        self._log_fault: Reason | None = None

    # ---- inputs ------------------------------------------------------------------------------------------

    def record_exec(self, sandbox: str, path: str, digest_hex: str | None) -> None:
        """A process in `sandbox` executed `path` (absolute, as IMA records it) with IMA digest `digest_hex`
        (from BPF LSM `bpf_ima_file_hash`), or None when only the path is known."""
        if not sandbox or not path.startswith("/"):
            raise ValueError(f"exec event needs a sandbox name and an absolute path, got {sandbox!r}, {path!r}")
        if digest_hex is not None:
            digest_hex = digest_hex.lower()
            if not _HEX_DIGEST.match(digest_hex):
                raise ValueError(f"exec digest for {path} must be 32 to 128 hex characters, got {digest_hex!r}")
        self._exec_events.append((sandbox, path, digest_hex))

    def add_sandbox(self, sandbox: str) -> None:
        """Report `sandbox` from now on, even before it runs anything."""
        with self._lock:
            if sandbox not in self._sandboxes:
                self._sandboxes[sandbox] = _Sandbox(self._checker_for(sandbox))

    def set_sandbox_policy(self, sandbox: str, extension: RuntimePolicy | None) -> None:
        """Judge `sandbox` by the host policy extended with `extension` (None: the host policy alone)."""
        with self._lock:
            if extension is None:
                self._sandbox_extensions.pop(sandbox, None)
            else:
                self._sandbox_extensions[sandbox] = extension
            state = self._sandboxes.get(sandbox)
            if state is not None:
                state.checker = self._checker_for(sandbox)
                self._recheck_sandbox(state)

    def forget_sandbox(self, sandbox: str) -> None:
        """The sandbox was deleted: drop its state; what it ran still does not count against the host."""
        with self._lock:
            self._sandboxes.pop(sandbox, None)
            self._sandbox_extensions.pop(sandbox, None)

    def reload_policy(self) -> None:
        """Re-read `[attest] runtime_policy` (SIGHUP). An invalid file raises RuntimePolicyError and the
        policy in force stays."""
        policy = RuntimePolicy.load(self.config.runtime_policy) if self.config.runtime_policy else None
        host_checker = PolicyChecker(policy)
        with self._lock:
            checkers = {name: _sandbox_checker(policy, host_checker, extension)
                        for name, extension in self._sandbox_extensions.items()}
            self._host_policy = policy
            self._host_checker = host_checker
            if self._host_checker.log_hash_alg != self._log.template_hash_alg:
                self._reset_log()  # template hashes are checked with the policy's algorithm: start over
                return
            self._host_failures = {}
            with _cyclic_gc_paused():
                for index in range(len(self._log)):
                    self._check_host_entry(index)
            for name, state in self._sandboxes.items():
                state.checker = checkers.get(name) or self._host_checker
                self._recheck_sandbox(state)

    def log_growth_marker(self) -> int | None:
        """Changes when IMA appends entries; cheap (no read of the list). None if it cannot be read."""
        return self._reader.growth_marker()

    # ---- evaluation --------------------------------------------------------------------------------------

    def evaluate(self, nonce: str | None = None) -> IntegrityReport:
        """Read new IMA entries, quote the TPM, attribute, and judge the host and every known sandbox."""
        with self._lock:
            no_ima = self._absorb_new_entries()
            outcome = self._verify_with_quote(nonce or secrets.token_hex(10)) if no_ima is None \
                else _QuoteOutcome(False, no_ima)
            self._attribute_exec_events()
            report = self._report(outcome)
            self.last_report = report
            return report

    def quote(self, nonce: str, ima_offset: int = 0) -> KeylimeQuote:
        """A quote and the IMA entries from `ima_offset` on, in the form a Keylime verifier takes.

        Raises ValueError (bad nonce or offset), TpmUnavailable / TpmError, ImaLogError."""
        check_nonce(nonce)
        if ima_offset < 0:
            raise ValueError(f"ima_offset must not be negative, got {ima_offset}")
        unavailable = self.tpm.unavailable_reason()
        if unavailable is not None:
            raise TpmUnavailable(unavailable)
        with self._lock:
            ak_pem = self._ak()
            tpm_quote = self.tpm.quote(nonce)
            self.quote_durations.append(tpm_quote.seconds)
            # Read after quoting: the list may run ahead of the PCR (keylime allows that), never behind.
            self._absorb_new_entries()
            total = len(self._log)
            if not 0 <= ima_offset <= total:
                raise ValueError(f"ima_offset {ima_offset} is outside the IMA log (0..{total} entries)")
            lines = self._log.lines_from(ima_offset)
            return KeylimeQuote(keylime_quote_string(tpm_quote), QUOTE_HASH_ALG, "rsa", "rsassa", ak_pem,
                                "".join(line + "\n" for line in lines), ima_offset, total, tpm_quote.seconds)

    # ---- internals ---------------------------------------------------------------------------------------

    def _checker_for(self, sandbox: str) -> PolicyChecker:
        return _sandbox_checker(self._host_policy, self._host_checker, self._sandbox_extensions.get(sandbox))

    def _ak(self) -> str:
        if self._ak_pem is None:
            self._ak_pem = self.tpm.ensure_ak()
        return self._ak_pem

    def _absorb_new_entries(self) -> Reason | None:
        """Read what IMA appended; return a reason when there is no usable log."""
        if self._log_fault is not None:
            return self._log_fault
        with _cyclic_gc_paused():
            try:
                new = self._reader.read_new()
            except ImaLogError as error:
                if not self._reader.available() and self._reader.entries_read == 0:
                    return Reason(ReasonCode.NO_IMA, f"no IMA measurement list: {error}")
                self._log_fault = Reason(ReasonCode.LOG_REWRITTEN, str(error))
                return self._log_fault
            for index in self._log.absorb(new):
                self._check_host_entry(index)
        return None

    def _check_host_entry(self, index: int) -> None:
        entry = self._log.entries[index]
        if entry is None or index in self._log.problems:
            return
        failures = self._host_checker.check(entry)
        if failures:
            self._host_failures[index] = failures

    def _verify_with_quote(self, nonce: str) -> _QuoteOutcome:
        unavailable = self.tpm.unavailable_reason()
        if unavailable is not None:
            return _QuoteOutcome(False, Reason(ReasonCode.NO_TPM, unavailable))
        try:
            ak_pem = self._ak()
            for attempt in range(QUOTE_ATTEMPTS):
                tpm_quote = self.tpm.quote(nonce)
                self.quote_durations.append(tpm_quote.seconds)
                self._absorb_new_entries()
                pcr10 = verify_quote(ak_pem, nonce, tpm_quote)
                if pcr10 == self._log.aggregate:
                    self._log.mark_verified()
                    return _QuoteOutcome(True, None, pcr10.hex(), tpm_quote.seconds)
                if attempt + 1 < QUOTE_ATTEMPTS:
                    time.sleep(0.01 * (attempt + 1))
            return _QuoteOutcome(False, self._pcr_mismatch(pcr10), pcr10.hex(), tpm_quote.seconds)
        except (TpmUnavailable, TpmError) as error:
            self._ak_pem = None  # a TPM that comes back may have been reset: read its AK again
            return _QuoteOutcome(False, Reason(ReasonCode.NO_TPM, str(error)))
        except ValueError as error:  # a nonce the TPM cannot carry
            return _QuoteOutcome(False, Reason(ReasonCode.NO_QUOTE_YET, str(error)))
        except QuoteVerificationError as error:
            message = error.message
            if error.code is ReasonCode.QUOTE_SIGNATURE:
                message += self._ak_mismatch_hint()
            return _QuoteOutcome(False, Reason(error.code, message))

    def _ak_mismatch_hint(self) -> str:
        try:
            tpm_pem = self.tpm.tpm_ak_public()
        except (TpmUnavailable, TpmError):
            return ""
        if tpm_pem is not None and tpm_pem.strip() != (self._ak_pem or "").strip():
            return ("; the TPM's key at the AK handle differs from the trusted AK in the state directory "
                    "(TPM cleared or replaced? remove ak.pem there to enroll the new key)")
        return ""

    def _pcr_mismatch(self, pcr10: bytes) -> Reason:
        total = len(self._log)
        point = self._log.point_matching(pcr10)
        if point is not None:
            first = self._log.entries[point]
            named = f" ({first.path})" if first is not None else ""
            return Reason(ReasonCode.LOG_AHEAD_OF_TPM,
                          f"PCR 10 equals the log's aggregate after {point} of its {total} entries: the "
                          f"{total - point} entries from entry {point}{named} on were never extended into the "
                          "TPM", expected=(self._log.aggregate.hex(),), actual=pcr10.hex())
        return Reason(ReasonCode.LOG_NOT_IN_TPM,
                      f"PCR 10 matches no point of the {total}-entry IMA log: entries were edited, removed or "
                      "the log is truncated", expected=(self._log.aggregate.hex(),), actual=pcr10.hex())

    def _attribute_exec_events(self) -> None:
        while self._exec_events:
            sandbox, path, digest = self._exec_events.popleft()
            state = self._sandboxes.get(sandbox)
            if state is None:
                state = self._sandboxes[sandbox] = _Sandbox(self._checker_for(sandbox))
            state.unmatched.append((path, digest))
        for state in self._sandboxes.values():
            if state.unmatched:
                still = [event for event in state.unmatched if not self._match(state, *event)]
                state.unmatched = still

    def _match(self, state: _Sandbox, path: str, digest: str | None) -> bool:
        if digest is None:
            index = self._log.latest_by_path.get(path)
            state.by_path_only = True
        else:
            index = self._log.by_path_digest.get((path, digest))
        if index is None:
            return False
        if index not in state.matched:
            state.matched.add(index)
            self._claims[index] = self._claims.get(index, 0) + 1
            self._check_sandbox_entry(state, index)
        return True

    def _check_sandbox_entry(self, state: _Sandbox, index: int) -> None:
        entry = self._log.entries[index]
        if entry is None or index in self._log.problems:
            return
        failures = self._host_failures.get(index, []) if state.checker is self._host_checker \
            else state.checker.check(entry)
        if failures:
            state.verdicts[index] = failures
        else:
            state.verdicts.pop(index, None)

    def _recheck_sandbox(self, state: _Sandbox) -> None:
        state.verdicts = {}
        for index in state.matched:
            self._check_sandbox_entry(state, index)

    def _report(self, outcome: _QuoteOutcome) -> IntegrityReport:
        host_reasons = [reason for index in sorted(self._host_failures.keys() | self._log.problems.keys())
                        if index not in self._claims
                        for reason in self._host_failures.get(index, []) + self._log.problems.get(index, [])]
        host = _scope_state(outcome, host_reasons, [], Attribution.NONE,
                            len(self._log) - len(self._claims))
        sandboxes = {}
        for name, state in self._sandboxes.items():
            reasons = [reason for index in sorted(state.matched)
                       for reason in state.verdicts.get(index, []) + self._log.problems.get(index, [])]
            unknown = [Reason(ReasonCode.UNMEASURED_EXEC,
                              f"exec of {path}" + (f" (digest {digest})" if digest else "") +
                              " has no IMA log entry: IMA did not measure it, so it cannot be checked",
                              path=path, actual=digest) for path, digest in state.unmatched]
            if self.exec_events_unavailable is not None:
                unknown.append(Reason(ReasonCode.NO_EXEC_EVENTS, self.exec_events_unavailable))
            attribution = Attribution.PATH if state.by_path_only else Attribution.DIGEST
            sandboxes[name] = _scope_state(outcome, reasons, unknown, attribution, len(state.matched))
        return IntegrityReport(host, sandboxes, len(self._log), outcome.verified, outcome.pcr10,
                               outcome.seconds)


def _sandbox_checker(host_policy: RuntimePolicy | None, host_checker: PolicyChecker,
                     extension: RuntimePolicy | None) -> PolicyChecker:
    if extension is None:
        return host_checker  # shared, so the host's per-entry verdicts are reused
    return PolicyChecker((host_policy or RuntimePolicy.empty()).extended_by(extension))


def _scope_state(outcome: _QuoteOutcome, failures: list[Reason], unknowns: list[Reason],
                 attribution: Attribution, entries: int) -> ScopeState:
    """UNTRUSTED on any failure (the quote's or the scope's own), else UNKNOWN on anything unverifiable."""
    reasons = list(failures)
    if outcome.reason is not None and outcome.reason.code not in UNKNOWN_CODES:
        reasons.insert(0, outcome.reason)
    if reasons:
        return ScopeState(IntegrityState.UNTRUSTED, tuple(reasons), attribution, entries)
    unknowns = ([outcome.reason] if outcome.reason is not None else []) + unknowns
    if unknowns or not outcome.verified:
        return ScopeState(IntegrityState.UNKNOWN, tuple(unknowns) or (
            Reason(ReasonCode.NO_QUOTE_YET, "no verified quote yet"),), attribution, entries)
    return ScopeState(IntegrityState.TRUSTED, (), attribution, entries)
