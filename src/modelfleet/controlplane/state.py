"""The control plane's state: one SQLite file in the server's state folder.

Models, endpoint configs, endpoints, and Application Auto Scaling's scalable targets and
scaling policies are kept as the documents the API took and answers
(JSON text), keyed by name (case-insensitively, as the service compares names). An endpoint
also keeps what it runs (``deployed``: its config and models as they were when it was created or
last updated, with each variant's current weight and instance count), so a restart brings it
back as it was even after its config or models were deleted.

One writer: the folder is locked (``control.lock``, ``flock``) for the server's life, so a
second server on the same folder refuses to start instead of both writing. The schema is
versioned (SQLite's ``user_version``); :data:`MIGRATIONS` are applied in order, each in its
own transaction, and a file written by a newer modelfleet is refused, never downgraded.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from modelfleet.errors import CacheInUseError

Table = Literal["models", "endpoint_configs", "endpoints", "scalable_targets", "scaling_policies"]

#: schema version i+1 is reached by MIGRATIONS[i]
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        created REAL NOT NULL,
        document TEXT NOT NULL
    );
    CREATE TABLE endpoint_configs (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        created REAL NOT NULL,
        document TEXT NOT NULL
    );
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        created REAL NOT NULL,
        document TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE scalable_targets (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        created REAL NOT NULL,
        document TEXT NOT NULL
    );
    CREATE TABLE scaling_policies (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        created REAL NOT NULL,
        document TEXT NOT NULL
    );
    """,
)


class StateStore:
    """The state folder's database (``control.db``); every method is one transaction."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self._lock_file = (folder / "control.lock").open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise CacheInUseError(
                f"the state folder {folder} is in use by another modelfleet server; give each"
                " server its own --state-dir"
            ) from None
        self._mutex = threading.Lock()  # one connection, used from worker threads
        self._db = sqlite3.connect(
            folder / "control.db", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._mutex:
            version = self.version
            if version > len(MIGRATIONS):
                raise CacheInUseError(
                    f"the state in {self.folder} has schema version {version}, newer than this"
                    f" modelfleet's {len(MIGRATIONS)}: run the newer modelfleet, or another"
                    " --state-dir"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {target}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def get(self, table: Table, name: str) -> dict[str, Any] | None:
        with self._mutex:
            row = self._db.execute(
                f"SELECT document FROM {table} WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def all(self, table: Table) -> list[dict[str, Any]]:
        """Every document of ``table``, oldest first."""
        with self._mutex:
            rows = self._db.execute(
                f"SELECT document FROM {table} ORDER BY created, name"
            ).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    def insert(self, table: Table, name: str, document: dict[str, Any]) -> bool:
        """Add ``document``; False if ``name`` is taken (case aside)."""
        text = json.dumps(document, separators=(",", ":"))
        with self._mutex:
            try:
                self._db.execute(
                    f"INSERT INTO {table} (name, created, document) VALUES (?, ?, ?)",
                    (name, time.time(), text),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def update(self, table: Table, name: str, document: dict[str, Any]) -> bool:
        """Replace the document of ``name``; False if there is none."""
        text = json.dumps(document, separators=(",", ":"))
        with self._mutex:
            cursor = self._db.execute(
                f"UPDATE {table} SET document = ? WHERE name = ?", (text, name)
            )
        return cursor.rowcount == 1

    def delete(self, table: Table, name: str) -> bool:
        with self._mutex:
            cursor = self._db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        return cursor.rowcount == 1
