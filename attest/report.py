"""Plain result types of attestation: states, reasons, per-scope verdicts, and the Keylime-form quote."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class IntegrityState(enum.Enum):
    TRUSTED = "TRUSTED"
    UNTRUSTED = "UNTRUSTED"
    UNKNOWN = "UNKNOWN"


class ReasonCode(enum.Enum):
    """Bounded set: it labels the `hostwarden_attestation_failures_total{reason}` metric."""

    # runtime policy (per file)
    NOT_IN_POLICY = "not_in_policy"
    DIGEST_NOT_ALLOWED = "digest_not_allowed"
    SIGNATURE_INVALID = "signature_invalid"
    POLICY_VIOLATION = "policy_violation"  # any other keylime IMA validation event
    # the log itself
    MALFORMED_ENTRY = "malformed_entry"
    TEMPLATE_HASH_MISMATCH = "template_hash_mismatch"
    WRONG_PCR_INDEX = "wrong_pcr_index"
    IMA_VIOLATION = "ima_violation"  # ToMToU / open-writers entry (zeroed template hash)
    LOG_REWRITTEN = "log_rewritten"
    # the quote
    QUOTE_MALFORMED = "quote_malformed"
    QUOTE_SIGNATURE = "quote_signature"
    QUOTE_NONCE = "quote_nonce"
    PCR_SELECTION_MISMATCH = "pcr_selection_mismatch"
    PCR_DIGEST_MISMATCH = "pcr_digest_mismatch"
    QUOTE_REJECTED_BY_KEYLIME = "quote_rejected_by_keylime"
    LOG_AHEAD_OF_TPM = "log_ahead_of_tpm"  # entries after the point PCR 10 attests: never extended
    LOG_NOT_IN_TPM = "log_not_in_tpm"  # PCR 10 matches no point of the log: edited or truncated
    # why a verdict cannot be given (UNKNOWN)
    NO_TPM = "no_tpm"
    NO_IMA = "no_ima"
    NO_QUOTE_YET = "no_quote_yet"
    UNMEASURED_EXEC = "unmeasured_exec"
    NO_EXEC_EVENTS = "no_exec_events"  # nothing reports what a sandbox executed (no bpf monitor)


UNKNOWN_CODES = frozenset({ReasonCode.NO_TPM, ReasonCode.NO_IMA, ReasonCode.NO_QUOTE_YET,
                           ReasonCode.UNMEASURED_EXEC, ReasonCode.NO_EXEC_EVENTS})


@dataclass(frozen=True)
class Reason:
    code: ReasonCode
    message: str
    path: str | None = None
    expected: tuple[str, ...] = ()
    actual: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code.value, "message": self.message, "path": self.path,
                "expected": list(self.expected), "actual": self.actual}


class Attribution(enum.Enum):
    DIGEST = "digest"  # joined on (path, digest) from BPF LSM exec-digest events
    PATH = "path"  # some exec events had no digest: joined on path only
    NONE = "none"  # the host: whatever no sandbox caused


@dataclass(frozen=True)
class ScopeState:
    state: IntegrityState
    reasons: tuple[Reason, ...] = ()
    attribution: Attribution = Attribution.NONE
    entries: int = 0  # IMA entries judged for this scope

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state.value, "reasons": [reason.as_dict() for reason in self.reasons],
                "attribution": self.attribution.value, "entries": self.entries}


@dataclass(frozen=True)
class IntegrityReport:
    host: ScopeState
    sandboxes: dict[str, ScopeState] = field(default_factory=dict)
    log_entries: int = 0
    quote_verified: bool = False
    pcr10: str | None = None
    quote_seconds: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host.as_dict(),
                "sandboxes": {name: scope.as_dict() for name, scope in sorted(self.sandboxes.items())},
                "log_entries": self.log_entries, "quote_verified": self.quote_verified, "pcr10": self.pcr10,
                "quote_seconds": self.quote_seconds}


@dataclass(frozen=True)
class KeylimeQuote:
    """What a Keylime agent returns for GET /quotes/integrity, so a Keylime verifier can check the host."""

    quote: str  # "r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64 PCR blob>"
    hash_alg: str
    enc_alg: str
    sign_alg: str
    ak_public_pem: str
    ima_measurement_list: str  # ascii lines from `offset` on, each ending in "\n"
    offset: int
    entries: int  # total entries in the log when quoted
    seconds: float  # how long the TPM took to quote
