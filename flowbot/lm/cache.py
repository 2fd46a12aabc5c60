"""Persistent response cache (SQLite), keyed by model, messages, sampling parameters, the JSON
schema (when there is one) and sample index.

A re-run with the same model, prompt, parameters and seed is served from disk and pays nothing.
Sample *i* of a request is its own entry, so asking for 5 samples after 3 pays for 2.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowbot.lm.base import LMRequest, Usage


@dataclass
class CacheEntry:
    text: str
    usage: Usage
    origin: str | None  # the run that paid for it


def cache_key(model: str, request: LMRequest, sample_index: int) -> str:
    payload = {
        "model": model,
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "stop": request.stop,
        "sample": sample_index,
    }
    if request.schema is not None:  # only then: keys of requests without a schema stay as they were
        payload["schema"] = request.schema
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """SQLite-backed cache; ``path=None`` keeps it in memory (tests, one-off runs)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path) if self.path else ":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, model TEXT, text TEXT,"
                " prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, origin TEXT)"
            )
            self._conn.commit()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT text, prompt_tokens, completion_tokens, cost_usd, origin FROM responses WHERE key=?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return CacheEntry(row[0], Usage(row[1], row[2], row[3]), row[4])

    def put(self, key: str, model: str, text: str, usage: Usage, origin: str | None = None) -> None:
        """Store a response; ``origin`` names the run that paid for it (see LMClient ``run_id``)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?)",
                (key, model, text, usage.prompt_tokens, usage.completion_tokens, usage.cost_usd, origin),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute("SELECT model, COUNT(*) FROM responses GROUP BY model").fetchall()
        return {"entries": sum(n for _, n in rows), "by_model": dict(rows)}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
