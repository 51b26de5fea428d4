from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hostwarden.attest import (
    AttestConfig,
    Attestor,
    Attribution,
    IntegrityState,
    ReasonCode,
    RuntimePolicy,
    RuntimePolicyError,
)
from hostwarden.attest.keylime_compat import keylime
from tests.unit.attest.synthetic import SoftwareTpm, SyntheticEntry, SyntheticLog, entry_for, write_policy

TRUSTED, UNTRUSTED, UNKNOWN = IntegrityState.TRUSTED, IntegrityState.UNTRUSTED, IntegrityState.UNKNOWN


class Host:
    """A synthetic host: an IMA log file, a software TPM that saw it, a runtime policy file."""

    def __init__(self, tmp_path, names=("/usr/bin/python3", "/usr/bin/git", "/usr/bin/make")) -> None:
        self.dir = tmp_path
        self.log = SyntheticLog([entry_for(name) for name in names])
        self.tpm = SoftwareTpm()
        self.tpm.extend_log(self.log)
        self.log_path = tmp_path / "ascii_runtime_measurements"
        self.policy_path = tmp_path / "policy.json"
        write_policy(self.policy_path, self.log.entries)
        self.write()

    def write(self, text: str | None = None) -> None:
        self.log_path.write_text(self.log.ascii() if text is None else text)

    def run(self, entry: SyntheticEntry) -> SyntheticEntry:
        """IMA measures a new file: appended to the log and extended into the TPM."""
        self.log.add(entry)
        self.tpm.extend(entry.pcr_extend_value)
        self.write()
        return entry

    def attestor(self, policy: bool = True) -> Attestor:
        config = AttestConfig(ima_log=self.log_path, runtime_policy=self.policy_path if policy else None,
                              state_dir=self.dir)
        return Attestor(config, tpm=self.tpm)


def codes(scope) -> list[ReasonCode]:
    return [reason.code for reason in scope.reasons]


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


def test_good_log_with_a_verified_quote_is_trusted(host):
    report = host.attestor().evaluate("nonce")
    assert report.host.state is TRUSTED and report.quote_verified
    assert report.log_entries == 3 and report.pcr10 == host.tpm.pcr10.hex()


def test_file_outside_the_policy_is_untrusted_naming_file_and_digests(host):
    rogue = host.run(entry_for("/tmp/rogue"))
    report = host.attestor().evaluate()
    assert report.host.state is UNTRUSTED
    (reason,) = report.host.reasons
    assert reason.code is ReasonCode.NOT_IN_POLICY and reason.path == "/tmp/rogue"
    assert reason.actual == f"sha256:{rogue.digest.hex()}"


def test_changed_file_names_expected_and_actual_digest(host):
    changed = host.run(entry_for("/usr/bin/git", b"trojaned git"))
    (reason,) = host.attestor().evaluate().host.reasons
    assert reason.code is ReasonCode.DIGEST_NOT_ALLOWED
    assert reason.expected == (host.log.entries[1].digest.hex(),)
    assert reason.actual == f"sha256:{changed.digest.hex()}"


def test_edited_line_with_stale_template_hash(host):
    text = host.log.ascii().replace(host.log.entries[1].digest.hex(), "ab" * 32)
    host.write(text)
    report = host.attestor().evaluate()
    assert report.host.state is UNTRUSTED
    assert ReasonCode.TEMPLATE_HASH_MISMATCH in codes(report.host)
    assert ReasonCode.LOG_NOT_IN_TPM in codes(report.host)


def test_edited_line_with_consistent_template_hash_does_not_match_the_tpm(host):
    forged = SyntheticEntry("/usr/bin/git", b"\xab" * 32)
    lines = host.log.ascii().splitlines()
    lines[1] = forged.ascii()
    host.write("\n".join(lines) + "\n")
    report = host.attestor().evaluate()
    assert report.host.state is UNTRUSTED and codes(report.host)[0] is ReasonCode.LOG_NOT_IN_TPM


def test_truncated_log_does_not_match_the_tpm(host):
    host.write(host.log.ascii(host.log.entries[:2]))
    report = host.attestor().evaluate()
    assert codes(report.host) == [ReasonCode.LOG_NOT_IN_TPM]


def test_appended_unbacked_line_is_refused_although_keylime_accepts_the_prefix(host):
    unbacked = entry_for("/usr/bin/python3", b"other python")
    write_policy(host.policy_path, [*host.log.entries, unbacked])  # allowed by policy: only the TPM knows
    host.write(host.log.ascii() + unbacked.ascii() + "\n")
    lines = host.log_path.read_text().splitlines()
    ima, algorithms = keylime().ima, keylime().algorithms
    policy = RuntimePolicy.load(host.policy_path).document
    _, failure = ima.process_measurement_list(None, lines, policy, host.tpm.pcr10.hex(),
                                              hash_alg=algorithms.Hash.SHA256)
    assert not failure  # the gap: keylime alone accepts a PCR matching any prefix
    report = host.attestor().evaluate()
    (reason,) = report.host.reasons
    assert reason.code is ReasonCode.LOG_AHEAD_OF_TPM
    assert "the 1 entries from entry 3 (/usr/bin/python3)" in reason.message


