"""Verdicts on whole logs equal keylime's process_measurement_list (where keylime is not knowingly lax)."""

from __future__ import annotations

import pytest

from hostwarden.attest import AttestConfig, Attestor, IntegrityState, RuntimePolicy
from hostwarden.attest.keylime_compat import keylime
from tests.unit.attest.synthetic import SoftwareTpm, SyntheticEntry, SyntheticLog, entry_for, write_policy


def _allowed(count: int) -> list[SyntheticEntry]:
    templates = ("ima-ng", "ima-sig", "ima-ng", "ima-buf")
    return [entry_for(f"/usr/lib/x/{index}.so", template=templates[index % 4]) for index in range(count)]


def _case(name: str) -> tuple[list[str], list[SyntheticEntry], SyntheticLog]:
    """(log lines, policy entries, what the TPM saw) for each differential case."""
    entries = _allowed(40)
    seen = SyntheticLog(list(entries))
    lines = [entry.ascii() for entry in entries]
    policy = list(entries)
    if name == "not_in_policy":
        policy = entries[1:]
    elif name == "digest_changed":
        policy = [*entries[:5], entry_for(entries[5].path, b"other"), *entries[6:]]
    elif name == "excluded":
        policy = entries[1:]
    elif name == "template_hash_edited":
        lines[7] = lines[7].replace(lines[7].split()[1], "00" * 19 + "01")
    elif name == "digest_edited":
        forged = SyntheticEntry(entries[3].path, b"\x07" * 32, entries[3].template, entries[3].extra)
        lines[3] = forged.ascii()
    elif name == "malformed_line":
        lines.insert(10, "10 not-a-line")
    elif name == "wrong_pcr":
        wrong = SyntheticEntry(entries[2].path, entries[2].digest, entries[2].template, entries[2].extra, pcr=11)
        lines[2] = wrong.ascii()
        seen.entries[2] = wrong
    elif name == "violation":
        violated = SyntheticEntry(entries[4].path, entries[4].digest, entries[4].template, entries[4].extra,
                                  violation=True)
        lines[4] = violated.ascii()
        seen.entries[4] = violated
    elif name == "truncated":
        lines = lines[:-3]
    return lines, policy, seen


CASES = ["good", "not_in_policy", "digest_changed", "excluded", "template_hash_edited", "digest_edited",
         "malformed_line", "wrong_pcr", "violation", "truncated"]


@pytest.mark.parametrize("name", CASES)
def test_same_verdict_as_keylime(tmp_path, name):
    lines, policy_entries, seen = _case(name)
    excludes = (r"/usr/lib/x/0\.so",) if name == "excluded" else ()
    write_policy(tmp_path / "policy.json", policy_entries, excludes)
    (tmp_path / "log").write_text("".join(line + "\n" for line in lines))
    tpm = SoftwareTpm()
    tpm.extend_log(seen)
    modules = keylime()
    policy = RuntimePolicy.load(tmp_path / "policy.json").document
    _, failure = modules.ima.process_measurement_list(None, lines, policy, tpm.pcr10.hex(),
                                                      hash_alg=modules.algorithms.Hash.SHA256)
    config = AttestConfig(ima_log=tmp_path / "log", runtime_policy=tmp_path / "policy.json", state_dir=tmp_path)
    report = Attestor(config, tpm=tpm).evaluate()
    assert (report.host.state is IntegrityState.UNTRUSTED) == bool(failure), (name, report.host.reasons)
    assert (name == "good" or name == "excluded") == (report.host.state is IntegrityState.TRUSTED)
