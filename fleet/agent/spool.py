"""Store-and-forward for telemetry: a bounded on-disk queue that counts what it had to drop.

SQLite, so a sample survives an agent restart and a half-written one never comes back.
Blocking: the agent calls it off the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class TelemetrySpool:
    def __init__(self, path: Path, max_samples: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._max = max_samples
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INT)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('dropped', 0)")

    def put(self, payload: bytes) -> None:
        """Append a sample; when full, drop the oldest and count it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO samples (payload) VALUES (?)", (payload,))
            (count,) = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()
            excess = count - self._max
            if excess > 0:
                self._db.execute(
                    "DELETE FROM samples WHERE seq IN "
                    "(SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                self._db.execute(
                    "UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,)
                )
            self._db.execute("COMMIT")

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM samples ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def ack(self, through_seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM samples WHERE seq <= ?", (through_seq,))

    def dropped(self) -> int:
        with self._lock:
            (value,) = self._db.execute(
                "SELECT value FROM counters WHERE name = 'dropped'"
            ).fetchone()
        return int(value)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
