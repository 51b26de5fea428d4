"""The real daemon process with a real swtpm and a synthesized IMA log extended into its PCR 10:
GetQuote's answer verifies with keylime, `hostwarden attest --json` reports the host, SIGHUP reloads the
runtime policy."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostwarden.attest.keylime_compat import keylime
from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb
from tests.host.attest.swtpm import Swtpm, tools_present
from tests.host.daemon.conftest import DaemonProcess, cgroup_root, configured_daemon  # noqa: F401 (fixture)
from tests.support import require
from tests.unit.attest.synthetic import SyntheticLog, entry_for, write_policy


@pytest.fixture
def attesting_daemon(tmp_path: Path, cgroup_root: Path) -> Iterator[tuple[DaemonProcess, Swtpm, SyntheticLog]]:  # noqa: F811
    require(tools_present(), "swtpm and tpm2-tools (Debian swtpm, swtpm-tools, tpm2-tools)")
    swtpm = Swtpm(tmp_path / "swtpm")
    swtpm.start()
    log = SyntheticLog([entry_for(path) for path in ("/usr/bin/bash", "/usr/bin/ls", "/usr/bin/cc")])
    for entry in log.entries:
        swtpm.extend(10, entry.pcr_extend_value)
    (tmp_path / "ima.log").write_text(log.ascii())
    write_policy(tmp_path / "runtime-policy.json", log.entries[:2])  # cc is not allowed (yet)
    daemon = configured_daemon(tmp_path, cgroup_root, f"""
[bpf]
enabled = false
[attest]
ima_log = "{tmp_path / 'ima.log'}"
tpm_tcti = "{swtpm.tcti}"
runtime_policy = "{tmp_path / 'runtime-policy.json'}"
poll_seconds = 0.2
""")
    daemon.start()
    yield daemon, swtpm, log
    daemon.stop()
    swtpm.stop()


def attest_json(daemon: DaemonProcess, *args: str) -> tuple[int, dict]:
    result = daemon.cli("attest", "--json", *args, check=False)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_get_quote_verifies_with_keylime(attesting_daemon):
    daemon, _swtpm, log = attesting_daemon
    with Client(daemon.socket) as admin:
        quote = admin.call("GetQuote", pb.GetQuoteRequest(nonce="fleet-verifier-1", ima_offset=0))
    assert quote.quote.startswith("r") and quote.hash_alg == "sha256" and quote.ima_entries == 3
    attest_b64, signature_b64, pcrs_b64 = quote.quote[1:].split(":")
    modules = keylime()
    pcrs = modules.tpm_util.checkquote(quote.ak_public_pem.encode(), "fleet-verifier-1",
                                       base64.b64decode(signature_b64), base64.b64decode(attest_b64),
                                       base64.b64decode(pcrs_b64), quote.hash_alg)
    assert pcrs[10] == log.aggregate().hex()
    _, failure = modules.ima.process_measurement_list(None, quote.ima_measurement_list.split("\n"), None, pcrs[10],
                                                      hash_alg=modules.algorithms.Hash.SHA256)
    assert not failure
    with pytest.raises(Exception, match="nonce"):  # the verifier's own nonce is what the TPM signed
        modules.tpm_util.checkquote(quote.ak_public_pem.encode(), "another-nonce", base64.b64decode(signature_b64),
                                    base64.b64decode(attest_b64), base64.b64decode(pcrs_b64), quote.hash_alg)


def test_attest_cli_reports_the_host_and_sighup_reloads_the_runtime_policy(attesting_daemon, tmp_path):
    daemon, _swtpm, log = attesting_daemon
    daemon.cli("sandbox", "create", "sb")
    status, report = attest_json(daemon)
    assert status == 3
    assert report["host"]["state"] == "UNTRUSTED"
    assert [(r["code"], r["path"]) for r in report["host"]["reasons"]] == [("not_in_policy", "/usr/bin/cc")]
    # No bpf monitor here: nothing says what the sandbox ran, so it gets no verdict.
    sandbox = report["sandboxes"]["sb"]
    assert sandbox["state"] == "UNKNOWN" and sandbox["reasons"][0]["code"] == "no_exec_events"

    write_policy(tmp_path / "runtime-policy.json", log.entries)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while (report := attest_json(daemon)[1])["host"]["state"] != "TRUSTED":
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert report["host"]["reasons"] == []
    text = daemon.cli("attest").stdout
    assert text.splitlines()[0] == "host: TRUSTED"
