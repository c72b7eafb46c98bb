"""Source relevance in the online loop (Chen & Wang; docs/algorithms.md §2): which sources matter to the judge,
how much scoring each deserves, and a composite transfer arm. The estimator is pipeline/selection/relevance.py.

The first `pilot_blocks` blocks of each iteration are a pilot (self arm; every source scores online responses and
pool, the judge labels the K online ones as usual). From the pilot: source task m's pairs labelled by
sign(r_m(y1) − r_m(y0)), the judge's by its scores, φ = features → `estimate_relevance` → ν̂ (Lasso) →
allocation ∝ |ν̂| with a floor (`allocate_budget`). After the pilot the arm is the composite Σ ν̂_m z_m (z_m =
source m standardised with the pilot's mean and sd), a Best-of-N arm like any source (or, with bandit: true, UCB
over the sources and the composite). Per block, source m scores the pools of its share of the block's prompts,
`split_budget(source_budget·M·n, allocation)` (all pools when source_budget = 1); a source that did not score a
prompt adds 0 (its mean) there. Label budget: the judge labels the K online responses, as no transfer does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline.config import f
from pipeline.selection.bandit import UCB, UCBOptions
from pipeline.selection.base import SELF, FeatureOptions, LabelContext, LoopSelector, blas_threads, candidate_pairs
from pipeline.selection.relevance import allocate_budget, estimate_relevance, split_budget

COMPOSITE = "composite"


@dataclass
class RelevanceOptions(FeatureOptions):
    block_size: int = f(16, ge=1,
                        help="prompts per block; the pilot is the first pilot_blocks blocks of each iteration")
    pilot_blocks: int = f(1, ge=1, help="blocks of each iteration spent on the pilot (self arm, every source scores)")
    rank: int | None = f(None, ge=1, help="rank of the shared source representation (None = min(sources, 3))")
    floor: float = f(0.05, ge=0, le=1, help="least share of the scoring budget any source keeps")
    source_budget: float = f(1.0, gt=0, le=1, help="share (0, 1] of all sources x pools that is scored after the pilot")
    repilot: bool = f(True, "refit relevance every iteration (false: keep the first iteration's fit)")
    bandit: bool = f(False, "UCB over the sources and the composite instead of the composite alone")
    c: float = f(1.0, ge=0, help="the bandit's exploration bonus (bandit: true)")
    self_win: float | None = f(None, ge=0, le=1,
                               help="the bandit's self-arm win (None = online.replace_num / online.k + 0.05)")
    lam_scale: float = f(0.5, gt=0,
                         help="Lasso penalty λ = lam_scale·sqrt(rank / judge pairs) (inferred: the noise of ŵ_T)")
    max_pairs: int = f(2000, ge=1, help="most source pairs per source used to fit the representation")


def capped_split(total: int, fractions: np.ndarray, cap: int) -> list[int]:
    """`relevance.split_budget`, with no source above `cap` (a block's prompts); what a capped source cannot use
    goes to the others in proportion, so source_budget = 1 means every source scores every pool."""
    counts = np.zeros(len(fractions), int)
    remaining, active = int(min(total, cap * len(fractions))), np.arange(len(fractions))
    while remaining > 0 and len(active):
        counts[active] += split_budget(remaining, np.maximum(fractions[active], 1e-12))
        remaining = int(np.clip(counts - cap, 0, None).sum())
        counts = np.minimum(counts, cap)
        active = np.flatnonzero(counts < cap)
    return counts.tolist()


class RelevanceSelector(LoopSelector):
    """Source relevance by Lasso: ν̂ per source from a pilot, scoring budget ∝ |ν̂|, a composite transfer arm."""

    Options = RelevanceOptions

    def __init__(self, arms: list[str], seed: int, opts: RelevanceOptions):
        o = opts
        super().__init__(arms, seed, SELF, o.block_size, o.features, o.dim, o.encoder,
                         0.55 if o.self_win is None else o.self_win)
        if o.floor * len(arms) > 1:
            raise ValueError(f"relevance: floor {o.floor} x {len(arms)} sources exceeds the whole budget")
        self.pilot_blocks, self.rank, self.floor = o.pilot_blocks, o.rank or min(len(arms), 3), o.floor
        self.source_budget, self.repilot, self.bandit, self.c = o.source_budget, o.repilot, o.bandit, o.c
        self.lam_scale, self.max_pairs = o.lam_scale, o.max_pairs
        self.n[COMPOSITE], self.wins[COMPOSITE] = 0, 0.0
        self.fit: dict | None = None  # {"nu", "mean", "sd", "allocation"}: plain floats per source (JSON-exact)
        self.pilot, self.in_pilot, self.block, self.ucb = [], True, 0, None

    @property
    def uses_pool(self) -> bool:
        return True

    def new_iteration(self, t: int) -> None:
        super().new_iteration(t)
        if self.repilot or self.fit is None:
            self.fit = None
        self.pilot, self.block = [], 0
        if self.bandit:
            self.ucb = UCB(self.arms + [COMPOSITE], self.seed,
                           UCBOptions(c=self.c, block_size=self.block_size, self_win=self.self_win))
            self.ucb.new_iteration(t)
        if self.fit is not None:
            self.record(nu=self.fit["nu"], allocation=self.fit["allocation"], pilot="carried from an earlier iteration")

    def choose(self) -> tuple[str, float]:
        self.in_pilot = self.fit is None
        if self.in_pilot or not any(self.fit["nu"].values()):  # ν̂ = 0: the composite would rank pools at random
            return SELF, float("nan")
        return self.ucb.choose() if self.bandit else (COMPOSITE, float("nan"))

    def update(self, arm: str, wins: list[float]) -> None:
        super().update(arm, wins)
        if self.ucb is not None and not self.in_pilot:
            self.ucb.update(arm, wins)
        self.block += 1

    def label(self, ctx: LabelContext):
        scores = super().label(ctx)
        if self.in_pilot:
            self.pilot.append((ctx.rows, ctx.online, ctx.pool, scores))
            if len(self.pilot) >= self.pilot_blocks:
                with blas_threads():
                    self._fit(ctx)
        return scores

    def _fit(self, ctx: LabelContext) -> None:
        rows = [r for b in self.pilot for r in b[0]]
        online = [ys for b in self.pilot for ys in b[1]]
        cands = [list(ys) + list(ps) for b in self.pilot for ys, ps in zip(b[1], b[2])]
        judged = [s for b in self.pilot for s in b[3]]
        t0 = time.perf_counter()
        phi = self.features.fit_transform(ctx, rows, cands)
        t1 = time.perf_counter()
        rng = self.rng("relevance-pilot")
        pairs = candidate_pairs(cands)
        src_Z, src_y, used = [], [], []
        raw = {m: ctx.cache.scores(m, rows, cands) for m in self.arms}
        for m in self.arms:
            keep = [(p, i, j) for p, i, j in pairs if raw[m][p][i] != raw[m][p][j]]
            if len(keep) > self.max_pairs:
                keep = [keep[q] for q in sorted(rng.choice(len(keep), self.max_pairs, replace=False))]
            if keep:
                src_Z.append(np.array([phi[p][i] - phi[p][j] for p, i, j in keep]))
                src_y.append(np.array([float(raw[m][p][i] > raw[m][p][j]) for p, i, j in keep]))
                used.append(m)
        tgt = [(p, i, j) for p, i, j in candidate_pairs(online)
               if judged[p][i] is not None and judged[p][j] is not None and judged[p][i] != judged[p][j]]
        nu = {m: 0.0 for m in self.arms}
        lam = None
        if used and len(tgt) >= 2:
            tZ = np.array([phi[p][i] - phi[p][j] for p, i, j in tgt])
            ty = np.array([float(judged[p][i] > judged[p][j]) for p, i, j in tgt])
            fit = estimate_relevance(src_Z, src_y, tZ, ty, k=min(self.rank, len(used), tZ.shape[1]),
                                     lam_scale=self.lam_scale)
            nu.update({m: float(v) for m, v in zip(used, fit.nu)})
            lam = float(fit.lam)
        flat = {m: np.array([v for vs in raw[m] for v in vs], float) for m in self.arms}
        alloc = allocate_budget(np.array([nu[m] for m in self.arms]), self.floor)
        self.fit = {"nu": nu, "mean": {m: float(flat[m].mean()) for m in self.arms},
                    "sd": {m: float(flat[m].std()) or 1.0 for m in self.arms},
                    "allocation": {m: float(a) for m, a in zip(self.arms, alloc)}}
        self.record(nu=nu, allocation=self.fit["allocation"], lasso_lambda=lam, pilot_prompts=len(rows),
                    target_pairs=len(tgt), source_pairs={m: len(y) for m, y in zip(used, src_y)},
                    features_s=t1 - t0, fit_s=time.perf_counter() - t1)

    def pool_scores(self, arm, cache, rows, pool):
        if arm != COMPOSITE:
            return super().pool_scores(arm, cache, rows, pool)
        n = len(rows)
        counts = capped_split(round(self.source_budget * len(self.arms) * n),
                              np.array([self.fit["allocation"][m] for m in self.arms]), n)
        out = [np.zeros(len(p)) for p in pool]
        scored = dict(self.current.get("pool_scored", {}))
        for m, cnt in zip(self.arms, counts):
            idx = sorted(self.rng(f"budget-{self.block}-{m}").permutation(n)[:cnt].tolist())
            if not idx:
                continue
            got = cache.scores(m, [rows[q] for q in idx], [pool[q] for q in idx])
            for q, vs in zip(idx, got):
                out[q] += self.fit["nu"][m] * (np.asarray(vs, float) - self.fit["mean"][m]) / self.fit["sd"][m]
            scored[m] = scored.get(m, 0) + len(idx)
        self.record(pool_scored=scored)
        return [o.tolist() for o in out]

    def state(self) -> dict:
        return {**super().state(), "fit": self.fit}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.fit = state.get("fit")