def test_wrong_nonce_in_the_tpm_answer(host):
    class ReplayingTpm(SoftwareTpm):
        def quote(self, nonce):
            return super().quote("stale-nonce")

    replaying = ReplayingTpm()
    replaying.extend_log(host.log)
    report = Attestor(AttestConfig(ima_log=host.log_path, state_dir=host.dir), tpm=replaying).evaluate("fresh")
    assert codes(report.host) == [ReasonCode.QUOTE_NONCE]


def test_wrong_ak_is_untrusted_and_explained(host):
    class ForeignKeyTpm(SoftwareTpm):
        trusted = SoftwareTpm()

        def ensure_ak(self):
            return self.trusted.ak_pem()

    tpm = ForeignKeyTpm()
    tpm.extend_log(host.log)
    report = Attestor(AttestConfig(ima_log=host.log_path, state_dir=host.dir), tpm=tpm).evaluate()
    (reason,) = report.host.reasons
    assert reason.code is ReasonCode.QUOTE_SIGNATURE and "remove ak.pem" in reason.message


def test_relabelled_pcr_selection(host):
    host.tpm.quoted_pcr = 16
    assert codes(host.attestor().evaluate().host) == [ReasonCode.PCR_SELECTION_MISMATCH]


def test_quote_failure_makes_every_sandbox_untrusted_too(host):
    attestor = host.attestor()
    attestor.record_exec("box", "/usr/bin/git", host.log.entries[1].digest.hex())
    host.tpm.quoted_pcr = 16
    report = attestor.evaluate()
    assert report.sandboxes["box"].state is UNTRUSTED
    assert codes(report.sandboxes["box"]) == [ReasonCode.PCR_SELECTION_MISMATCH]


def test_no_tpm_is_unknown_then_trusted_when_it_returns(host):
    attestor = host.attestor()
    host.tpm.unavailable = "no TPM device /dev/tpmrm0"
    report = attestor.evaluate()
    assert report.host.state is UNKNOWN and codes(report.host) == [ReasonCode.NO_TPM]
    host.tpm.unavailable = None
    assert attestor.evaluate().host.state is TRUSTED


def test_no_tpm_still_reports_policy_violations_as_untrusted(host):
    host.run(entry_for("/tmp/rogue"))
    host.tpm.unavailable = "no TPM"
    report = host.attestor().evaluate()
    assert report.host.state is UNTRUSTED and codes(report.host) == [ReasonCode.NOT_IN_POLICY]


def test_no_ima_log_is_unknown(tmp_path):
    config = AttestConfig(ima_log=tmp_path / "absent", state_dir=tmp_path)
    report = Attestor(config, tpm=SoftwareTpm()).evaluate()
    assert report.host.state is UNKNOWN and codes(report.host) == [ReasonCode.NO_IMA]


def test_attribution_joins_on_path_and_digest_and_the_rest_is_the_host(host):
    rogue = host.run(entry_for("/tmp/rogue"))
    attestor = host.attestor()
    attestor.record_exec("agent-a", "/usr/bin/git", host.log.entries[1].digest.hex())
    attestor.record_exec("agent-b", "/tmp/rogue", rogue.digest.hex().upper())
    report = attestor.evaluate()
    assert report.sandboxes["agent-a"].state is TRUSTED
    assert report.sandboxes["agent-a"].attribution is Attribution.DIGEST
    assert report.sandboxes["agent-b"].state is UNTRUSTED
    assert report.sandboxes["agent-b"].reasons[0].path == "/tmp/rogue"
    assert report.host.state is TRUSTED  # the rogue file was the sandbox's doing
    assert report.host.entries == 2


def test_same_binary_in_a_second_sandbox_adds_no_entry_but_is_judged(host):
    attestor = host.attestor()
    digest = host.log.entries[0].digest.hex()
    attestor.record_exec("one", "/usr/bin/python3", digest)
    attestor.evaluate()
    attestor.record_exec("two", "/usr/bin/python3", digest)
    report = attestor.evaluate()
    assert report.sandboxes["two"].state is TRUSTED and report.sandboxes["two"].entries == 1


def test_path_only_attribution_is_reported_as_such(host):
    attestor = host.attestor()
    attestor.record_exec("box", "/usr/bin/make", None)
    scope = attestor.evaluate().sandboxes["box"]
    assert scope.state is TRUSTED and scope.attribution is Attribution.PATH and scope.entries == 1


def test_exec_without_measurement_is_unknown_until_it_appears(host):
    attestor = host.attestor()
    unmeasured = entry_for("/opt/new-tool")
    attestor.record_exec("box", unmeasured.path, unmeasured.digest.hex())
    scope = attestor.evaluate().sandboxes["box"]
    assert scope.state is UNKNOWN and codes(scope) == [ReasonCode.UNMEASURED_EXEC]
    host.run(unmeasured)
    write_policy(host.policy_path, host.log.entries)
    attestor.reload_policy()
    assert attestor.evaluate().sandboxes["box"].state is TRUSTED


