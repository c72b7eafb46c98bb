"""The one place recipes swap things: source rewards and judges, by name.

Entries are `module:attribute` strings imported on first use, so a recipe that never names BERTScore never
imports it. Unknown names fail listing the known ones, with a did-you-mean.

Contracts
- source factory(spec: dict, ctx: Context) -> callable(documents, responses, references) -> list[float]
- judge factory(params: dict, ctx: Context) -> object with `name`, `kind` and either
  `score(rows, responses, seed) -> list[float]` (kind "scalar") or
  `compare(rows, a, b, seed) -> list[float | None]` (kind "pairwise": 1 = a better, 0 = b, 0.5 = tie,
  None = failure).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = {
    "rouge": "reward_sources.rouge:build",
    "bertscore": "reward_sources.bertscore:build",
    "loglik": "reward_sources.loglik:build",
    "reward_model": "reward_sources.reward_model:build_source",
    "python": "reward_sources.python_source:build",
}

JUDGES = {
    "oracle": "reward_sources.oracle:build_judge",
    "reward_model": "reward_sources.reward_model:build_judge",
    "pairwise_llm": "reward_sources.pairwise_llm:build_judge",
}


class RegistryError(ValueError):
    pass


@dataclass
class Context:
    """What a factory may need beyond its own spec."""

    run_dir: Path = Path(".")
    reference_policy: Any = None  # models.Policy of the current reference, for implicit rewards
    extra: dict = field(default_factory=dict)


def check_name(kind: str, name) -> None:
    """Fail on an unknown source/judge name without importing anything (the CLI checks before any stage runs)."""
    table = {"source": SOURCES, "judge": JUDGES}[kind]
    if not isinstance(name, str) or name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown {kind} '{name}'; known: {', '.join(sorted(table))}.{hint}")


def _lookup(table: dict, kind: str, name: str):
    check_name("source" if table is SOURCES else "judge", name)
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_source(spec: dict, ctx: Context | None = None):
    if not isinstance(spec, dict) or "name" not in spec:
        raise RegistryError(f"a source must be a mapping with a 'name', got {spec!r}")
    return _lookup(SOURCES, "source", spec["name"])(dict(spec), ctx or Context())


def build_judge(name: str, params: dict, ctx: Context | None = None):
    return _lookup(JUDGES, "judge", name)(dict(params), ctx or Context())
