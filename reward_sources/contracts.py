"""The contracts a source and a judge meet, and the optional capabilities a judge may declare.

The registry's factories return these (reward_sources/registry.py); the online loop, the label store and the
table read a judge only through them, never by probing for private attributes.

- Source: callable(documents, responses, references) -> one float per response.
- Judge: `name` (str, part of every label's key in labels.sqlite) and `kind`:
  "scalar"   -> score(rows, responses, seed) -> one float per response;
  "pairwise" -> compare(rows, a, b, seed) -> per pair 1 (a better), 0 (b better), 0.5 (tie) or None (failure).
- Capabilities a judge declares by having them:
  `utility(rows, responses)`: the exact expected utility (the synthetic world's oracle) — enables the table's
  exact-utility headline and the per-iteration utility curve;
  `shardable = True`: each answer is a pure function of its inputs, so several processes may split a batch.
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable


@runtime_checkable
class Source(Protocol):
    def __call__(self, documents: list[str], responses: list[str], references: list[str]) -> list[float]: ...


@runtime_checkable
class ScalarJudge(Protocol):
    name: str
    kind: Literal["scalar"]

    def score(self, rows: list[dict], responses: list[str], seed: int = 0) -> list[float]: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str
    kind: Literal["pairwise"]

    def compare(self, rows: list[dict], a: list[str], b: list[str], seed: int = 0) -> list[float | None]: ...


Judge = ScalarJudge | PairwiseJudge


@runtime_checkable
class KnowsUtility(Protocol):
    def utility(self, rows: list[dict], responses: list[str]) -> list[float]: ...


def knows_utility(judge) -> bool:
    """Whether the judge declares the exact expected utility of a response."""
    return isinstance(judge, KnowsUtility)


def is_shardable(judge) -> bool:
    """Whether the judge declares that processes may split its batches (a plain attribute `shardable = True`)."""
    return getattr(judge, "shardable", False) is True
