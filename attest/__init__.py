"""IMA measurement list, TPM quotes and per-sandbox integrity verdicts.

The daemon drives `Attestor` (see attestor.py for the threading model); everything else is plumbing.
"""

from hostwarden.attest.attestor import AttestConfig, Attestor
from hostwarden.attest.imalog import ImaLogError, LogFormat
from hostwarden.attest.report import (
    Attribution,
    IntegrityReport,
    IntegrityState,
    KeylimeQuote,
    Reason,
    ReasonCode,
    ScopeState,
)
from hostwarden.attest.runtime_policy import RuntimePolicy, RuntimePolicyError
from hostwarden.attest.tpm import TpmError, TpmUnavailable

__all__ = [
    "AttestConfig",
    "Attestor",
    "Attribution",
    "ImaLogError",
    "IntegrityReport",
    "IntegrityState",
    "KeylimeQuote",
    "LogFormat",
    "Reason",
    "ReasonCode",
    "RuntimePolicy",
    "RuntimePolicyError",
    "ScopeState",
    "TpmError",
    "TpmUnavailable",
]
