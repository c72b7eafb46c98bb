"""Heterogeneous annotators in the online loop (LoCo-RLHF; docs/algorithms.md §4): a low-rank contextual reward
and Pessimism in Reduced Subspace. The estimator is pipeline/selection/lowrank.py.

`budget`·n random candidate pairs, each answered by one annotator drawn from the persona population; contexts =
one-hot personas; `fit_lowrank` (rank-r factorised MLE); scores = PRS lower bounds `LowRankReward.lcb` under the
TARGET persona distribution, per prompt against its mean candidate. Label budget: K pairwise queries per prompt
by default, what no transfer pays.

`pooled` is the natural baseline on the same pairs, annotators and budget: every label gets the same context
(d_x = 1, rank 1), so the fit is one Bradley–Terry reward over the whole labelling population, blind to who
answered, and the target mix cannot move it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from pipeline.config import f
from pipeline.selection.base import (
    ArmOption,
    FeatureOptions,
    LabelContext,
    LoopSelector,
    ask_pairs,
    blas_threads,
    build_judge,
    candidate_pairs,
    label_budget,
)
from pipeline.selection.lowrank import fit_lowrank
from reward_sources.oracle import PERSONAS, TEACHERS


@dataclass
class LowRankOptions(FeatureOptions, ArmOption):
    population: dict | None = f(None, "persona -> weight of the annotators who label (None = every persona, equal)")
    target: dict | None = f(None, "persona -> weight the policy should please (None = {default: 1})")
    teacher: str = f("default", "oracle teacher (noise level) of every annotator")
    rank: int = f(2, ge=1, help="rank r of the contextual reward Θ = PQᵀ")
    budget: float | None = f(None, ge=0, help="pairwise queries per prompt (None = online.k, what no transfer pays)")
    gamma: float = f(1.0, ge=0, help="width of the PRS lower bound")
    pooled: bool = f(False, "baseline: ignore the annotator's context (one context for every label, rank 1): a pooled "
                            "reward on the same labels and budget")


class LowRankSelector(LoopSelector):
    """Heterogeneous annotators: a low-rank contextual reward, PRS scores for the target persona mix."""

    Options = LowRankOptions

    def __init__(self, arms: list[str], seed: int, opts: LowRankOptions):
        o = opts
        super().__init__(arms, seed, o.arm, 0, o.features, o.dim, o.encoder)
        population = o.population or {p: 1.0 for p in PERSONAS}
        target = o.target or {"default": 1.0}
        for what, dist in (("population", population), ("target", target)):
            if not isinstance(dist, dict) or not dist:
                raise ValueError(f"lowrank: {what} must be a mapping persona -> weight, got {dist!r}")
            bad = [p for p in dist if p not in PERSONAS]
            if bad:
                raise ValueError(f"lowrank: unknown persona(s) {bad} in {what}; known: {', '.join(PERSONAS)}")
            numbers = all(not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w)
                          for w in dist.values())  # a list or NaN weight: a traceback or NaN scores otherwise
            if not numbers or any(w < 0 for w in dist.values()) or sum(dist.values()) <= 0:
                raise ValueError(f"lowrank: {what} weights must be finite numbers >= 0 with a positive sum, got {dist}")
        if o.teacher not in TEACHERS:
            raise ValueError(f"lowrank: unknown teacher '{o.teacher}'; known: {', '.join(TEACHERS)}")
        self.contexts = sorted(set(population) | set(target))
        self.population = {p: float(w) for p, w in population.items()}
        self.target = {p: float(w) for p, w in target.items()}
        self.teacher, self.rank, self.budget, self.gamma = o.teacher, o.rank, o.budget, o.gamma
        self.pooled = o.pooled
        self._judges = {}

    def x_target(self) -> np.ndarray:
        if self.pooled:
            return np.ones(1)
        w = np.array([self.target.get(p, 0.0) for p in self.contexts])
        return w / w.sum()

    def label(self, ctx: LabelContext):
        rng = self.rng("lowrank")
        t0 = time.perf_counter()
        with blas_threads():
            phi = self.features.fit_transform(ctx, ctx.rows, ctx.online)
            t_feat = time.perf_counter() - t0
            cands = candidate_pairs(ctx.online)
            n_q = min(int(round(label_budget(self.budget, ctx.k, len(ctx.rows)))), len(cands))
            picks = sorted(rng.choice(len(cands), n_q, replace=False).tolist()) if n_q else []
            pop = sorted(self.population)
            w = np.array([self.population[p] for p in pop])
            who = rng.choice(len(pop), len(picks), p=w / w.sum()) if picks else []
            X, Z, Y, counts = [], [], [], {}
            for a, persona in enumerate(pop):
                mine = [c for c, k in zip(picks, who) if k == a]
                if not mine:
                    continue
                if persona not in self._judges:
                    self._judges[persona] = build_judge("oracle", {"persona": persona, "teacher": self.teacher})
                counts[persona] = len(mine)
                onehot = np.ones(1) if self.pooled else np.eye(len(self.contexts))[self.contexts.index(persona)]
                for c, ans in zip(mine, ask_pairs(ctx, self._judges[persona], [cands[c] for c in mine])):
                    if ans is not None:
                        p, i, j = cands[c]
                        X.append(onehot)
                        Z.append(phi[p][i] - phi[p][j])
                        Y.append(float(ans))
            if not Y:
                self.record(personas=counts, labels=0, note="no annotator answers; no pairs")
                return [[None] * len(ys) for ys in ctx.online]
            rank = min(self.rank, len(X[0]), len(Z[0]))
            t1 = time.perf_counter()
            model = fit_lowrank(np.array(X), np.array(Z), np.array(Y), rank)
            scores = [model.lcb(self.x_target(), f, self.gamma, center=True) for f in phi]
            t_fit = time.perf_counter() - t1
        self.last = {"model": model, "phi": phi, "x_target": self.x_target(), "scores": scores}
        sv = np.linalg.svd(model.Theta, compute_uv=False)
        self.record(personas=counts, labels=len(Y), budget=n_q, rank=rank, pooled=self.pooled,
                    contexts=["pooled"] if self.pooled else self.contexts,
                    target=self.target, theta_singular_values=sv[: rank + 1], features_dim=len(Z[0]),
                    features_s=t_feat, fit_select_s=t_fit)
        return [s.tolist() for s in scores]
