"""The label store: every judge query and its answer, written durably BEFORE the answer is used.

Judge labels stand for paid human annotations, so a rerun (or a resumed crash) looks each query up here
first and only asks the judge for what is missing. Budget accounting counts labels per iteration.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import time
from pathlib import Path

from pipeline import distributed
from pipeline.durable import StateError
from reward_sources.contracts import is_shardable

log = logging.getLogger(__name__)


def separates(scores: list[float], min_margin: float = 0.0) -> bool:
    """Whether a prompt's valid judge scores make a training pair: at least two, not all equal, and the highest and
    lowest at least min_margin apart (the online loop's rule; the world report simulates it with this too)."""
    return len(scores) >= 2 and max(scores) != min(scores) and max(scores) - min(scores) >= min_margin

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


def judge_handler(judge):
    """(row, response, seed) items -> a scalar judge's scores: what each process runs for its share."""
    return lambda items: judge.score([i[0] for i in items], [i[1] for i in items], seed=items[0][2])


class LabelStore:
    chunk = 256  # queries per judge call and commit

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recover = ("it holds paid labels, so it is not replaced: restore it from a backup, or move it away to start "
                   "a store without them (every label is then asked again)")
        self.db = sqlite3.connect(self.path)
        try:
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a label acknowledged is a label on disk
            self.db.execute(_SCHEMA)
            self.db.commit()
        except sqlite3.OperationalError:  # a full disk or a locked file: the CLI's one-line I/O error
            self.db.close()
            raise
        except sqlite3.DatabaseError as e:  # not a database, truncated, malformed
            self.db.close()
            raise StateError(f"label store '{self.path}' is corrupt ({e}); {recover}") from None
        self.asked = 0  # queries sent to a judge by this process
        self.reused = 0  # answers served from the store
        self.judged_per_process: list[int] = []  # scalar queries each process answered (online resets it)

    def _lookup(self, keys: list[str]) -> dict[str, float | None]:
        """Stored answers; a stored failure (NULL) is not returned, so a rerun asks that query again."""
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            # a pairwise answer outside [0, 1] stored by an older version is no answer: asked again
            q = (f"SELECT key, answer FROM labels WHERE answer IS NOT NULL AND key IN ({','.join('?' * len(chunk))}) "
                 "AND (kind != 'pairwise' OR answer BETWEEN 0 AND 1)")
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
        # Asked and committed in chunks: a process killed while the judge works loses one chunk of answers at most.
        for s in range(0, len(ask_idx), self.chunk):
            part = ask_idx[s : s + self.chunk]
            answers, raws = self._ask(judge, ask, kind, [rows[i] for i in part], [a[i] for i in part],
                                      [b[i] for i in part])
            now = time.time()
            with self.db:  # REPLACE: a failure stored by an earlier run is overwritten by the new answer
                self.db.executemany(
                    "INSERT OR REPLACE INTO labels VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(keys[i], str(iteration), str(rows[i]["id"]), judge.name, kind, a[i], b[i],
                      ans, None if raw is None else json.dumps(raw), now)
                     for i, ans, raw in zip(part, answers, raws)])
            found.update({keys[i]: ans for i, ans in zip(part, answers)})
            self.asked += len(part)
        self.reused += len(keys) - len(ask_idx)
        return [found[k] for k in keys]

    def _ask(self, judge, ask, kind, rows, a, b) -> tuple[list[float | None], list]:
        """The judge's answers, with failures as None: a judge that raises (for the batch, then per query) or
        answers NaN/inf/non-numbers, or a pairwise answer outside [0, 1] (a probability that a is better), gives
        None, stored as NULL and never used as a score."""
        try:
            answers = list(ask(rows, a, b))
            if len(answers) != len(rows):
                raise ValueError(f"judge returned {len(answers)} answers for {len(rows)} queries")
            raws = list(getattr(judge, "last_raw", None) or [None] * len(rows))
        except Exception as e:  # noqa: BLE001 - a judge failure is data, not a crash
            if len(rows) == 1:
                log.warning("judge %s failed: %s", judge.name, (str(e).splitlines() or [type(e).__name__])[0])
                return [None], [None]
            answers, raws = [], []
            for r, x, y in zip(rows, a, b):
                ans, raw = self._ask(judge, ask, kind, [r], [x], [y])
                answers += ans
                raws += raw
            return answers, raws
        clean = []
        for ans in answers:
            try:
                v = None if ans is None else float(ans)
            except (TypeError, ValueError):
                v = None
            ok = v is not None and math.isfinite(v) and (kind != "pairwise" or 0 <= v <= 1)
            clean.append(v if ok else None)
        if any(c is None and x is not None for c, x in zip(clean, answers)):
            log.warning("judge %s gave %d non-finite, non-numeric or out-of-range answer(s), recorded as failures",
                        judge.name, sum(c is None and x is not None for c, x in zip(clean, answers)))
        return clean, raws

    def scalar(self, judge, rows: list[dict], responses: list[str], iteration, seed: int = 0) -> list[float | None]:
        def ask(r, a, _b):
            if not is_shardable(judge):
                return judge.score(r, a, seed=seed)
            # inside online's on_main(serve=...) the other processes answer their share; elsewhere this one
            answers, done = distributed.parallel_map("judge", judge_handler(judge), list(zip(r, a, [seed] * len(a))))
            self.judged_per_process = [x + y for x, y in zip(self.judged_per_process, done)] or done
            return answers

        return self._label(judge, "scalar", rows, responses, [None] * len(responses), iteration, seed, ask)

    def pairwise(self, judge, rows: list[dict], a: list[str], b: list[str], iteration, seed: int = 0):
        return self._label(judge, "pairwise", rows, a, b, iteration, seed,
                           lambda r, x, y: judge.compare(r, x, y, seed=seed))

    def scalar_answers(self, iteration) -> list[tuple[str, str, float]]:
        """(prompt id, response, answer) of every answered scalar query of one iteration, in the order asked: what
        a run's pairs were formed from, for reading back after the run (eval/training_pairs.py)."""
        q = ("SELECT prompt_id, response_a, answer FROM labels WHERE iteration = ? AND kind = 'scalar' "
             "AND answer IS NOT NULL ORDER BY created, rowid")
        return [(p, r, float(a)) for p, r, a in self.db.execute(q, (str(iteration),)).fetchall()]

    def spent(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT iteration, COUNT(*) FROM labels GROUP BY iteration").fetchall())

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def close(self):
        self.db.close()


# ---------------------------------------------------------------- labelling a block through the store


def label_responses(store: LabelStore, judge, rows: list[dict], responses: list[list[str]], iteration,
                    seed: int, stats: dict | None = None) -> list[list[float | None]]:
    """Judge scores for every response of every prompt (pairwise judges: round-robin wins, both orders).

    A failed judge answer (None: the judge raised or gave NaN, see LabelStore) is no score: a scalar response
    scores None, a pairwise response whose every comparison failed scores None. `stats`, when given, gets
    "labels" and "failed" counts added (for online.max_judge_failure_rate)."""
    if judge.kind == "scalar":
        flat_rows = [r for r, ys in zip(rows, responses) for _ in ys]
        flat = store.scalar(judge, flat_rows, [y for ys in responses for y in ys], iteration, seed)
        count_answers(stats, flat)
        out, i = [], 0
        for ys in responses:
            out.append(flat[i : i + len(ys)])
            i += len(ys)
        return out
    idx = [(p, i, j) for p, ys in enumerate(responses) for i in range(len(ys)) for j in range(i + 1, len(ys))]
    answers = store.pairwise(judge, [rows[p] for p, _, _ in idx], [responses[p][i] for p, i, _ in idx],
                             [responses[p][j] for p, _, j in idx], iteration, seed)
    count_answers(stats, answers)
    wins = [[0.0] * len(ys) for ys in responses]
    answered = [[False] * len(ys) for ys in responses]
    for (p, i, j), a in zip(idx, answers):
        if a is not None:
            wins[p][i] += a
            wins[p][j] += 1 - a
            answered[p][i] = answered[p][j] = True
    return [[w if ok else None for w, ok in zip(ws, oks)] for ws, oks in zip(wins, answered)]


def count_answers(stats: dict | None, answers: list) -> None:
    """Add an answer batch's label and failure counts to `stats` (online.max_judge_failure_rate)."""
    if stats is not None:
        stats["labels"] = stats.get("labels", 0) + len(answers)
        stats["failed"] = stats.get("failed", 0) + sum(a is None for a in answers)
