"""The four selection stages as selectors of the online loop (recipe: `online.selector: {name, params}`).

Each reuses its estimator module's functions; what is decided here is what the loop asks and pays for.
Label budget: "no transfer" pays K judge labels per prompt; by default every stage pays the same (relevance
and shared: the judge labels the K online responses as usual; dual_active and lowrank: `budget` = K pairwise
queries per prompt, in cost units for dual_active). metrics.json records labels and cost per iteration.

- relevance (Chen & Wang, §2): the first `pilot_blocks` blocks of each iteration are a pilot (self arm; every
  source scores online responses and pool, the judge labels the K online ones as usual). From the pilot:
  source task m's pairs labelled by sign(r_m(y1) − r_m(y0)), the judge's by its scores, φ = features →
  `relevance.estimate_relevance` → ν̂ (Lasso) → allocation ∝ |ν̂| with a floor (`allocate_budget`). After the
  pilot the arm is the composite Σ ν̂_m z_m (z_m = source m standardised with the pilot's mean and sd), a
  Best-of-N arm like any source (or, with bandit: true, UCB over the sources and the composite). Per block,
  source m scores the pools of its share of the block's prompts, `split_budget(source_budget·M·n, allocation)`
  (all pools when source_budget = 1); a source that did not score a prompt adds 0 (its mean) there.
- dual_active (Liu, Shi, Sun, §3): candidates = pairs among each prompt's K online responses; teachers =
  oracle teachers of different noise (or any judges) with costs. Random warm-up queries (teachers in turn),
  then greedy D-optimal batches (`select_batch`, criterion log(1 + vᵀH⁻¹v)/cost) refitted by joint MLE of θ, β
  (`fit_mle`) between batches, until the cost budget is spent; each pair is asked of one teacher at most.
  Scores = `lcb_scores` of every response under the final fit.
- lowrank (LoCo-RLHF, §4): `budget`·n random candidate pairs, each answered by one annotator drawn from the
  persona population; contexts = one-hot personas; `fit_lowrank` (rank-r factorised MLE); scores = PRS lower
  bounds `LowRankReward.lcb` under the TARGET persona distribution, per prompt against its mean candidate.
- shared (D'Eramo et al., §5): the judge labels the K online responses (equal budget); one SharedRewardModel
  over encoder features with a regression head per source (standardised scores of every candidate) and a BT
  head for the judge (pairs of its labels), trained with equal per-task minibatches (`shared.train`);
  scores = the judge head's proxy scores, so pairs are the proxy's best vs worst. Cross-fitted (`folds`,
  inferred): a prompt is scored by a model trained without that prompt's judge labels, so the proxy
  generalises the judge rather than echoing its noise on the very responses it ranks.

Defaults marked (inferred) in the code: teacher costs 2 / 1 / 0.5 (expert / default / novice; the budget is in
units of the default teacher, the judge of no transfer), 4 warm-up queries per teacher, features = source
scores + 32 PCA components of the encoder features, LCB / PRS width γ = 1, cross-fitting in 2 folds.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.selection.loop import (LabelContext, LoopSelector, ask_pairs, blas_threads, build_judge,
                                     candidate_pairs, standardised_scores)
from pipeline.transfer import SELF, UCB

COMPOSITE = "composite"
DEFAULT_COSTS = {"expert": 2.0, "default": 1.0, "novice": 0.5}  # inferred: an expert costs more


def _budget(budget, k: int, n_prompts: int) -> float:
    b = k if budget is None else float(budget)
    if b < 0:
        raise ValueError(f"budget must be >= 0 labels per prompt, got {budget}")
    return b * n_prompts


# ----------------------------------------------------------------------------------------------- relevance
def capped_split(total: int, fractions: np.ndarray, cap: int) -> list[int]:
    """`relevance.split_budget`, with no source above `cap` (a block's prompts); what a capped source cannot use
    goes to the others in proportion, so source_budget = 1 means every source scores every pool."""
    from pipeline.selection.relevance import split_budget

    counts = np.zeros(len(fractions), int)
    remaining, active = int(min(total, cap * len(fractions))), np.arange(len(fractions))
    while remaining > 0 and len(active):
        counts[active] += split_budget(remaining, np.maximum(fractions[active], 1e-12))
        remaining = int(np.clip(counts - cap, 0, None).sum())
        counts = np.minimum(counts, cap)
        active = np.flatnonzero(counts < cap)
    return counts.tolist()


class RelevanceSelector(LoopSelector):
    def __init__(self, arms, seed, block_size: int = 16, pilot_blocks: int = 1, rank: int | None = None, dim: int = 32,
                 features: str = "both", floor: float = 0.05, source_budget: float = 1.0, repilot: bool = True,
                 bandit: bool = False, c: float = 1.0, self_win: float = 0.55, lam_scale: float = 0.5,
                 max_pairs: int = 2000, encoder: str | None = None):
        super().__init__(arms, seed, SELF, block_size, features, dim, encoder, self_win)
        if self.block_size < 1 or int(pilot_blocks) < 1:
            raise ValueError("relevance: block_size and pilot_blocks must be at least 1 (the pilot is the first blocks)")
        if not 0 < source_budget <= 1:
            raise ValueError(f"relevance: source_budget must be in (0, 1], got {source_budget}")
        if floor < 0 or floor * len(arms) > 1:
            raise ValueError(f"relevance: floor {floor} x {len(arms)} sources exceeds the whole budget")
        self.pilot_blocks, self.rank, self.floor = int(pilot_blocks), int(rank or min(len(arms), 3)), float(floor)
        if self.rank < 1:
            raise ValueError(f"relevance: rank must be at least 1, got {rank}")
        self.source_budget, self.repilot, self.bandit, self.c = float(source_budget), bool(repilot), bool(bandit), c
        self.lam_scale, self.max_pairs = float(lam_scale), int(max_pairs)
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
            self.ucb = UCB(self.arms + [COMPOSITE], self.c, self.block_size, self.self_win, seed=self.seed)
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
        from pipeline.selection.relevance import allocate_budget, estimate_relevance

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


# --------------------------------------------------------------------------------------------- dual_active
class DualActiveSelector(LoopSelector):
    def __init__(self, arms, seed, teachers: list | None = None, persona: str = "default", budget: float | None = None,
                 batch: int = 32, warmup: int | None = None, features: str = "both", dim: int = 32, gamma: float = 1.0,
                 lam: float = 1e-2, arm: str = SELF, encoder: str | None = None):
        super().__init__(arms, seed, arm, 0, features, dim, encoder)
        self.teachers = [self._teacher(t, persona) for t in (teachers or ["expert", "default", "novice"])]
        labels = [t["label"] for t in self.teachers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"dual_active: teacher labels {labels} repeat; give each a distinct 'label'")
        self.costs = np.array([t["cost"] for t in self.teachers])
        self.budget, self.batch, self.warmup = budget, int(batch), warmup
        self.gamma, self.lam, self._judges = float(gamma), float(lam), None
        _budget(budget, 1, 1)
        if self.batch < 1:
            raise ValueError(f"dual_active: batch must be at least 1, got {batch}")

    @staticmethod
    def _teacher(spec, persona: str) -> dict:
        from reward_sources.oracle import TEACHERS

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
        cost = float(spec.get("cost", 1.0))
        if cost <= 0:
            raise ValueError(f"dual_active: teacher cost must be > 0, got {cost}")
        return {"label": spec.get("label", spec["name"]), "name": spec["name"], "params": dict(spec.get("params", {})),
                "cost": cost}

    def label(self, ctx: LabelContext):
        from pipeline.selection.dual_active import fisher, fit_mle, lcb_scores, select_batch

        if self._judges is None:
            self._judges = [build_judge(t["name"], t["params"]) for t in self.teachers]
        K = len(self.teachers)
        total = _budget(self.budget, ctx.k, len(ctx.rows))
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
                            Z.append(Zc[c]); T.append(k); Y.append(float(a))
                t_query += time.perf_counter() - t0

            # Warm-up: random pairs, teachers in turn (the MLE needs data from every teacher to start).
            order = self.rng("dual-warmup").permutation(len(cands))
            warm, cost = [], 0.0
            for q, c in enumerate(order[: (4 * K if self.warmup is None else int(self.warmup))]):
                if cost + self.costs[q % K] <= total:
                    warm.append((int(c), q % K))
                    cost += self.costs[q % K]
            ask(warm)
            batches = 0
            while Y:
                remaining = np.flatnonzero(~asked)
                room = total - spent
                if not len(remaining) or room < self.costs.min():
                    break
                theta, beta = fit_mle(np.array(Z), np.array(T), np.array(Y), K)
                H = fisher(theta, beta, np.array(Z), np.array(T), self.lam)
                b = int(min(self.batch, room // self.costs.min(), len(remaining)))
                sel = select_batch(theta, beta, Zc[remaining], H, b * K, self.costs, unique=True)
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
        self.last = {"theta": theta, "beta": beta, "H": H, "phi": phi, "scores": scores}
        labels = [t["label"] for t in self.teachers]
        self.record(queries=dict(zip(labels, queries)), cost_per_teacher=dict(zip(labels, queries * self.costs)),
                    cost=spent, budget=total, beta=dict(zip(labels, beta)), batches=batches, candidates=len(cands),
                    features_dim=int(Zc.shape[1]), features_s=t_feat, queries_s=t_query,
                    fit_select_s=time.perf_counter() - t_start - t_feat - t_query)
        return [s.tolist() for s in scores]


# ------------------------------------------------------------------------------------------------- lowrank
class LowRankSelector(LoopSelector):
    def __init__(self, arms, seed, population: dict | None = None, target: dict | None = None, teacher: str = "default",
                 rank: int = 2, budget: float | None = None, features: str = "both", dim: int = 32, gamma: float = 1.0,
                 arm: str = SELF, encoder: str | None = None):
        from reward_sources.oracle import PERSONAS, TEACHERS

        super().__init__(arms, seed, arm, 0, features, dim, encoder)
        population = population or {p: 1.0 for p in PERSONAS}
        target = target or {"default": 1.0}
        for what, dist in (("population", population), ("target", target)):
            if not isinstance(dist, dict) or not dist:
                raise ValueError(f"lowrank: {what} must be a mapping persona -> weight, got {dist!r}")
            bad = [p for p in dist if p not in PERSONAS]
            if bad:
                raise ValueError(f"lowrank: unknown persona(s) {bad} in {what}; known: {', '.join(PERSONAS)}")
            if any(float(w) < 0 for w in dist.values()) or sum(map(float, dist.values())) <= 0:
                raise ValueError(f"lowrank: {what} weights must be >= 0 with a positive sum, got {dist}")
        if teacher not in TEACHERS:
            raise ValueError(f"lowrank: unknown teacher '{teacher}'; known: {', '.join(TEACHERS)}")
        self.contexts = sorted(set(population) | set(target))
        self.population = {p: float(w) for p, w in population.items()}
        self.target = {p: float(w) for p, w in target.items()}
        self.teacher, self.rank, self.budget, self.gamma = teacher, int(rank), budget, float(gamma)
        _budget(budget, 1, 1)
        if self.rank < 1:
            raise ValueError(f"lowrank: rank must be at least 1, got {rank}")
        self._judges = {}

    def x_target(self) -> np.ndarray:
        w = np.array([self.target.get(p, 0.0) for p in self.contexts])
        return w / w.sum()

    def label(self, ctx: LabelContext):
        from pipeline.selection.lowrank import fit_lowrank

        rng = self.rng("lowrank")
        t0 = time.perf_counter()
        with blas_threads():
            phi = self.features.fit_transform(ctx, ctx.rows, ctx.online)
            t_feat = time.perf_counter() - t0
            cands = candidate_pairs(ctx.online)
            n_q = min(int(round(_budget(self.budget, ctx.k, len(ctx.rows)))), len(cands))
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
                onehot = np.eye(len(self.contexts))[self.contexts.index(persona)]
                for c, ans in zip(mine, ask_pairs(ctx, self._judges[persona], [cands[c] for c in mine])):
                    if ans is not None:
                        p, i, j = cands[c]
                        X.append(onehot); Z.append(phi[p][i] - phi[p][j]); Y.append(float(ans))
            if not Y:
                self.record(personas=counts, labels=0, note="no annotator answers; no pairs")
                return [[None] * len(ys) for ys in ctx.online]
            rank = min(self.rank, len(self.contexts), len(Z[0]))
            t1 = time.perf_counter()
            model = fit_lowrank(np.array(X), np.array(Z), np.array(Y), rank)
            scores = [model.lcb(self.x_target(), f, self.gamma, center=True) for f in phi]
            t_fit = time.perf_counter() - t1
        self.last = {"model": model, "phi": phi, "x_target": self.x_target(), "scores": scores}
        sv = np.linalg.svd(model.Theta, compute_uv=False)
        self.record(personas=counts, labels=len(Y), budget=n_q, rank=rank, contexts=self.contexts,
                    target=self.target, theta_singular_values=sv[: rank + 1], features_dim=len(Z[0]),
                    features_s=t_feat, fit_select_s=t_fit)
        return [s.tolist() for s in scores]


# -------------------------------------------------------------------------------------------------- shared
class SharedSelector(LoopSelector):
    def __init__(self, arms, seed, dim: int = 32, hidden: int = 64, rep_dim: int = 8, steps: int = 300,
                 batch_size: int = 32, lr: float = 3e-3, adapter: str = "affine", folds: int = 2, arm: str = SELF,
                 encoder: str | None = None):
        super().__init__(arms, seed, arm, 0, "encoder", dim, encoder)
        if adapter not in ("affine", "linear"):
            raise ValueError(f"shared: adapter must be affine or linear, got '{adapter}'")
        if int(folds) < 1:
            raise ValueError(f"shared: folds must be at least 1, got {folds}")
        self.hidden, self.rep_dim, self.steps, self.batch_size = int(hidden), int(rep_dim), int(steps), int(batch_size)
        self.lr, self.adapter, self.folds = float(lr), adapter, int(folds)

    def _train(self, phi, pairs, judged, z, prompts: set, fold: int):
        """The proxy trained on the judge pairs of `prompts` and on every candidate's source scores."""
        import torch

        from pipeline.selection.shared import SharedRewardModel, TaskData, train

        mine = [(p, i, j) for p, i, j in pairs if p in prompts]
        bt = TaskData("bt", X1=np.array([phi[p][i] for p, i, _ in mine]), X0=np.array([phi[p][j] for p, _, j in mine]),
                      y=np.array([float(judged[p][i] > judged[p][j]) for p, i, j in mine]))
        X_all = np.vstack(phi)
        data = {0: bt, **{m_idx: TaskData("regression", X=X_all, y=np.concatenate(z[m]))
                          for m_idx, m in enumerate(self.arms, 1)}}
        torch.manual_seed(self.seed * 1000 + self.t * 10 + fold)
        model = SharedRewardModel(X_all.shape[1], ["bt"] + ["regression"] * len(self.arms), self.hidden,
                                  self.rep_dim, self.adapter)
        history = train(model, data, self.steps, self.batch_size, self.lr, seed=self.seed * 1000 + self.t * 10 + fold)
        return model, history

    def label(self, ctx: LabelContext):
        import torch

        judged = super().label(ctx)  # the judge labels the K online responses: the same budget as no transfer
        cands = [list(ys) + list(ps) for ys, ps in zip(ctx.online, ctx.pool)]  # sources also score any pool
        t0 = time.perf_counter()
        with blas_threads():
            phi = self.features.fit_transform(ctx, ctx.rows, cands)
            pairs = [(p, i, j) for p, i, j in candidate_pairs(ctx.online)
                     if judged[p][i] is not None and judged[p][j] is not None and judged[p][i] != judged[p][j]]
            if not pairs:
                self.record(note="no judge pairs to train the proxy on; judge scores used")
                return judged
            z = standardised_scores(ctx, self.arms, ctx.rows, cands)
            t1 = time.perf_counter()
            # Cross-fitting: a prompt's proxy scores come from a model that never saw that prompt's judge labels,
            # so the proxy generalises the judge instead of echoing its noise (folds = 1: one model on all).
            fold_of = self.rng("shared-folds").permutation(len(ctx.rows)) % self.folds
            scores = [None] * len(ctx.rows)
            held, models, histories = [], [], []
            for fold in range(self.folds):
                train_on = {p for p in range(len(ctx.rows)) if self.folds == 1 or fold_of[p] != fold}
                model, history = self._train(phi, pairs, judged, z, train_on, fold)
                models.append(model)
                histories.append(history)
                with torch.no_grad():
                    for p in np.flatnonzero(fold_of == fold):
                        x = torch.as_tensor(phi[p][: len(ctx.online[p])], dtype=torch.float32)
                        scores[p] = model.score(0, x).numpy().astype(float)
                held += [(p, i, j) for p, i, j in pairs if fold_of[p] == fold]
        agree = float(np.mean([(scores[p][i] > scores[p][j]) == (judged[p][i] > judged[p][j]) for p, i, j in held]))
        self.last = {"models": models, "fold_of": fold_of, "phi": phi, "scores": scores, "judged": judged}
        self.record(judge_pairs=len(pairs), folds=self.folds, heldout_proxy_judge_agreement=agree,
                    loss_first=[h[0] for h in histories], loss_last=[h[-1] for h in histories],
                    tasks=["judge"] + list(self.arms), features_dim=int(phi[0].shape[1]), features_s=t1 - t0,
                    fit_select_s=time.perf_counter() - t1)
        return [s.tolist() for s in scores]
