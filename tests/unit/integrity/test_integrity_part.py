"""The integrity part in a whole in-process daemon: fake cgroupfs, a synthetic IMA log, a software TPM and
a stand-in bpf monitor delivering exec-digest events through `on_exec_digest`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from hostwarden import app
from hostwarden.attest.quote import parse_keylime_quote_string, verify_quote
from hostwarden.bpf import ProgramStatus
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.config import Config, ConfigError, DaemonConfig, MetricsConfig
from hostwarden.integrity import IntegrityPart, IntegritySettings, build_integrity
from hostwarden.policy.resolve import Intent
from hostwarden.proto import warden_pb2 as pb
from hostwarden.service import ADMIN
from tests.unit.attest.synthetic import SoftwareTpm, SyntheticLog, entry_for, write_policy
from tests.unit.cgroups.fakefs import FakeCgroupFs
from tests.unit.daemon.conftest import create

ALLOWED, EVIL = "/usr/bin/allowed-tool", "/var/tmp/evil-tool"


class FakeMonitor:
    """The bpf monitor as the integrity part sees it: an exec sink and the programs' load status."""

    def __init__(self, exec_program_loaded: bool = True) -> None:
        self.on_exec_digest = None
        self.statuses = {"exec_digest": ProgramStatus("exec_digest", exec_program_loaded, "attached")}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Host:
    """A daemon whose IMA log and TPM the test drives."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str = "",
                 monitor: FakeMonitor | None = None, attest: dict | None = None) -> None:
        self.log = SyntheticLog([entry_for(path) for path in ("/usr/bin/bash", ALLOWED)])
        self.evil = entry_for(EVIL)
        self.log_path = tmp_path / "ascii_runtime_measurements"
        self.policy_path = tmp_path / "runtime-policy.json"
        write_policy(self.policy_path, self.log.entries)
        self.tpm = SoftwareTpm()
        self.tpm.extend_log(self.log)
        self.log_path.write_text(self.log.ascii())
        self.monitor = monitor if monitor is not None else FakeMonitor()
        (tmp_path / "policy.toml").write_text(policy)
        fs = FakeCgroupFs(tmp_path / "cgroup" / "hostwarden")
        self.fs = fs
        attest_table = {"ima_log": str(self.log_path), "runtime_policy": str(self.policy_path),
                        "tpm_tcti": "swtpm:host=127.0.0.1,port=1", "interval_seconds": 3600,
                        "poll_seconds": 3600, **(attest or {})}
        config = Config(daemon=DaemonConfig(socket=str(tmp_path / "hw.sock"), state_dir=tmp_path / "state",
                                            policy=tmp_path / "policy.toml"),
                        metrics=MetricsConfig(address="127.0.0.1:0"), attest=attest_table)
        builders = (lambda _daemon: self.monitor, lambda daemon: build_integrity(daemon, tpm=self.tpm))
        monkeypatch.setattr(app, "PART_BUILDERS", builders)
        self.daemon = app.Daemon(config, tree=CgroupTree(fs.root, fs), cgroup_mount=tmp_path / "cgroup")
        self.part = next((p for p in self.daemon.parts if isinstance(p, IntegrityPart)), None)

    def run(self, sandbox: str, entry_path: str) -> None:
        """A process in `sandbox` executed the file: what the BPF LSM program reports."""
        entry = next(e for e in [*self.log.entries, self.evil] if e.path == entry_path)
        assert self.monitor.on_exec_digest is not None
        self.monitor.on_exec_digest(sandbox, entry.path, entry.digest.hex())

    def measure(self, entry_path: str) -> None:
        """IMA measures a new file: the list grows and PCR 10 is extended."""
        entry = next(e for e in [self.evil] if e.path == entry_path)
        self.log.add(entry)
        self.log_path.write_text(self.log.ascii())
        self.tpm.extend(entry.pcr_extend_value)

    def metric(self, line_start: str) -> float | None:
        for line in generate_latest(self.daemon.metrics.registry).decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def host(tmp_path, monkeypatch) -> Iterator[Host]:
    machine = Host(tmp_path, monkeypatch)
    machine.daemon.start()
    yield machine
    machine.daemon.shutdown()


def integrity(client: Client, sandbox: str = "") -> dict:
    report = client.call("GetIntegrity", pb.GetIntegrityRequest(sandbox=sandbox))
    return {state.scope: (state.state, [json.loads(r) for r in state.reasons])
            for state in [report.host, *report.sandboxes]}


def attestation_rows(daemon: app.Daemon) -> list[tuple[str, str, list[str]]]:
    rows = daemon.ledger._db.execute("SELECT scope, state, reasons FROM attestations ORDER BY id").fetchall()
    return [(scope, state, json.loads(reasons)) for scope, state, reasons in rows]


def test_a_bad_exec_turns_its_sandbox_untrusted_with_event_ledger_row_and_metrics(host):
    with Client(host.daemon.config.daemon.socket) as admin:
        events = host.daemon.bus.subscribe(kinds=["integrity_changed"])
        create(admin, "a")
        create(admin, "b")
        host.run("a", ALLOWED)
        host.run("b", ALLOWED)
        states = integrity(admin)
        assert {scope: state for scope, (state, _) in states.items()} == {
            "host": "TRUSTED", "a": "TRUSTED", "b": "TRUSTED"}
        assert host.metric('hostwarden_integrity_state{sandbox="a",scope="sandbox"}') == 1
        assert host.metric('hostwarden_integrity_state{sandbox="",scope="host"}') == 1

        host.measure(EVIL)
        host.run("a", EVIL)
        states = integrity(admin)
        state, reasons = states["a"]
        assert state == "UNTRUSTED"
        assert [(r["code"], r["path"]) for r in reasons] == [("not_in_policy", EVIL)]
        assert states["b"][0] == "TRUSTED" and states["host"][0] == "TRUSTED"  # the others keep theirs

        changes = [event for event in iter(lambda: events.get(0.2), None)]
        # Sandboxes are TRUSTED from their first round (nothing run yet, quote verified); only a changed after.
        assert [(e.sandbox, e.attributes["previous"], e.attributes["state"]) for e in changes
                if e.attributes["previous"] != "none"] == [("a", "TRUSTED", "UNTRUSTED")]
        assert changes[-1].attributes["reasons"] == "not_in_policy" and EVIL in changes[-1].message
        rows = attestation_rows(host.daemon)
        assert rows[-1][:2] == ("sandbox/a", "UNTRUSTED") and EVIL in rows[-1][2][0]
        # One row per change, none for the rounds that changed nothing.
        assert sorted(row[:2] for row in rows) == [("host", "TRUSTED"), ("sandbox/a", "TRUSTED"),
                                                   ("sandbox/a", "UNTRUSTED"), ("sandbox/b", "TRUSTED")]
        assert host.metric('hostwarden_integrity_state{sandbox="a",scope="sandbox"}') == 0
        assert host.metric('hostwarden_attestation_failures_total{reason="not_in_policy"}') >= 1
        assert host.metric("hostwarden_tpm_quote_duration_seconds_count") >= 2

        admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name="a"))
        assert host.metric('hostwarden_integrity_state{sandbox="a",scope="sandbox"}') is None
        assert "a" not in integrity(admin)


def test_tampered_log_taints_every_scope(host):
    with Client(host.daemon.config.daemon.socket) as admin:
        create(admin, "a")
        host.run("a", ALLOWED)
        assert integrity(admin)["a"][0] == "TRUSTED"
        host.log.add(host.evil)  # listed, never extended into PCR 10
        host.log_path.write_text(host.log.ascii())
        states = integrity(admin)
        for scope in ("host", "a"):
            assert states[scope][0] == "UNTRUSTED"
            assert states[scope][1][0]["code"] == "log_ahead_of_tpm"


def test_tpm_gone_is_unknown_and_no_ledger_row_for_a_scope_that_starts_unknown(tmp_path, monkeypatch):
    machine = Host(tmp_path, monkeypatch)
    machine.tpm.unavailable = "swtpm is not running"
    machine.daemon.start()
    try:
        with Client(machine.daemon.config.daemon.socket) as admin:
            create(admin, "a")
            states = integrity(admin)
            assert states["host"][0] == "UNKNOWN" and states["host"][1][0]["code"] == "no_tpm"
            assert states["a"][0] == "UNKNOWN"
            assert attestation_rows(machine.daemon) == []
            with pytest.raises(grpc.RpcError) as info:
                admin.call("GetQuote", pb.GetQuoteRequest(nonce="n1"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "swtpm is not running" in info.value.details()
            assert machine.metric('hostwarden_attestation_failures_total{reason="no_tpm"}') >= 1
            machine.tpm.unavailable = None
            assert integrity(admin)["host"][0] == "TRUSTED"
            assert attestation_rows(machine.daemon)[0][:2] == ("host", "TRUSTED")
    finally:
        machine.daemon.shutdown()


@pytest.mark.parametrize("dry_run", [False, True])
def test_on_untrusted_freeze_freezes_the_agent_and_running_calls(tmp_path, monkeypatch, dry_run):
    policy = f'dry_run = {str(dry_run).lower()}\n[attest]\non_untrusted = "freeze"\n'
    machine = Host(tmp_path, monkeypatch, policy=policy)
    machine.daemon.start()
    try:
        with Client(machine.daemon.config.daemon.socket) as admin:
            create(admin, "a")
            create(admin, "b")
            call = machine.daemon.warden.begin_call(ADMIN, "a", "pytest", Intent(), "pytest -q")
            other = machine.daemon.warden.begin_call(ADMIN, "b", "pytest", Intent(), "pytest -q")
            machine.measure(EVIL)
            machine.run("a", EVIL)
            assert integrity(admin, "a")["a"][0] == "UNTRUSTED"
        agent = machine.daemon.warden.sandboxes["a"].path / "agent"
        frozen = 0 if dry_run else 1
        assert machine.fs.read_keyed(agent / "cgroup.events")["frozen"] == frozen
        assert machine.fs.read_keyed(call.path / "cgroup.events")["frozen"] == frozen
        assert machine.fs.read_keyed(other.path / "cgroup.events")["frozen"] == 0  # sandbox b ran nothing bad
        actions = machine.daemon.ledger.actions(call.call_id)
        assert [(a["kind"], a["reason"], a["dry_run"]) for a in actions] == [
            ("freeze", "integrity_untrusted", dry_run)]
        assert EVIL in actions[0]["detail"]
        agent_actions = machine.daemon.ledger._db.execute(
            "SELECT kind, sandbox FROM actions WHERE call_id IS NULL").fetchall()
        assert agent_actions == [("freeze", "a")]
    finally:
        machine.daemon.shutdown()


def test_sighup_reload_rejudges_with_the_new_runtime_policy(host):
    with Client(host.daemon.config.daemon.socket) as admin:
        create(admin, "a")
        host.measure(EVIL)
        host.run("a", EVIL)
        assert integrity(admin)["a"][0] == "UNTRUSTED"
        host.policy_path.write_text("{not json")
        host.part.reload()  # refused: the policy in force stays
        assert integrity(admin)["a"][0] == "UNTRUSTED"
        write_policy(host.policy_path, host.log.entries)  # now lists the tool
        host.part.reload()
        assert integrity(admin)["a"][0] == "TRUSTED"


def test_sandbox_policy_dir_extends_the_host_policy(tmp_path, monkeypatch):
    policies = tmp_path / "sandbox-policies"
    policies.mkdir()
    write_policy(policies / "a.json", [entry_for(EVIL)])
    machine = Host(tmp_path, monkeypatch, attest={"sandbox_policy_dir": str(policies)})
    machine.daemon.start()
    try:
        with Client(machine.daemon.config.daemon.socket) as admin:
            create(admin, "a")
            create(admin, "b")
            machine.measure(EVIL)
            machine.run("a", EVIL)
            machine.run("b", EVIL)
            states = integrity(admin)
            assert (states["a"][0], states["b"][0]) == ("TRUSTED", "UNTRUSTED")
    finally:
        machine.daemon.shutdown()


def test_without_exec_events_sandboxes_are_unknown(tmp_path, monkeypatch):
    machine = Host(tmp_path, monkeypatch, monitor=FakeMonitor(exec_program_loaded=False))
    machine.daemon.start()
    try:
        with Client(machine.daemon.config.daemon.socket) as admin:
            create(admin, "a")
            states = integrity(admin)
            assert states["host"][0] == "TRUSTED"
            assert states["a"][0] == "UNKNOWN" and states["a"][1][0]["code"] == "no_exec_events"
    finally:
        machine.daemon.shutdown()


def test_sandbox_tokens_see_their_own_sandbox_and_admin_only_gets_quotes(host):
    with Client(host.daemon.config.daemon.socket) as admin:
        token_a = create(admin, "a")
        create(admin, "b")
        host.measure(EVIL)  # a host entry that no sandbox ran: the host is UNTRUSTED
        with Client(host.daemon.config.daemon.socket, token_a) as sandbox_a:
            states = integrity(sandbox_a)
            assert set(states) == {"host", "a"}
            assert states["host"][0] == "UNTRUSTED"
            assert EVIL not in json.dumps(states["host"][1])  # codes only: host files are not its business
            for method, request in [("GetIntegrity", pb.GetIntegrityRequest(sandbox="b")),
                                    ("GetQuote", pb.GetQuoteRequest(nonce="n1"))]:
                with pytest.raises(grpc.RpcError) as info:
                    sandbox_a.call(method, request)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert EVIL in json.dumps(integrity(admin)["host"][1])
        for nonce in ("", "x" * 65, "bad\nnonce"):
            with pytest.raises(grpc.RpcError) as info:
                admin.call("GetQuote", pb.GetQuoteRequest(nonce=nonce))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nonce" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            admin.call("GetQuote", pb.GetQuoteRequest(nonce="n1", ima_offset=99))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ima_offset" in info.value.details()
        quote = admin.call("GetQuote", pb.GetQuoteRequest(nonce="verifier-nonce", ima_offset=1))
        pcr10 = verify_quote(quote.ak_public_pem, "verifier-nonce", parse_keylime_quote_string(quote.quote))
        assert pcr10 == host.log.aggregate()
        assert quote.ima_entries == 3 and quote.ima_measurement_list == host.log.ascii(host.log.entries[1:])


@pytest.mark.parametrize(("table", "message"), [
    ({"tpm_tcti": 5}, "attest.tpm_tcti"),
    ({"ima_log": "relative/path"}, "attest.ima_log: expected an absolute path"),
    ({"ima_log_format": "xml"}, "attest.ima_log_format"),
    ({"interval_seconds": 0}, "attest.interval_seconds: expected a positive number"),
    ({"poll_seconds": 10, "interval_seconds": 5}, "attest.poll_seconds"),
    ({"enabled": "yes"}, "attest.enabled"),
    ({"quote_pcr": 16}, "attest.quote_pcr: unknown key"),
])
def test_bad_attest_config_names_the_key(table, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        IntegritySettings.from_mapping(table)


def test_bad_runtime_policy_refuses_to_start_and_disabled_turns_the_part_off(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ConfigError, match=r"attest\.runtime_policy"):
        Host(tmp_path, monkeypatch, attest={"runtime_policy": str(bad)})
    machine = Host(tmp_path, monkeypatch, attest={"enabled": False})
    machine.daemon.start()
    try:
        with Client(machine.daemon.config.daemon.socket) as admin, pytest.raises(grpc.RpcError) as info:
            admin.call("GetIntegrity", pb.GetIntegrityRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "enabled" in info.value.details()
    finally:
        machine.daemon.shutdown()
