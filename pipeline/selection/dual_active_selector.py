"""Dual active learning in the online loop (Liu, Shi, Sun; docs/algorithms.md §3): which pairs to ask which
teacher. The estimator is pipeline/selection/dual_active.py.

Candidates = pairs among each prompt's K online responses; teachers = oracle teachers of different noise (or any
judges) with costs. Random warm-up queries (teachers in turn), then greedy D-optimal batches (`select_batch`,
criterion log(1 + vᵀH⁻¹v)/cost) refitted by joint MLE of θ, β (`fit_mle`) between batches, until the cost
budget is spent; each pair is asked of one teacher at most. Scores = `lcb_scores` of every response under the
final fit. Label budget: `budget` cost units per prompt, K by default (what no transfer pays), in units of the
default teacher; teacher costs 2 / 1 / 0.5 (expert / default / novice) are inferred: an expert costs more.

`strategy` gives the natural baselines at the same cost budget, in the same code path: "random" asks uniformly
random pairs, each of a uniformly random teacher among those the remaining budget affords, and fits the same MLE
and LCB scores once at the end; "cheapest" keeps the D-optimal pairs but asks only the cheapest teacher.

The estimate's accuracy in the loop (a measurement only: it runs after the scores and draws no random numbers):
`heldout_agreement`, the share of the candidate pairs never asked whose exact-utility order (the oracle's, under
`persona`) the final θ̂ reproduces, over `heldout_pairs` pairs of different utility (`heldout_ties` left out).
Only the synthetic world's rows carry the planted facts that utility needs; on other rows it is None, as it is
when every pair of different utility was asked.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

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
from pipeline.selection.dual_active import fisher, fit_mle, lcb_scores, select_batch
from reward_sources import registry
from reward_sources.oracle import PERSONAS, TEACHERS, utility

DEFAULT_COSTS = {"expert": 2.0, "default": 1.0, "novice": 0.5}  # inferred: an expert costs more


@dataclass
class DualActiveOptions(FeatureOptions, ArmOption):
    teachers: list[Any] | None = f(None, "oracle teacher names, or mappings {label, name, params, cost} of any "
                                         "judge (None = expert, default, novice)")
    persona: str = f("default", "persona of the oracle teachers")
    budget: float | None = f(None, ge=0, help="cost units per prompt (None = online.k, what no transfer pays)")
    batch: int = f(32, ge=1, help="pairs per D-optimal batch between refits")
    warmup: int | None = f(None, ge=0, help="random warm-up queries, teachers in turn (None = 4 per teacher)")
    gamma: float = f(1.0, ge=0, help="width of the lower confidence bound of the scores")
    lam: float = f(1e-2, gt=0, help="ridge term of the Fisher information")
    strategy: Literal["doptimal", "random", "cheapest"] = f(
        "doptimal", "doptimal = D-optimal pairs x teacher worth its cost (the paper); baselines at the same cost "
                    "budget: random = random pairs, each of a random affordable teacher; cheapest = D-optimal pairs, "
                    "always the cheapest teacher")


class DualActiveSelector(LoopSelector):
    """Dual active selection: D-optimal pairs asked of the teacher worth its cost; LCB scores."""

    Options = DualActiveOptions

    def __init__(self, arms: list[str], seed: int, opts: DualActiveOptions):
        o = opts
        super().__init__(arms, seed, o.arm, 0, o.features, o.dim, o.encoder)
        # checked whatever the teachers (the held-out agreement uses it too), else unknown only after SFT
        if o.persona not in PERSONAS:
            raise ValueError(f"dual_active: unknown persona '{o.persona}'; known: {', '.join(PERSONAS)}")
        self.persona = o.persona
        self.teachers = [self._teacher(t, o.persona) for t in (o.teachers or ["expert", "default", "novice"])]
        labels = [t["label"] for t in self.teachers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"dual_active: teacher labels {labels} repeat; give each a distinct 'label'")
        self.strategy = o.strategy
        if o.strategy == "cheapest":  # the first of the cheapest, if several cost the same
            self.teachers = [min(self.teachers, key=lambda t: t["cost"])]
        self.costs = np.array([t["cost"] for t in self.teachers])
        self.budget, self.batch, self.warmup = o.budget, o.batch, o.warmup
        self.gamma, self.lam, self._judges = o.gamma, o.lam, None

    @staticmethod
    def _teacher(spec, persona: str) -> dict:
        if isinstance(spec, str):
            if spec not in TEACHERS:
                raise ValueError(f"dual_active: unknown teacher '{spec}' (oracle teachers: {', '.join(TEACHERS)}; "
                                 "or a mapping {label, name, params, cost})")
            return {"label": spec, "name": "oracle", "params": {"teacher": spec, "persona": persona},
                    "cost": DEFAULT_COSTS.get(spec, 1.0)}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"dual_active: a teacher is an oracle teacher name or a mapping with 'name', got {spec!r}")
        extra = set(spec) - {"label", "name", "params", "cost"}
        if extra:
            raise ValueError(f"dual_active: unknown teacher key(s) {sorted(extra)}; valid: cost, label, name, params")
        cost = spec.get("cost", 1.0)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 < cost < math.inf:
            raise ValueError(f"dual_active: teacher cost must be a number > 0, got {cost!r}")
        params = spec.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"dual_active: teacher params must be a mapping, got {params!r}")
        registry.check_name("judge", spec["name"])
        if spec["name"] == "oracle":  # pure Python and cheap: its options fail now, not at the first label after SFT
            try:
                build_judge("oracle", params)
            except (ValueError, TypeError) as e:
                raise ValueError(f"dual_active: teacher {spec.get('label', spec['name'])!r}: {e}") from None
        else:  # built on first use (it may load a model): its secrets at least are refused now
            registry.check_no_secrets("dual_active teacher", params)
        return {"label": spec.get("label", spec["name"]), "name": spec["name"], "params": dict(params),
                "cost": float(cost)}

    def label(self, ctx: LabelContext):
        if self._judges is None:
            self._judges = [build_judge(t["name"], t["params"]) for t in self.teachers]
        K = len(self.teachers)
        total = label_budget(self.budget, ctx.k, len(ctx.rows))
        t_start = time.perf_counter()
        with blas_threads():
            phi = self.features.fit_transform(ctx, ctx.rows, ctx.online)
            t_feat = time.perf_counter() - t_start
            t_query = 0.0
            cands = candidate_pairs(ctx.online)
            Zc = np.array([phi[p][i] - phi[p][j] for p, i, j in cands]).reshape(len(cands), -1)
            asked = np.zeros(len(cands), bool)
            Z, T, Y = [], [], []
            spent, queries = 0.0, np.zeros(K, int)

            def ask(picks):
                nonlocal spent, t_query
                t0 = time.perf_counter()
                for k in range(K):
                    mine = [c for c, tk in picks if tk == k]
                    answers = ask_pairs(ctx, self._judges[k], [cands[c] for c in mine])
                    for c, a in zip(mine, answers):
                        asked[c] = True
                        spent += self.costs[k]
                        queries[k] += 1
                        if a is not None:
                            Z.append(Zc[c])
                            T.append(k)
                            Y.append(float(a))
                t_query += time.perf_counter() - t0

            if self.strategy == "random":  # the baseline: random pairs, a random affordable teacher each
                rng, picks, cost = self.rng("dual-random"), [], 0.0
                for c in rng.permutation(len(cands)):
                    affordable = np.flatnonzero(self.costs <= total - cost + 1e-9)
                    if not len(affordable):
                        break
                    k = int(rng.choice(affordable))
                    picks.append((int(c), k))
                    cost += self.costs[k]
                ask(picks)
            # Warm-up: random pairs, teachers in turn (the MLE needs data from every teacher to start).
            order = self.rng("dual-warmup").permutation(len(cands))
            warm, cost = [], 0.0
            n_warm = 0 if self.strategy == "random" else 4 * K if self.warmup is None else int(self.warmup)
            for q, c in enumerate(order[:n_warm]):
                if cost + self.costs[q % K] <= total:
                    warm.append((int(c), q % K))
                    cost += self.costs[q % K]
            ask(warm)
            batches = 0
            while Y and self.strategy != "random":
                remaining = np.flatnonzero(~asked)
                room = total - spent
                if not len(remaining) or room < self.costs.min():
                    break
                theta, beta = fit_mle(np.array(Z), np.array(T), np.array(Y), K)
                H = fisher(theta, beta, np.array(Z), np.array(T), self.lam)
                b = int(min(self.batch, room // self.costs.min(), len(remaining)))
                # a teacher the remaining budget cannot pay for is ranked last (criterion 0), so the budget is spent
                affordable = np.where(self.costs <= room + 1e-9, self.costs, np.inf)
                sel = select_batch(theta, beta, Zc[remaining], H, b * K, affordable, unique=True)
                picks, seen, cost = [], set(), 0.0
                for pi, tk in zip(sel.pairs, sel.teachers):  # one teacher per pair; stop at the batch or budget
                    c = int(remaining[pi])
                    if c in seen or cost + self.costs[tk] > room:
                        continue
                    picks.append((c, int(tk)))
                    seen.add(c)
                    cost += self.costs[tk]
                    if len(picks) == b:
                        break
                if not picks:
                    break
                ask(picks)
                batches += 1
            ctx.judge_stats["cost"] = float(ctx.judge_stats.get("cost", 0.0) + spent)
            if not Y:
                self.record(queries=0, cost=spent, budget=total, note="no teacher answers; no pairs")
                return [[None] * len(ys) for ys in ctx.online]
            Zn, Tn = np.array(Z), np.array(T)
            theta, beta = fit_mle(Zn, Tn, np.array(Y), K)
            H = fisher(theta, beta, Zn, Tn, self.lam)
            scores = [lcb_scores(theta, H, f, self.gamma) for f in phi]
        t_fit = time.perf_counter() - t_start - t_feat - t_query
        self.last = {"theta": theta, "beta": beta, "H": H, "phi": phi, "scores": scores}
        t0 = time.perf_counter()
        # θ̂, not the LCB: the LCB subtracts a width that differs from response to response, a pessimistic rule for
        # choosing what to train on; its order would mix the estimate's errors with its uncertainty.
        heldout = heldout_agreement(ctx.rows, ctx.online, [cands[c] for c in np.flatnonzero(~asked)],
                                    Zc[~asked] @ theta, PERSONAS[self.persona])
        labels = [t["label"] for t in self.teachers]
        self.record(strategy=self.strategy, queries=dict(zip(labels, queries)),
                    cost_per_teacher=dict(zip(labels, queries * self.costs)),
                    cost=spent, budget=total, beta=dict(zip(labels, beta)), batches=batches, candidates=len(cands),
                    features_dim=int(Zc.shape[1]), **heldout, features_s=t_feat, queries_s=t_query,
                    fit_select_s=t_fit, heldout_s=time.perf_counter() - t0)
        return [s.tolist() for s in scores]


def heldout_agreement(rows: list[dict], online: list[list[str]], pairs: list[tuple[int, int, int]],
                      margins: np.ndarray, weights: dict) -> dict:
    """Agreement of the estimate's margins (one per (prompt, i, j) pair, > 0: response i is better) with the exact
    utility's order, over the pairs whose utilities differ; a zero margin counts 0.5, as in eval/world_report.py.
    Rows without planted facts have no exact utility: the agreement is then None, never a guess."""
    if not all(r.get("facts") for r in rows):
        return {"heldout_agreement": None, "heldout_pairs": None, "heldout_ties": None,
                "heldout_note": "no planted facts in the rows: the exact utility is unknown"}
    u = [[utility(r, y, weights) for y in ys] for r, ys in zip(rows, online)]
    diff = np.array([u[p][i] - u[p][j] for p, i, j in pairs])
    keep = diff != 0
    agree = np.where(margins == 0, 0.5, (np.sign(margins) == np.sign(diff)).astype(float))[keep]
    return {"heldout_agreement": float(agree.mean()) if len(agree) else None, "heldout_pairs": int(keep.sum()),
            "heldout_ties": int((~keep).sum())}
