"""The policy in force: loaded from its file, replaced by SIGHUP or SetPolicy only after validation, and
applied to tool calls (policy Grant -> cgroup Limits). An invalid policy never replaces a good one."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from hostwarden.cgroups.limits import Limits
from hostwarden.errors import FailedPrecondition, InvalidArgument
from hostwarden.events import EventBus
from hostwarden.policy.resolve import Grant, Intent, resolve
from hostwarden.policy.schema import Policy, PolicyError, Priority, SandboxInfo, default_policy, parse_policy
from hostwarden.proto import warden_pb2 as pb

log = logging.getLogger(__name__)


def write_atomically(path: Path, text: str) -> None:
    """The whole text or the previous file, never half of it, even across a crash (temp file, fsync, rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def grant_limits(grant: Grant) -> Limits:
    return Limits(memory_high=grant.memory_high, memory_max=grant.memory_max, memory_low=grant.memory_low or None,
                  memory_oom_group=grant.memory_oom_group, cpu_weight=grant.cpu_weight,
                  cpu_max_quota_us=grant.cpu_quota_us, cpu_max_period_us=grant.cpu_period_us,
                  pids_max=grant.pids_max)


class PolicyRuntime:
    """`path` is the operator's file (/etc/hostwarden/policy.toml). A policy given by SetPolicy is kept in
    `saved` (in the state directory, since /etc is read-only to the daemon) and outlives restarts, until
    the operator's file is reloaded (SIGHUP) or is newer at start-up: then the file rules again."""

    def __init__(self, path: Path, bus: EventBus, saved: Path | None = None) -> None:
        self.path = path
        self.saved = saved
        self.bus = bus
        self._lock = threading.Lock()
        self.policy: Policy = default_policy()
        self.text = ""
        self.source = "built-in defaults"
        if self._saved_is_newest():
            assert saved is not None
            try:
                text = saved.read_text()
                self.policy, self.text, self.source = self._parse(text, str(saved)), text, self._saved_source()
                return
            except (OSError, PolicyError) as exc:  # written validated, so only a damaged file: say so, go on
                log.error("the policy kept from SetPolicy (%s) is unusable, %s: %s", saved,
                          "falling back to " + str(path) if path.exists() else "using the defaults", exc)
        if path.exists():
            text = path.read_text()
            self.policy = self._parse(text, str(path))  # a bad file at start-up is fatal
            self.text, self.source = text, str(path)

    def _saved_is_newest(self) -> bool:
        if self.saved is None or not self.saved.exists():
            return False
        return not self.path.exists() or self.saved.stat().st_mtime >= self.path.stat().st_mtime

    def _saved_source(self) -> str:
        return f"SetPolicy (kept in {self.saved})"

    @staticmethod
    def _parse(text: str, source: str) -> Policy:
        return parse_policy(text, source)

    def current(self) -> Policy:
        with self._lock:
            return self.policy

    def resolve(self, sandbox: object, tool: str, intent: Intent, peaks: Sequence[int]) -> tuple[Limits, Grant]:
        info = SandboxInfo(sandbox.name, sandbox.labels, Priority(sandbox.priority))  # type: ignore[attr-defined]
        grant = resolve(self.current(), info, tool, intent, list(reversed(peaks)))
        return grant_limits(grant), grant

    def _parse_or_reject(self, text: str, source: str) -> Policy:
        """The parsed policy; an invalid one is logged and published as policy_rejected, then raised."""
        try:
            return self._parse(text, source)
        except PolicyError as exc:
            log.error("policy from %s rejected, the running policy stays:\n%s", source, exc)
            self.bus.publish("policy_rejected", f"policy from {source} rejected ({len(exc.errors)} errors); the "
                             "running policy stays", attributes={"source": source, "errors": str(exc)[:2000]})
            raise

    def _install(self, policy: Policy, text: str, source: str) -> None:
        with self._lock:
            self.policy, self.text, self.source = policy, text, source
        self.bus.publish("policy_reloaded", f"policy loaded from {source}", attributes={"source": source})
        log.info("policy loaded from %s", source)

    def reload(self) -> bool:
        """SIGHUP: re-read the file. False (and the old policy stays) when it is missing or invalid."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            log.error("policy %s unreadable (%s); the running policy stays", self.path, exc.strerror)
            self.bus.publish("policy_rejected", f"policy {self.path} unreadable: {exc.strerror}")
            return False
        try:
            policy = self._parse_or_reject(text, str(self.path))
        except PolicyError:
            return False
        self._install(policy, text, str(self.path))
        if self.saved is not None and self.saved.exists():
            self.saved.unlink()
            log.info("the policy kept from SetPolicy (%s) is dropped: %s rules again", self.saved, self.path)
        return True

    def set(self, text: str) -> pb.PolicyDocument:
        """Validate, keep it where a restart finds it, then put it in force."""
        try:
            policy = self._parse_or_reject(text, "SetPolicy")
        except PolicyError as exc:
            raise InvalidArgument(f"policy rejected, the running policy stays: {exc}") from exc
        if self.saved is not None:
            try:
                write_atomically(self.saved, text)
            except OSError as exc:
                raise FailedPrecondition(f"cannot keep the policy in {self.saved} ({exc.strerror}); the running "
                                         "policy stays: free the state directory, then retry") from exc
        self._install(policy, text, self._saved_source() if self.saved is not None else "SetPolicy")
        return self.document()

    def validate(self, text: str) -> pb.ValidatePolicyResponse:
        try:
            self._parse(text, "ValidatePolicy")
        except PolicyError as exc:
            return pb.ValidatePolicyResponse(valid=False, errors=[
                pb.PolicyError(line=e.line, key=e.key, message=e.message) for e in exc.errors])
        return pb.ValidatePolicyResponse(valid=True)

    def document(self) -> pb.PolicyDocument:
        with self._lock:
            return pb.PolicyDocument(toml=self.text, effective_json=json.dumps(self.policy.to_effective_dict()),
                                     source=self.source)
