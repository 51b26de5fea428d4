from __future__ import annotations

import sqlite3

import pytest

from hostwarden.config import ConfigError, parse_config
from hostwarden.ledger import Ledger


def test_empty_config_is_all_defaults():
    config = parse_config("", "x.toml")
    assert config.daemon.socket == "/run/hostwarden/hostwarden.sock" and config.daemon.call_socket
    assert config.metrics.address.startswith("127.0.0.1:")


@pytest.mark.parametrize(("text", "key"), [
    ("[daemon]\nsokcet = 'x'\n", "daemon.sokcet"),
    ("[daemon]\nevent_queue_size = 'many'\n", "daemon.event_queue_size"),
    ("[daemon]\nevent_queue_size = 0\n", "daemon.event_queue_size"),
    ("[metrix]\n", "metrix"),
    ("[daemon]\ntcp_address = '127.0.0.1:1'\n", "daemon.tcp_address"),
    ("[bpf]\nenabled = 1\n", "bpf.enabled"),
    ("[daemon]\ncall_socket = 'yes'\n", "daemon.call_socket"),
])
def test_bad_config_names_the_key(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text, "x.toml")


def test_ledger_wal_schema_and_retention(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.schema_version == 1
    assert sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ledger.begin_call("c1", "sb", "t", "cmd", "/x", 100.0, None, [])
    ledger.finish_call("c1", 101.0, {"peak_memory_bytes": 5, "exit_code": None})
    ledger.begin_call("c2", "sb", "t", "cmd", "/y", 200.0, None, [])
    ledger.finish_call("c2", 10_000_000.0, {"peak_memory_bytes": 7})
    ledger.add_action(100.5, "sb", "c1", "kill", "timeout", "d", "h", False)
    assert ledger.recent_peaks("sb", "t", 10) == [7, 5]
    assert ledger.set_exit_code("c1", 3)["exit_code"] == 3
    assert ledger.set_exit_code("c1", 4)["exit_code"] == 3  # the first report stands
    assert ledger.apply_retention(days=1, now=10_000_000.0) == 1
    assert ledger.get_call("c1") is None and ledger.get_call("c2") is not None
    assert ledger.counts()["actions"] == 0
    ledger.close()
    reopened = Ledger(tmp_path / "l.db")
    assert reopened.get_call("c2").summary == {"peak_memory_bytes": 7}


def test_ledger_checkpoints_only_when_asked(tmp_path):
    """No automatic checkpoint inside a tool call's commit: the WAL keeps growing until checkpoint()."""
    ledger = Ledger(tmp_path / "l.db")
    for i in range(400):
        ledger.begin_call(f"c{i}", "sb", "t", "cmd", f"/x/{i}", 100.0 + i, None, [{"name": "memory.max"}] * 8)
        ledger.finish_call(f"c{i}", 101.0 + i, {"limits": [{"name": "memory.max"}] * 8})
    copied = ledger.checkpoint()
    assert copied > 1000  # SQLite's default would have checkpointed at 1000 frames
    assert ledger.checkpoint() == copied  # nothing new: the same frames, already in the database
    ledger.close()
    reopened = sqlite3.connect(tmp_path / "l.db")
    assert reopened.execute("SELECT count(*) FROM calls WHERE state='finished'").fetchone()[0] == 400


def test_ledger_refuses_a_newer_schema(tmp_path):
    Ledger(tmp_path / "l.db").close()
    sqlite3.connect(tmp_path / "l.db").execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        Ledger(tmp_path / "l.db")
