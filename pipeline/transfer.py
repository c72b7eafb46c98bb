"""Transfer from source rewards (TPO, docs/algorithms.md §1 steps 3–6): the Best-of-N mechanics.

A source's transfer policy is Best-of-N over the current policy's pool ranked by that source; its top
`replace_num` responses replace online responses 0..replace_num-1 of the prompt. Which source a block transfers
from is a selector's choice (pipeline/selection/); this module only scores and swaps.
"""
from __future__ import annotations

import random

from pipeline import distributed


def arm_names(sources: list[dict]) -> list[str]:
    names = [s.get("label") or s["name"] for s in sources]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"sources {sorted(dupes)} appear twice; give each a distinct 'label'")
    return names


def score_items(scorer, arm: str):
    """A handler over (document, response, reference) items: the source's scores as floats, checked."""
    def run(items: list[tuple]) -> list[float]:
        vals = scorer([d for d, _, _ in items], [y for _, y, _ in items], [ref for _, _, ref in items])
        if len(vals) != len(items):
            raise ValueError(f"source '{arm}' returned {len(vals)} scores for {len(items)} responses")
        return [float(v) for v in vals]
    return run


class ScoreCache:
    """Source scores per (source, prompt id, response) within one iteration. Under several processes the scoring
    is shared out (distributed.parallel_map); `items_per_process` counts who scored how many."""

    def __init__(self, scorers: dict):
        self.scorers, self.cache, self.items_per_process = scorers, {}, []

    def handlers(self) -> dict:
        return {f"source:{arm}": score_items(fn, arm) for arm, fn in self.scorers.items()}

    def scores(self, arm: str, rows: list[dict], responses: list[list[str]]) -> list[list[float]]:
        todo = {}
        for r, ys in zip(rows, responses):
            for y in ys:
                if (arm, r["id"], y) not in self.cache:
                    todo[(arm, r["id"], y)] = (r["document"], y, r["summary"])
        if todo:
            vals, done = distributed.parallel_map(f"source:{arm}", score_items(self.scorers[arm], arm),
                                                  list(todo.values()))
            self.cache.update(zip(todo, vals))
            self.items_per_process = [a + b for a, b in zip(self.items_per_process, done)] or done
        return [[self.cache[(arm, r["id"], y)] for y in ys] for r, ys in zip(rows, responses)]


def best_of_n(pool_scores: list[float], m: int, rng: random.Random) -> list[int]:
    """Indices of the top-m pool responses; ties broken at random, never toward the first sample."""
    order = sorted(range(len(pool_scores)), key=lambda j: (-pool_scores[j], rng.random()))
    return order[:m]


def transfer(online: list[list[str]], pool: list[list[str]], pool_scores: list[list[float]], replace_num: int,
             rng: random.Random) -> list[list[str]]:
    out = []
    for ys, p, s in zip(online, pool, pool_scores):
        chosen = [p[j] for j in best_of_n(s, min(replace_num, len(p)), rng)]
        out.append(chosen + ys[len(chosen):])
    return out
