"""Keylime runtime policies (JSON) and the per-entry check through keylime's IMA validators."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostwarden.attest.imalog import ImaEntry
from hostwarden.attest.keylime_compat import keylime
from hostwarden.attest.report import Reason, ReasonCode


class RuntimePolicyError(ValueError):
    """A runtime policy that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RuntimePolicy:
    """A validated keylime runtime policy (the dict keylime's IMA module takes) and where it came from."""

    document: dict[str, Any]
    source: str

    @classmethod
    def empty(cls) -> RuntimePolicy:
        return cls(keylime().ima.empty_policy(), "<empty>")

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> RuntimePolicy:
        ima = keylime().ima
        try:
            if not isinstance(json.loads(text), dict):  # keylime's checks assume an object and crash otherwise
                raise RuntimePolicyError(f"runtime policy {source} must be a JSON object (keylime's format)")
            # Checks the JSON and the exclude regexes; signed (DSSE) policies are unwrapped, not verified here.
            ima.verify_runtime_policy(text if isinstance(text, bytes) else text.encode(), verify_sig=False)
            document = ima.deserialize_runtime_policy(text if isinstance(text, str) else text.decode())
            if document is None:
                raise RuntimePolicyError(f"runtime policy {source} is empty")
            ima.validate_runtime_policy(document)
        except ima.ImaValidationError as error:
            raise RuntimePolicyError(f"runtime policy {source} is not a valid keylime runtime policy: "
                                     f"{error.message}") from error
        except (ValueError, UnicodeDecodeError) as error:
            raise RuntimePolicyError(f"runtime policy {source} is not valid JSON: {error}") from error
        return cls(document, source)

    @classmethod
    def load(cls, path: Path | str) -> RuntimePolicy:
        try:
            text = Path(path).read_bytes()
        except OSError as error:
            raise RuntimePolicyError(f"cannot read runtime policy {path}: {error.strerror}; "
                                     "check [attest] runtime_policy") from error
        return cls.from_json(text, str(path))

    @property
    def log_hash_alg(self) -> str:
        return str(self.document["ima"]["log_hash_alg"])

    def extended_by(self, extension: RuntimePolicy) -> RuntimePolicy:
        """This policy plus what `extension` allows (digests, excludes, keyrings, ima-buf, keys)."""
        if extension.log_hash_alg != self.log_hash_alg:
            raise RuntimePolicyError(
                f"runtime policy {extension.source} uses log_hash_alg {extension.log_hash_alg} but the host "
                f"policy {self.source} uses {self.log_hash_alg}; a sandbox policy must use the host's")
        merged = copy.deepcopy(self.document)
        for section in ("digests", "keyrings", "ima-buf"):
            for name, digests in extension.document[section].items():
                known = merged[section].setdefault(name, [])
                known.extend(digest for digest in digests if digest not in known)
        merged["excludes"].extend(rule for rule in extension.document["excludes"]
                                  if rule not in merged["excludes"])
        merged["ima"]["ignored_keyrings"].extend(
            name for name in extension.document["ima"]["ignored_keyrings"]
            if name not in merged["ima"]["ignored_keyrings"])
        merged["verification-keys"] = _merged_keys(self.document["verification-keys"],
                                                   extension.document["verification-keys"])
        return RuntimePolicy(merged, f"{self.source} + {extension.source}")


def _merged_keys(base: str, extra: str) -> str:
    """Union of two `verification-keys` strings (keylime's ImaKeyring JSON)."""
    keyring = keylime().file_signatures.ImaKeyring
    base_ring, extra_ring = keyring.from_string(base), keyring.from_string(extra)
    if base_ring is None or extra_ring is None:
        return extra if base_ring is None else base
    for keyid, pubkey in extra_ring.ringv2.items():
        base_ring.add_pubkey(pubkey, keyid)
    return str(base_ring.to_string())


