"""The mean-ensemble baseline (docs/algorithms.md §8): one fixed Best-of-N arm whose score is the mean of the sources'
standardised scores, the usual way several reward models are combined without learning anything about the judge
(e.g. Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", ICLR 2024, mean aggregation).

Per block, source m's scores of every pool response of the block are z-scored with that block's mean and standard
deviation (inferred: the sources' scales differ by orders of magnitude, and a block's pool is the only sample of the
current policy the selector sees before it must rank); a source whose scores do not vary over the block contributes 0
there rather than dividing by zero. The arm then ranks each prompt's pool by the mean z over the sources. Every
listed source scores every pool: M times the source calls of a single arm; the judge's labels are those of no
transfer (K per prompt).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import f
from pipeline.selection.base import SELF, Selector

ENSEMBLE = "ensemble"


@dataclass
class EnsembleOptions:
    block_size: int = f(0, ge=0, help="prompts per block, the sample each source is standardised over "
                                      "(0 = the whole iteration as one block)")
    sources: list[str] | None = f(None, nonempty=True, help="the sources averaged (None = every online.sources arm)")


class Ensemble(Selector):
    """Mean ensemble: every block transfers from the mean of the sources' scores, each z-scored over the block."""

    Options = EnsembleOptions

    def __init__(self, arms: list[str], seed: int, opts: EnsembleOptions):
        super().__init__(arms, SELF, block_size=opts.block_size)
        members = list(arms) if opts.sources is None else list(opts.sources)
        unknown = [m for m in members if m not in arms]
        if unknown:
            raise ValueError(f"ensemble: sources {unknown} are not in online.sources; known: {', '.join(arms)}")
        if len(set(members)) < len(members):
            raise ValueError(f"ensemble: sources {members} name a source twice")
        self.arm, self.members = ENSEMBLE, members
        self.n[ENSEMBLE], self.wins[ENSEMBLE] = 0, 0.0
        self.new_iteration(0)

    @property
    def uses_pool(self) -> bool:
        return True

    def new_iteration(self, t: int) -> None:
        self.current = {"sources": self.members, "prompts": 0, "zero_spread_blocks": {m: 0 for m in self.members}}

    def pool_scores(self, arm, cache, rows, pool):
        total = [np.zeros(len(p)) for p in pool]
        for m in self.members:
            per = [np.asarray(v, float) for v in cache.scores(m, rows, pool)]
            flat = np.concatenate(per)
            sd = flat.std()
            if sd > 0:
                for acc, v in zip(total, per):
                    acc += (v - flat.mean()) / sd
            else:
                self.current["zero_spread_blocks"][m] += 1
        self.current["prompts"] += len(rows)
        return [(acc / len(self.members)).tolist() for acc in total]

    def info(self) -> dict:
        return dict(self.current)
