"""Real IMA measuring into the guest's swtpm (/dev/tpmrm0): per-sandbox verdicts from real measurements.

The exec events are produced by the test itself (the sha256 of each file it executes, joined on the path IMA
recorded), standing in for the BPF LSM exec-digest events of hostwarden.bpf.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from hostwarden.attest import AttestConfig, Attestor, IntegrityState, ReasonCode, RuntimePolicy
from hostwarden.attest.imalog import DEFAULT_ASCII_LOG, ImaEntry, ImaLogReader
from tests.support import require


def _policy(entries: list[ImaEntry], skip_paths: set[str]) -> dict:
    digests: dict[str, list[str]] = {}
    buffers: dict[str, list[str]] = {}
    for entry in entries:
        if entry.path in skip_paths:
            continue
        section = buffers if entry.template == "ima-buf" else digests
        known = section.setdefault(entry.path, [])
        if entry.digest_hex not in known:
            known.append(entry.digest_hex)
    return {"meta": {"version": 1, "generator": 0}, "release": 0, "digests": digests, "excludes": [],
            "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
            "ima-buf": buffers, "verification-keys": ""}


def _measured_path(suffix: str, digest: str) -> str:
    """The path IMA recorded for the file we ran (a chroot prefixes it; switch_root does not)."""
    for entry in ImaLogReader(DEFAULT_ASCII_LOG).read_new():
        if isinstance(entry, ImaEntry) and entry.path.endswith(suffix) and entry.digest_hex == digest:
            return entry.path
    raise AssertionError(f"IMA did not measure {suffix} ({digest})")


def test_sandboxes_are_judged_by_what_they_ran(tmp_path_factory):
    require(os.access(DEFAULT_ASCII_LOG, os.R_OK), "IMA measurement list (securityfs, ima_policy=tcb)")
    require(os.path.exists("/dev/tpmrm0"), "a TPM at /dev/tpmrm0")
    # Not on tmpfs: the tcb IMA policy does not measure files there.
    workdir = Path("/var/tmp") / f"hostwarden-attest-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        allowed, forbidden = workdir / "allowed-tool", workdir / "forbidden-tool"
        shutil.copy("/usr/bin/true", allowed)
        shutil.copy("/usr/bin/echo", forbidden)
        digests = {}
        for tool in (allowed, forbidden):
            subprocess.run([str(tool)], check=True, stdout=subprocess.DEVNULL)
            digests[tool] = hashlib.sha256(tool.read_bytes()).hexdigest()
        measured = {tool: _measured_path(str(tool), digests[tool]) for tool in digests}

        state = tmp_path_factory.mktemp("state")
        entries = [entry for entry in ImaLogReader(DEFAULT_ASCII_LOG).read_new() if isinstance(entry, ImaEntry)]
        host_policy = state / "host.json"
        host_policy.write_text(json.dumps(_policy(entries, set(measured.values()))))
        extension = state / "good.json"
        allowed_entry = next(entry for entry in entries if entry.path == measured[allowed])
        extension.write_text(json.dumps(_policy([allowed_entry], set())))

        attestor = Attestor(AttestConfig(runtime_policy=host_policy, state_dir=state))
        attestor.set_sandbox_policy("good", RuntimePolicy.load(extension))
        attestor.record_exec("good", measured[allowed], digests[allowed])
        attestor.record_exec("bad", measured[forbidden], digests[forbidden])
        attestor.record_exec("bystander", measured[allowed], None)  # path-only event
        report = attestor.evaluate()

        assert report.quote_verified, report.host.reasons
        assert report.sandboxes["good"].state is IntegrityState.TRUSTED, report.sandboxes["good"].reasons
        bad = report.sandboxes["bad"]
        assert bad.state is IntegrityState.UNTRUSTED
        assert [(reason.code, reason.path) for reason in bad.reasons] == [
            (ReasonCode.NOT_IN_POLICY, measured[forbidden])]
        # The bystander ran the allowed tool without a policy that lists it: its own verdict, by path only.
        assert report.sandboxes["bystander"].state is IntegrityState.UNTRUSTED
        assert report.sandboxes["bystander"].attribution.value == "path"
        # Entries measured after the snapshot (e.g. files python read as root) are the host's own business.
        late_host_paths = {reason.path for reason in report.host.reasons}
        assert measured[allowed] not in late_host_paths and measured[forbidden] not in late_host_paths
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
