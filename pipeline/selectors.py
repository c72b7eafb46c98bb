"""Every selector by name: TPO's UCB, pure exploit, no transfer (pipeline/transfer.py) and the four selection stages
(pipeline/selection/adapters.py). The one module that knows them all, so that the online loop imports it and the
selectors themselves never import the loop or each other's builders."""
from __future__ import annotations

from pipeline.selection import adapters
from pipeline.transfer import UCB, Selector, check_selector

LOOP_SELECTORS = {"relevance": adapters.RelevanceSelector, "dual_active": adapters.DualActiveSelector,
                  "lowrank": adapters.LowRankSelector, "shared": adapters.SharedSelector}


def default_self_win(k: int, replace_num: int) -> float:
    """The self arm's win when the recipe gives none: the chance that the judge's best of the K responses is one
    of the replace_num transferred ones by luck (replace_num / K, all K exchangeable), plus a margin of 0.05 a
    source must clear. The paper's 0.55 is K = 8, replace_num = 4."""
    return replace_num / k + 0.05


def build_selector(name: str, params: dict, arms: list[str], seed: int, *, k: int = 8, replace_num: int = 4
                   ) -> Selector:
    """The selector `name` with its options; k and replace_num (online.k, online.replace_num) set the default
    self_win of the selectors that weigh the self arm against sources (ucb, relevance's bandit). Their defaults
    (8, 4) give the paper's 0.55."""
    check_selector(name, params)
    if name in ("ucb", "relevance") and "self_win" not in params:
        params = {**params, "self_win": default_self_win(k, replace_num)}
    if name == "none":
        return Selector(arms)
    if not arms:
        raise ValueError(f"selector '{name}' needs at least one entry in online.sources")
    if name == "fixed":
        return Selector(arms, params.get("arm", arms[0]))
    if name == "ucb":
        return UCB(arms, seed=seed, **params)
    try:
        return LOOP_SELECTORS[name](arms, seed, **params)
    except TypeError as e:  # a wrongly typed option (e.g. a list where a number goes)
        raise ValueError(f"selector '{name}': {e}") from None