class PolicyChecker:
    """Checks single IMA entries against one runtime policy with keylime's own IMA validators.

    The validator table is built the way keylime's `process_measurement_list` builds it, so a verdict here
    is keylime's verdict for that entry; the loop, hashing and PCR logic around it are hostwarden's.
    """

    def __init__(self, policy: RuntimePolicy | None) -> None:
        """`policy` None checks nothing (keylime's behaviour without a runtime policy). A policy is built
        into keylime's validators at once, so a bad one is refused here; without one, keylime (about 13 MB
        of modules) is imported only when the first entry is checked: hosts with no IMA never pay for it."""
        self.policy = policy
        self._built: tuple[Any, dict[str, Callable[[str], Any]], type[Exception]] | None = None
        if policy is not None:
            self._build()

    def _build(self) -> tuple[Any, dict[str, Callable[[str], Any]], type[Exception]]:
        if self._built is not None:
            return self._built
        modules = keylime()
        ima, ast = modules.ima, modules.ast
        policy = self.policy
        document = copy.deepcopy(policy.document) if policy is not None else None
        exclude_regex, error = modules.validators.valid_exclude_list(document["excludes"] if document else None)
        if error:
            raise RuntimePolicyError(f"runtime policy {policy.source if policy else ''}: {error}")
        keyrings = modules.file_signatures.ImaKeyrings()
        if document is not None:
            keyrings.set_tenant_keyring(modules.file_signatures.ImaKeyring.from_string(document["verification-keys"]))
        validator = ast.Validator({
            ast.ImaSig: functools.partial(ima._validate_ima_sig, exclude_regex, keyrings, document),
            ast.ImaNg: functools.partial(ima._validate_ima_ng, exclude_regex, document),
            ast.ImaBuf: functools.partial(ima._validate_ima_buf, exclude_regex, document, keyrings, None),
        })
        modes: dict[str, Callable[[str], Any]] = {"ima-ng": ast.ImaNg, "ima-sig": ast.ImaSig, "ima-buf": ast.ImaBuf}
        self._built = (validator, modes, ast.ParserError)
        return self._built

    @property
    def log_hash_alg(self) -> str:
        return self.policy.log_hash_alg if self.policy is not None else "sha1"

    def check(self, entry: ImaEntry) -> list[Reason]:
        validator, modes, parser_error = self._build()
        fields = entry.line.split(" ", 3)[3]
        try:
            mode = modes[entry.template](fields)
        except parser_error as error:
            return [Reason(ReasonCode.MALFORMED_ENTRY, f"keylime cannot parse entry {entry.index}: {error}",
                           path=entry.path)]
        failure = mode.is_data_valid(validator)
        if not failure:
            return []
        return [_reason_from_event(entry, event.event_id, json.loads(event.context)) for event in failure.events]


def _reason_from_event(entry: ImaEntry, event_id: str, context: dict[str, Any]) -> Reason:
    kind = event_id.rsplit(".", 1)[-1]
    actual = f"{entry.digest_alg}:{entry.digest_hex}"
    if kind == "not_in_allowlist":
        return Reason(ReasonCode.NOT_IN_POLICY, f"{entry.path} ({actual}) is not in the runtime policy",
                      path=entry.path, actual=actual)
    if kind == "runtime_policy_hash":
        expected = tuple(context.get("expected", ()))
        return Reason(ReasonCode.DIGEST_NOT_ALLOWED,
                      f"{entry.path} has digest {entry.digest_hex}; the runtime policy allows "
                      f"{', '.join(expected)}", path=entry.path, expected=expected, actual=actual)
    if kind == "invalid_signature":
        return Reason(ReasonCode.SIGNATURE_INVALID, f"the IMA signature of {entry.path} does not verify",
                      path=entry.path, actual=actual)
    return Reason(ReasonCode.POLICY_VIOLATION,
                  f"{entry.path}: keylime {event_id}: {context.get('message', context)}",
                  path=entry.path, actual=actual)
