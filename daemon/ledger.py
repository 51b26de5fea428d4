"""The ledger: SQLite (WAL) in the state directory. Sandboxes, tool calls and their summaries, enforcement
actions and attestation results; it survives crashes and restarts.

WAL with synchronous=NORMAL: a committed transaction survives a killed daemon (kill -9); only a power
loss can take the last few commits. Schema changes are numbered migrations applied at open.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE sandboxes (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        priority TEXT NOT NULL,
        cgroup_path TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        adopted INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        sandbox TEXT NOT NULL,
        tool TEXT NOT NULL,
        command TEXT NOT NULL,
        cgroup_path TEXT NOT NULL,
        state TEXT NOT NULL,
        started_at REAL NOT NULL,
        deadline REAL,
        limits TEXT NOT NULL,
        ended_at REAL,
        summary TEXT
    );
    CREATE INDEX calls_by_sandbox_tool ON calls (sandbox, tool, ended_at);
    CREATE INDEX calls_by_end ON calls (ended_at);
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        sandbox TEXT NOT NULL,
        call_id TEXT,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        hint TEXT NOT NULL,
        dry_run INTEGER NOT NULL
    );
    CREATE INDEX actions_by_call ON actions (call_id);
    CREATE TABLE attestations (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        scope TEXT NOT NULL,
        state TEXT NOT NULL,
        reasons TEXT NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class SandboxRow:
    name: str
    labels: dict[str, str]
    priority: str
    cgroup_path: str
    token_sha256: str
    adopted: bool
    created_at: float


@dataclass(frozen=True)
class CallRow:
    call_id: str
    sandbox: str
    tool: str
    command: str
    cgroup_path: str
    state: str
    started_at: float
    deadline: float | None
    limits: list[dict[str, Any]]
    ended_at: float | None
    summary: dict[str, Any] | None


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages, stalling that
        # tool call by milliseconds (an fsync). checkpoint() does it instead, from the daemon's main loop,
        # on a connection of its own, so writers never wait for it.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._migrate()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._tx():
            current = self.schema_version
            if current > len(_MIGRATIONS):
                raise RuntimeError(f"{self.path}: ledger schema version {current} is newer than this daemon "
                                   f"({len(_MIGRATIONS)}); upgrade hostwarden or move the ledger aside")
            for version, script in enumerate(_MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """One statement in its own implicit transaction: as atomic and durable as _tx, without the
        separate BEGIN and COMMIT round trips (it runs twice per tool call)."""
        with self._lock:
            self._db.execute(sql, params)

    def checkpoint(self) -> int:
        """Copy committed WAL pages into the database file (PASSIVE: never blocks a writer); the WAL file
        is then reused from its start. Called about once a second; a no-op when nothing was written.
        Returns the number of WAL frames now in the database file."""
        _busy, _frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(copied)

    def close(self) -> None:
        with self._lock:
            self._checkpointer.close()
            self._db.close()

    # sandboxes

    def add_sandbox(self, row: SandboxRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO sandboxes VALUES (?,?,?,?,?,?,?)",
                       (row.name, json.dumps(row.labels), row.priority, row.cgroup_path, row.token_sha256,
                        int(row.adopted), row.created_at))

    def delete_sandbox(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sandboxes WHERE name = ?", (name,))

    def sandboxes(self) -> list[SandboxRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM sandboxes ORDER BY name").fetchall()
        return [SandboxRow(r[0], json.loads(r[1]), r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    # calls

    def begin_call(self, call_id: str, sandbox: str, tool: str, command: str, cgroup_path: str,
                   started_at: float, deadline: float | None, limits: list[dict[str, Any]]) -> None:
        self._write("INSERT INTO calls (call_id, sandbox, tool, command, cgroup_path, state, started_at, "
                    "deadline, limits) VALUES (?,?,?,?,?,'running',?,?,?)",
                    (call_id, sandbox, tool, command, cgroup_path, started_at, deadline, json.dumps(limits)))

    def finish_call(self, call_id: str, ended_at: float, summary: dict[str, Any]) -> None:
        self._write("UPDATE calls SET state='finished', ended_at=?, summary=? WHERE call_id=?",
                    (ended_at, json.dumps(summary), call_id))

    def set_exit_code(self, call_id: str, exit_code: int) -> dict[str, Any] | None:
        """Fill in the exit code of a call that finished (its cgroup emptied) before the caller reported it."""
        with self._tx() as db:
            row = db.execute("SELECT summary FROM calls WHERE call_id=?", (call_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            summary = json.loads(row[0])
            if summary.get("exit_code") is None:
                summary["exit_code"] = exit_code
                db.execute("UPDATE calls SET summary=? WHERE call_id=?", (json.dumps(summary), call_id))
            return summary

    def _call(self, r: Sequence[Any]) -> CallRow:
        return CallRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9],
                       json.loads(r[10]) if r[10] else None)

    def get_call(self, call_id: str) -> CallRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM calls WHERE call_id=?", (call_id,)).fetchone()
        return self._call(r) if r else None

    def running_calls(self) -> list[CallRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM calls WHERE state='running' ORDER BY started_at").fetchall()
        return [self._call(r) for r in rows]

    def query_calls(self, sandbox: str | None = None, since: float | None = None,
                    limit: int = 100) -> list[CallRow]:
        sql, args = "SELECT * FROM calls WHERE 1=1", []
        if sandbox:
            sql += " AND sandbox=?"
            args.append(sandbox)
        if since is not None:
            sql += " AND started_at>=?"
            args.append(since)
        sql += " ORDER BY started_at DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._call(r) for r in rows]

    def recent_peaks(self, sandbox: str, tool: str, n: int) -> list[int]:
        """Peak memory of the last n finished calls of this tool in this sandbox (for `auto` intents)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT json_extract(summary, '$.peak_memory_bytes') FROM calls WHERE sandbox=? AND tool=? "
                "AND state='finished' AND json_extract(summary, '$.peak_memory_bytes') IS NOT NULL "
                "ORDER BY ended_at DESC LIMIT ?", (sandbox, tool, n)).fetchall()
        return [int(r[0]) for r in rows]

    # actions and attestations

    def add_action(self, at: float, sandbox: str, call_id: str | None, kind: str, reason: str, detail: str,
                   hint: str, dry_run: bool) -> None:
        self._write("INSERT INTO actions (at, sandbox, call_id, kind, reason, detail, hint, dry_run) "
                    "VALUES (?,?,?,?,?,?,?,?)", (at, sandbox, call_id, kind, reason, detail, hint, int(dry_run)))

    def actions(self, call_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT at, kind, reason, detail, hint, dry_run FROM actions WHERE call_id=? "
                                    "ORDER BY id", (call_id,)).fetchall()
        return [{"at": r[0], "kind": r[1], "reason": r[2], "detail": r[3], "hint": r[4], "dry_run": bool(r[5])}
                for r in rows]

    def add_attestation(self, at: float, scope: str, state: str, reasons: list[str]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO attestations (at, scope, state, reasons) VALUES (?,?,?,?)",
                       (at, scope, state, json.dumps(reasons)))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: int(self._db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                    for t in ("sandboxes", "calls", "actions", "attestations")}

    def apply_retention(self, days: float, now: float | None = None) -> int:
        """Delete finished calls, their actions and attestation rows older than `days`; returns calls removed."""
        cutoff = (now or time.time()) - days * 86400
        with self._tx() as db:
            db.execute("DELETE FROM actions WHERE at < ? AND (call_id IS NULL OR call_id IN "
                       "(SELECT call_id FROM calls WHERE state='finished' AND ended_at < ?))", (cutoff, cutoff))
            removed = db.execute("DELETE FROM calls WHERE state='finished' AND ended_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM attestations WHERE at < ?", (cutoff,))
        return removed
