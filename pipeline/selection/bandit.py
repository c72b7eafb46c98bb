"""The transfer-arm selectors of TPO (docs/algorithms.md §1): no transfer, pure exploit of one source, and the
UCB bandit over the sources and the self arm.

The win signal of a source arm on a prompt is 1 when the judge's best of the K responses is a transferred one;
the self arm's win is a constant, the bar a source must clear (by default replace_num / K + 0.05:
pipeline/selection/registry.py `default_self_win`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pipeline.config import f
from pipeline.selection.base import SELF, NoOptions, Selector


class NoTransfer(Selector):
    """No transfer: the self arm for good; listed sources are never asked (and no pool is drawn)."""

    needs_sources = False

    def __init__(self, arms: list[str], seed: int, opts: NoOptions):
        super().__init__(arms)


@dataclass
class FixedOptions:
    arm: str = f("", "the source every block transfers from ('' = the first of online.sources)")


class Fixed(Selector):
    """Pure exploit: every block transfers from one source."""

    Options = FixedOptions

    def __init__(self, arms: list[str], seed: int, opts: FixedOptions):
        super().__init__(arms, opts.arm or arms[0])


@dataclass
class UCBOptions:
    c: float = f(1.0, ge=0, help="exploration bonus: V(a) = mean win of a + c / sqrt(prompts given to a)")
    block_size: int = f(200, ge=1, help="prompts per block; the arm is chosen once per block (the paper: 200)")
    self_win: float | None = f(None, ge=0, le=1,
                               help="the self arm's constant win (None = online.replace_num / online.k + 0.05; "
                                    "the paper's 0.55 is 4 of 8)")
    carry: bool = f(False, "keep the win statistics across iterations (the paper resets them every iteration)")


class UCB(Selector):
    """V(a) = mean_win(a) + c / sqrt(n(a)); untried arms first (at random); argmax used for the next block."""

    Options = UCBOptions

    def __init__(self, arms: list[str], seed: int, opts: UCBOptions):
        super().__init__(arms, SELF, 0.55 if opts.self_win is None else opts.self_win, opts.block_size)
        self.c, self.carry, self.seed, self.rng = opts.c, opts.carry, seed, random.Random(seed)

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