def test_sandbox_policy_extends_the_hosts(host, tmp_path):
    tool = host.run(entry_for("/opt/agent/tool"))
    attestor = host.attestor()
    attestor.record_exec("box", tool.path, tool.digest.hex())
    attestor.record_exec("other", tool.path, tool.digest.hex())
    assert attestor.evaluate().sandboxes["box"].state is UNTRUSTED
    extension = tmp_path / "box.json"
    write_policy(extension, [tool])
    attestor.set_sandbox_policy("box", RuntimePolicy.load(extension))
    report = attestor.evaluate()
    assert report.sandboxes["box"].state is TRUSTED
    assert report.sandboxes["other"].state is UNTRUSTED  # the extension is box's alone
    assert report.host.state is TRUSTED


def test_incremental_rounds_only_check_new_entries(host):
    attestor = host.attestor()
    assert attestor.evaluate().host.state is TRUSTED
    host.run(entry_for("/usr/bin/git", b"new git"))
    report = attestor.evaluate()
    assert report.log_entries == 4 and codes(report.host) == [ReasonCode.DIGEST_NOT_ALLOWED]


def test_entries_appended_during_the_quote_are_caught_up(host):
    class RacingTpm(SoftwareTpm):
        """IMA appends to the list before extending the PCR: the first quote trails the list."""

        pending: list[SyntheticEntry] = []

        def quote(self, nonce):
            answer = super().quote(nonce)
            for entry in self.pending:
                self.extend(entry.pcr_extend_value)
            self.pending = []
            return answer

    tpm = RacingTpm()
    tpm.extend_log(host.log)
    late = entry_for("/usr/bin/python3")
    host.log.add(late)
    host.write()
    tpm.pending = [late]
    report = Attestor(AttestConfig(ima_log=host.log_path, state_dir=host.dir), tpm=tpm).evaluate()
    assert report.host.state is TRUSTED and tpm.quotes == 2


def test_bad_lines_make_the_host_untrusted_without_crashing(host):
    host.write(host.log.ascii() + "10 garbage\n")
    report = host.attestor().evaluate()
    assert ReasonCode.MALFORMED_ENTRY in codes(report.host)


def test_invalid_policy_reload_keeps_the_old_policy(host):
    attestor = host.attestor()
    host.policy_path.write_text("{not json")
    with pytest.raises(RuntimePolicyError, match=r"policy\.json"):
        attestor.reload_policy()
    assert attestor.evaluate().host.state is TRUSTED


def test_policy_reload_rejudges_known_entries(host):
    attestor = host.attestor()
    assert attestor.evaluate().host.state is TRUSTED
    write_policy(host.policy_path, host.log.entries[:2])
    attestor.reload_policy()
    (reason,) = attestor.evaluate().host.reasons
    assert reason.code is ReasonCode.NOT_IN_POLICY and reason.path == "/usr/bin/make"


def test_no_runtime_policy_checks_only_the_log(host):
    host.run(entry_for("/tmp/anything"))
    assert host.attestor(policy=False).evaluate().host.state is TRUSTED


@pytest.mark.parametrize(("sandbox", "path", "digest"), [
    ("", "/bin/x", None), ("box", "relative/x", None), ("box", "/bin/x", "xyz"), ("box", "/bin/x", "ab")])
def test_bad_exec_events_are_refused(host, sandbox, path, digest):
    with pytest.raises(ValueError):
        host.attestor().record_exec(sandbox, path, digest)


def test_keylime_quote_has_the_log_slice(host):
    quote = host.attestor().quote("verifier-nonce", ima_offset=1)
    assert quote.quote.startswith("r") and quote.hash_alg == "sha256"
    assert quote.entries == 3 and quote.offset == 1
    assert quote.ima_measurement_list == host.log.ascii(host.log.entries[1:])
    with pytest.raises(ValueError, match="outside the IMA log"):
        host.attestor().quote("n", ima_offset=9)


def test_invalid_policy_file_is_refused_at_start(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"meta": {"version": 1}}))
    with pytest.raises(RuntimePolicyError, match="not a valid keylime runtime policy"):
        RuntimePolicy.load(path)


def test_sandbox_policy_must_share_the_hosts_log_hash_alg(host, tmp_path):
    extension = json.loads(host.policy_path.read_text())
    extension["ima"]["log_hash_alg"] = "sha256"
    path = tmp_path / "box.json"
    path.write_text(json.dumps(extension))
    with pytest.raises(RuntimePolicyError, match="log_hash_alg"):
        RuntimePolicy.load(host.policy_path).extended_by(RuntimePolicy.load(path))


def test_importing_keylime_leaves_the_logging_setup_alone():
    probe = (
        "import logging\n"
        "logging.getLogger('hostwarden').info('x')\n"
        "before = (list(logging.getLogger().handlers), logging.getLogger().level)\n"
        "from hostwarden.attest.keylime_compat import keylime\n"
        "keylime()\n"
        "after = (list(logging.getLogger().handlers), logging.getLogger().level)\n"
        "assert before == after, (before, after)\n"
        "assert not logging.getLogger('hostwarden').disabled\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # keylime's missing-config warning does not leak out
