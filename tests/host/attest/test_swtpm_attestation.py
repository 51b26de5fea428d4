"""A real swtpm, tpm2-tools and synthesized IMA logs extended into its PCR 10."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hostwarden.attest import AttestConfig, Attestor, IntegrityState, ReasonCode
from hostwarden.attest.keylime_compat import keylime
from hostwarden.attest.quote import keylime_quote_string, parse_keylime_quote_string
from hostwarden.attest.tpm import Tpm2Tools
from tests.host.attest.swtpm import Swtpm, tools_present
from tests.support import require
from tests.unit.attest.synthetic import SyntheticEntry, SyntheticLog, entry_for, write_policy

TRUSTED, UNTRUSTED, UNKNOWN = IntegrityState.TRUSTED, IntegrityState.UNTRUSTED, IntegrityState.UNKNOWN


@pytest.fixture
def swtpm(tmp_path):
    require(tools_present(), "swtpm and tpm2-tools (Debian swtpm, swtpm-tools, tpm2-tools)")
    server = Swtpm(tmp_path / "swtpm")
    server.start()
    yield server
    server.stop()


class Machine:
    def __init__(self, tmp_path, swtpm: Swtpm) -> None:
        self.swtpm = swtpm
        self.dir = tmp_path
        self.log = SyntheticLog([entry_for(path) for path in ("/usr/bin/bash", "/usr/bin/ls", "/usr/bin/cc")])
        self.log_path = tmp_path / "ascii_runtime_measurements"
        self.policy_path = tmp_path / "policy.json"
        write_policy(self.policy_path, self.log.entries)
        self.extend_all()
        self.log_path.write_text(self.log.ascii())

    def extend_all(self) -> None:
        for entry in self.log.entries:
            self.swtpm.extend(10, entry.pcr_extend_value)

    def config(self, **changes) -> AttestConfig:
        config = AttestConfig(ima_log=self.log_path, tpm_tcti=self.swtpm.tcti, runtime_policy=self.policy_path,
                              state_dir=self.dir / "state", tpm_timeout_s=5)
        return dataclasses.replace(config, **changes)


@pytest.fixture
def machine(tmp_path, swtpm) -> Machine:
    return Machine(tmp_path, swtpm)


def test_good_log_is_trusted_and_the_ak_is_persistent(machine):
    report = Attestor(machine.config()).evaluate()
    assert report.host.state is TRUSTED, report.host.reasons
    ak_pem = (machine.dir / "state" / "ak.pem").read_text()
    assert report.quote_seconds is not None and report.quote_seconds > 0
    # A restarted daemon finds the same AK at its handle and creates no second one.
    assert Attestor(machine.config()).evaluate().host.state is TRUSTED
    assert (machine.dir / "state" / "ak.pem").read_text() == ak_pem
    assert machine.swtpm.tpm2("tpm2_getcap", "handles-persistent").split() == ["-", "0x81000110"]
    assert machine.swtpm.tpm2("tpm2_getcap", "handles-transient").strip() == ""


def test_binary_log_is_trusted(machine):
    binary = machine.dir / "binary_runtime_measurements"
    binary.write_bytes(machine.log.binary())
    assert Attestor(machine.config(ima_log=binary)).evaluate().host.state is TRUSTED


def test_edited_line_is_untrusted(machine):
    lines = machine.log.ascii().splitlines()
    lines[1] = SyntheticEntry("/usr/bin/ls", b"\x01" * 32).ascii()
    machine.log_path.write_text("\n".join(lines) + "\n")
    report = Attestor(machine.config()).evaluate()
    assert report.host.state is UNTRUSTED
    assert ReasonCode.LOG_NOT_IN_TPM in [reason.code for reason in report.host.reasons]


def test_truncated_log_is_untrusted(machine):
    machine.log_path.write_text(machine.log.ascii(machine.log.entries[:2]))
    report = Attestor(machine.config()).evaluate()
    assert [reason.code for reason in report.host.reasons] == [ReasonCode.LOG_NOT_IN_TPM]


def test_appended_line_never_extended_is_untrusted(machine):
    machine.log_path.write_text(machine.log.ascii() + entry_for("/usr/bin/ls", b"x").ascii() + "\n")
    (reason,) = Attestor(machine.config(runtime_policy=None)).evaluate().host.reasons
    assert reason.code is ReasonCode.LOG_AHEAD_OF_TPM and "the 1 entries from entry 3" in reason.message


def test_relabelled_pcr_selection_is_untrusted(machine):
    # PCR 16 is resettable and extendable by anyone: it is set to the log's aggregate and quoted, then the
    # PCR blob is relabelled to claim PCR 10. keylime's checkquote accepts that; hostwarden must not.
    for entry in machine.log.entries:
        machine.swtpm.extend(16, entry.pcr_extend_value)
    machine.swtpm.extend(10, b"\x99" * 32)  # the real PCR 10 differs from the log now

    class RelabellingTpm(Tpm2Tools):
        def quote(self, nonce, pcr=10):
            honest = super().quote(nonce, pcr=16)
            selection_at = 4 + 3  # first TPMS_PCR_SELECTION's bitmap in the tpm2-tools blob
            relabelled = bytearray(honest.pcrs)
            relabelled[selection_at : selection_at + 3] = (1 << 10).to_bytes(3, "little")
            return dataclasses.replace(honest, pcrs=bytes(relabelled))

    config = machine.config()
    tpm = RelabellingTpm(config.tpm_tcti, config.state_dir, 5)
    ak_pem = tpm.ensure_ak()
    forged = tpm.quote("n1")
    keylime().tpm_util.checkquote(ak_pem.encode(), "n1", forged.signature, forged.attest, forged.pcrs, "sha256")
    report = Attestor(config, tpm=tpm).evaluate("n1")
    assert [reason.code for reason in report.host.reasons] == [ReasonCode.PCR_SELECTION_MISMATCH]


def test_wrong_nonce_is_untrusted(machine):
    class ReplayingTpm(Tpm2Tools):
        def quote(self, nonce, pcr=10):
            return super().quote("captured-earlier", pcr)

    config = machine.config()
    report = Attestor(config, tpm=ReplayingTpm(config.tpm_tcti, config.state_dir, 5)).evaluate("fresh")
    assert [reason.code for reason in report.host.reasons] == [ReasonCode.QUOTE_NONCE]


def test_wrong_ak_is_untrusted(machine):
    Attestor(machine.config()).evaluate()  # enrols the AK
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (machine.dir / "state" / "ak.pem").write_bytes(impostor.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (reason,) = Attestor(machine.config()).evaluate().host.reasons
    assert reason.code is ReasonCode.QUOTE_SIGNATURE and "differs from the trusted AK" in reason.message


def test_swtpm_stopped_is_unknown_and_trusted_again_when_it_returns(machine):
    attestor = Attestor(machine.config())
    assert attestor.evaluate().host.state is TRUSTED
    machine.swtpm.stop()
    report = attestor.evaluate()
    assert report.host.state is UNKNOWN
    assert [reason.code for reason in report.host.reasons] == [ReasonCode.NO_TPM]
    machine.swtpm.start()  # PCRs reset, as at boot; the persistent AK survived in NVRAM
    machine.extend_all()
    assert attestor.evaluate().host.state is TRUSTED


def test_keylime_quote_verifies_with_keylime(machine):
    attestor = Attestor(machine.config())
    quote = attestor.quote("verifiernonce", ima_offset=0)
    tpm_quote = parse_keylime_quote_string(quote.quote)
    assert keylime_quote_string(tpm_quote) == quote.quote
    pcrs = keylime().tpm_util.checkquote(quote.ak_public_pem.encode(), "verifiernonce", tpm_quote.signature,
                                         tpm_quote.attest, tpm_quote.pcrs, quote.hash_alg)
    modules = keylime()
    _, failure = modules.ima.process_measurement_list(
        None, quote.ima_measurement_list.split("\n"), None, pcrs[10], hash_alg=modules.algorithms.Hash.SHA256)
    assert not failure and quote.entries == 3
