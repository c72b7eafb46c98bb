"""The label store: every judge query and its answer, written durably BEFORE the answer is used.

Judge labels stand for paid human annotations, so a rerun (or a resumed crash) looks each query up here
first and only asks the judge for what is missing. Budget accounting counts labels per iteration.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,           -- hash of (judge, seed, prompt id, response a, response b)
    iteration TEXT NOT NULL,        -- '1', '2', ... or 'eval'
    prompt_id TEXT NOT NULL,
    judge TEXT NOT NULL,
    kind TEXT NOT NULL,             -- scalar | pairwise
    response_a TEXT NOT NULL,
    response_b TEXT,
    answer REAL,                    -- NULL = the judge failed to answer
    raw TEXT,
    created REAL NOT NULL
)"""


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a label acknowledged is a label on disk
        self.db.execute(_SCHEMA)
        self.db.commit()
        self.asked = 0  # queries sent to a judge by this process
        self.reused = 0  # answers served from the store

    def _lookup(self, keys: list[str]) -> dict[str, float | None]:
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, answer FROM labels WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(dict(self.db.execute(q, chunk).fetchall()))
        return found

    def _label(self, judge, kind: str, rows, a, b, iteration, seed, ask) -> list[float | None]:
        keys = [_key(judge.name, seed, r["id"], x, y) for r, x, y in zip(rows, a, b)]
        found = self._lookup(keys)
        todo = sorted({i: None for i, k in enumerate(keys) if k not in found})
        # Identical queries inside one batch are asked once.
        first = {}
        for i in todo:
            first.setdefault(keys[i], i)
        ask_idx = list(first.values())
        if ask_idx:
            answers = ask([rows[i] for i in ask_idx], [a[i] for i in ask_idx], [b[i] for i in ask_idx])
            raws = getattr(judge, "last_raw", None) or [None] * len(ask_idx)
            now = time.time()
            with self.db:
                self.db.executemany(
                    "INSERT OR IGNORE INTO labels VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(keys[i], str(iteration), str(rows[i]["id"]), judge.name, kind, a[i], b[i],
                      None if ans is None else float(ans), None if raw is None else json.dumps(raw), now)
                     for i, ans, raw in zip(ask_idx, answers, raws)])
            found.update({keys[i]: (None if ans is None else float(ans)) for i, ans in zip(ask_idx, answers)})
            self.asked += len(ask_idx)
        self.reused += len(keys) - len(ask_idx)
        return [found[k] for k in keys]

    def scalar(self, judge, rows: list[dict], responses: list[str], iteration, seed: int = 0) -> list[float | None]:
        return self._label(judge, "scalar", rows, responses, [None] * len(responses), iteration, seed,
                           lambda r, a, _b: judge.score(r, a, seed=seed))

    def pairwise(self, judge, rows: list[dict], a: list[str], b: list[str], iteration, seed: int = 0):
        return self._label(judge, "pairwise", rows, a, b, iteration, seed,
                           lambda r, x, y: judge.compare(r, x, y, seed=seed))

    def spent(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT iteration, COUNT(*) FROM labels GROUP BY iteration").fetchall())

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def close(self):
        self.db.close()
