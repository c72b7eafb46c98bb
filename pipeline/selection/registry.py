"""Every selector by name: the one place a recipe's `online.selector: {name, params}` is resolved.

Entries are `module:Class` strings imported on first use (the sources' registry style), so a recipe that never
names a stage never imports its estimator. A selector class takes `(arms, seed, opts)`, where `opts` is an
instance of its `Options` dataclass filled from the recipe's params (typed, strict, with help strings: `python
-m pipeline help` lists them). Adding a selector = one module with the class + one line here.
"""
from __future__ import annotations

import dataclasses
import importlib

from pipeline.config import ConfigError, build_options, closest, describe

SELECTORS = {
    "none": "pipeline.selection.bandit:NoTransfer",
    "fixed": "pipeline.selection.bandit:Fixed",
    "ucb": "pipeline.selection.bandit:UCB",
    "relevance": "pipeline.selection.relevance_selector:RelevanceSelector",
    "dual_active": "pipeline.selection.dual_active_selector:DualActiveSelector",
    "lowrank": "pipeline.selection.lowrank_selector:LowRankSelector",
    "shared": "pipeline.selection.shared_selector:SharedSelector",
    "ensemble": "pipeline.selection.ensemble:Ensemble",
    "linucb": "pipeline.selection.linucb:LinUCB",
}


def default_self_win(k: int, replace_num: int) -> float:
    """The self arm's win when the recipe gives none: the chance that the judge's best of the K responses is one
    of the replace_num transferred ones by luck (replace_num / K, all K exchangeable), plus a margin of 0.05 a
    source must clear. The paper's 0.55 is K = 8, replace_num = 4."""
    return replace_num / k + 0.05


def selector_class(name):
    """The class registered under `name` (its module imported now); an unknown name fails with a did-you-mean."""
    if not isinstance(name, str) or name not in SELECTORS:
        close = closest(name, SELECTORS)
        hint = f" Did you mean '{close}'?" if close else ""
        raise ValueError(f"unknown selector '{name}'; known: {', '.join(SELECTORS)}.{hint}")
    module, attr = SELECTORS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def parse_options(name: str, params):
    """The selector's typed options from a recipe's params: unknown keys and wrong types are one-line errors."""
    cls = selector_class(name)
    if not isinstance(params, dict):
        raise ValueError(f"selector '{name}': params must be a mapping, got {type(params).__name__}")
    valid = sorted(fl.name for fl in dataclasses.fields(cls.Options))
    unknown = sorted(set(params) - set(valid))
    if unknown:
        close = closest(unknown[0], valid)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ValueError(f"unknown option(s) {unknown} for selector '{name}'; valid: {valid}{hint}")
    try:
        return build_options(cls.Options, params, "online.selector.params.")
    except ConfigError as e:
        raise ValueError(f"selector '{name}': {e}") from None


def check_selector(name: str, params) -> None:
    """Name and options checked without building anything (the CLI runs this before any stage)."""
    parse_options(name, params)


def build_selector(name: str, params: dict, arms: list[str], seed: int, *, k: int = 8, replace_num: int = 4):
    """The selector `name` with its options; k and replace_num (online.k, online.replace_num) set the default
    self_win of the selectors that weigh the self arm against sources. Their defaults (8, 4) give the paper's
    0.55."""
    cls, opts = selector_class(name), parse_options(name, params)
    if getattr(opts, "self_win", 0.0) is None:
        opts = dataclasses.replace(opts, self_win=default_self_win(k, replace_num))
    if cls.needs_sources and not arms:
        raise ValueError(f"selector '{name}' needs at least one entry in online.sources")
    try:
        return cls(arms, seed, opts)
    except ValueError as e:
        raise ValueError(f"selector '{name}': {e}" if not str(e).startswith(name) else str(e)) from None


def help_lines() -> list[str]:
    """Every selector and its options, for `python -m pipeline help`."""
    out = []
    for name in SELECTORS:
        cls = selector_class(name)
        out.append(f"online.selector.name = {name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        out += [f"  {line}" for line in describe(cls.Options, "online.selector.params.")]
    return out
