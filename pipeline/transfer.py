"""Transfer from source rewards (TPO, docs/algorithms.md §1 steps 3–6): Best-of-N transfer arms and selectors.

A source's transfer policy is Best-of-N over the current policy's pool ranked by that source; its top
`replace_num` responses replace online responses 0..replace_num-1 of the prompt. The win signal of a source
arm on a prompt is 1 when the judge's best of the K responses is a transferred one; the self arm's win is a
constant (the bar a source must clear; by default replace_num / K + 0.05, see pipeline/selectors.py).
Selectors pick the arm per block of prompts; pipeline/selectors.py builds them by name.

A selector may also take over how a block is labelled (`label`) and how a pool is ranked for an arm of its
own (`pool_scores`): the four selection stages of docs/algorithms.md §2–5 (pipeline/selection/adapters.py) do so.
"""
from __future__ import annotations

import math
import random

from pipeline import distributed
from pipeline.labels import label_responses

SELF = "self"


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


class Selector:
    """Fixed arm (pure exploit) or no transfer (the self arm). UCB below overrides choose/update.

    The loop (online.run_iteration) calls, per block: choose() -> arm; pool_scores(arm, ...) when the arm is
    not the self arm; label(ctx) -> one judge-side score per online response (chosen = highest, rejected =
    lowest); update(arm, wins). state() is JSON and load_state(state()) restores it exactly."""

    def __init__(self, arms: list[str], arm: str = SELF, self_win: float = 0.55, block_size: int = 0):
        if arm not in arms + [SELF]:
            raise ValueError(f"fixed selector arm '{arm}' is not a source; known: {', '.join(arms)}")
        self.arms, self.arm, self.self_win, self.block_size = arms, arm, self_win, block_size
        self.n = {a: 0 for a in arms + [SELF]}
        self.wins = {a: 0.0 for a in arms + [SELF]}

    @property
    def uses_pool(self) -> bool:
        """Whether the loop must draw the Best-of-N pool (online.n_pool samples per prompt): a fixed source arm
        does; no transfer (the self arm for good) does not, whatever sources the recipe lists."""
        return bool(self.arms) and self.arm != SELF

    def new_iteration(self, t: int) -> None:
        pass

    def choose(self) -> tuple[str, float]:
        return self.arm, float("nan")

    def pool_scores(self, arm: str, cache: "ScoreCache", rows: list[dict], pool: list[list[str]]) -> list[list[float]]:
        """Scores that rank each prompt's pool for `arm` (a source's own scores by default)."""
        return cache.scores(arm, rows, pool)

    def label(self, ctx) -> list[list[float | None]]:
        """Per-response scores of a block (ctx: pipeline.selection.loop.LabelContext). Default: the judge
        scores all K online responses, through the label store (docs/algorithms.md §1 step 4)."""
        return label_responses(ctx.store, ctx.judge, ctx.rows, ctx.online, ctx.iteration, ctx.seed, ctx.judge_stats)

    def info(self) -> dict:
        """This iteration's diagnostics, written into metrics.json under "selector"."""
        return {}

    def update(self, arm: str, wins: list[float]) -> None:
        self.n[arm] += len(wins)
        self.wins[arm] += sum(wins)

    def state(self) -> dict:
        return {"n": dict(self.n), "wins": dict(self.wins)}

    def load_state(self, state: dict) -> None:
        self.n.update(state["n"])
        self.wins.update(state["wins"])


class UCB(Selector):
    """V(a) = mean_win(a) + c / sqrt(n(a)); untried arms first (at random); argmax used for the next block."""

    def __init__(self, arms, c: float = 1.0, block_size: int = 200, self_win: float = 0.55, carry: bool = False,
                 seed: int = 0):
        super().__init__(arms, SELF, self_win, block_size)
        self.c, self.carry, self.seed, self.rng = c, carry, seed, random.Random(seed)

    @property
    def uses_pool(self) -> bool:
        return bool(self.arms)  # it starts on the self arm but may choose any source

    def new_iteration(self, t: int) -> None:
        # Reseeded per iteration (not carried) so a run resumed at iteration t breaks ties exactly as an
        # uninterrupted one does.
        self.rng = random.Random(f"{self.seed}-{t}")
        if not self.carry:  # the paper resets the statistics every iteration
            self.n = {a: 0 for a in self.n}
            self.wins = {a: 0.0 for a in self.wins}

    def value(self, arm: str) -> float:
        return self.wins[arm] / self.n[arm] + self.c / math.sqrt(self.n[arm])

    def choose(self) -> tuple[str, float]:
        untried = [a for a in self.n if self.n[a] == 0]
        if untried:
            return self.rng.choice(untried), float("inf")
        values = {a: self.value(a) for a in self.n}
        best = max(values.values())
        arm = self.rng.choice([a for a, v in values.items() if v == best])
        return arm, best


# Every selector and its options (defaults and meaning: the classes here and in pipeline/selection/adapters.py).
SELECTOR_KEYS = {
    "none": set(), "fixed": {"arm"}, "ucb": {"c", "block_size", "self_win", "carry"},
    "relevance": {"block_size", "pilot_blocks", "rank", "dim", "features", "floor", "source_budget", "repilot",
                  "bandit", "c", "self_win", "lam_scale", "max_pairs", "encoder"},
    "dual_active": {"teachers", "persona", "budget", "batch", "warmup", "features", "dim", "gamma", "lam", "arm",
                    "encoder"},
    "lowrank": {"population", "target", "teacher", "rank", "budget", "features", "dim", "gamma", "arm", "encoder"},
    "shared": {"dim", "hidden", "rep_dim", "steps", "batch_size", "lr", "adapter", "folds", "arm", "encoder"},
}


def check_selector_name(name: str) -> None:
    if name not in SELECTOR_KEYS:
        import difflib

        close = difflib.get_close_matches(name, list(SELECTOR_KEYS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown selector '{name}'; known: {', '.join(SELECTOR_KEYS)}.{hint}")


def check_selector(name: str, params: dict) -> None:
    """Unknown selector names and options fail in one line, with a did-you-mean (no heavy imports)."""
    check_selector_name(name)
    if not isinstance(params, dict):
        raise ValueError(f"selector '{name}': params must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - SELECTOR_KEYS[name])
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), sorted(SELECTOR_KEYS[name]), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown option(s) {unknown} for selector '{name}'; valid: {sorted(SELECTOR_KEYS[name])}{hint}")
