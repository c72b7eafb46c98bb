"""The synthetic world's oracle human: an exact utility over planted facts plus Bradley–Terry noise.

utility = Σ_fact weight·[fact stated correctly] − invented·(#names/numbers absent from the document)
          − length·max(0, words − max_words)
The `coverage` persona (the testbed's, docs/testbed.md) counts invented names and numbers per entity rather than
per word, also charges `distractor` for each of the document's OTHER persons, places and numbers the summary
states (copying a rival sentence is faithful to the document and wrong), and lets the length term bind near the
reference's own length (`max_words` relative to it when `length_relative` is set).
A label is utility + temperature·Gumbel noise, so for two responses P(a ≻ b) = σ((u_a − u_b)/temperature):
Bradley–Terry with that temperature, and the argmax over K responses is a Plackett–Luce draw.
The noise is a pure function of (judge, seed, prompt id, response), so a repeated query gets the same answer.

No source reward can see the facts or these weights; `invented` is the property no source measures directly.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from pipeline.world import fact_hits, invented, invented_entities, stated_distractors, words

PERSONAS = {
    "default": dict(person=1.0, place=1.0, number=1.0, event=0.5, role=0.5, invented=1.0, length=0.1, max_words=20),
    "facts_first": dict(person=1.5, place=1.0, number=1.5, event=0.5, role=0.25, invented=0.5, length=0.02,
                        max_words=30),
    "concise": dict(person=1.0, place=0.5, number=1.0, event=0.5, role=0.0, invented=1.0, length=0.3, max_words=10),
    "cautious": dict(person=0.75, place=0.75, number=0.75, event=0.5, role=0.5, invented=2.5, length=0.1, max_words=20),
    # max_words here is the slack over the reference summary's length (length_relative).
    "coverage": dict(person=1.0, place=1.0, number=1.0, event=0.5, role=0.5, invented=1.0, length=0.25, max_words=2,
                     distractor=1.0, per_entity=True, length_relative=True),
}
TEACHERS = {"expert": 0.1, "default": 0.5, "novice": 2.0}  # Bradley–Terry temperatures
_WEIGHT_KEYS = sorted({k for w in PERSONAS.values() for k in w})  # every term a persona may weigh
_FACTS = ("person", "role", "place", "number", "event")


def utility(row: dict, response: str, weights: dict) -> float:
    facts = row.get("facts")
    if not facts:
        raise ValueError(f"the oracle judge needs the synthetic world's planted facts; row '{row.get('id')}' has none "
                         "(use data.source=synthetic, or a reward_model / pairwise_llm judge on real data)")
    hits = fact_hits(facts, response)
    u = sum(weights[k] for k in _FACTS if hits[k])
    made_up = invented_entities if weights.get("per_entity") else invented
    u -= weights["invented"] * len(made_up(row["document"], response))
    u -= weights.get("distractor", 0.0) * len(stated_distractors(facts, response))
    limit = weights["max_words"] + (len(words(row["summary"])) if weights.get("length_relative") else 0)
    u -= weights["length"] * max(0, len(words(response)) - limit)
    return float(u)


def _gumbel(*key) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "little")).gumbel())


class OracleJudge:
    kind = "scalar"
    shardable = True  # each score is a pure function of (row, response, seed): processes may split a batch

    def __init__(self, persona: str = "default", teacher: str | None = None, temperature: float | None = None,
                 weights: dict | None = None):
        if not isinstance(persona, str) or persona not in PERSONAS:  # a list: 'unhashable', naming no option
            raise ValueError(f"unknown oracle persona '{persona}'; known: {', '.join(PERSONAS)}")
        if teacher is not None and (not isinstance(teacher, str) or teacher not in TEACHERS):
            raise ValueError(f"unknown oracle teacher '{teacher}'; known: {', '.join(TEACHERS)}")
        if weights is not None and not isinstance(weights, dict):
            raise ValueError(f"oracle weights must be a mapping of term -> number, got {weights!r}")
        # a misspelt term would be ignored and a non-number would fail at the first label, after SFT
        unknown = sorted(set(weights or {}) - set(_WEIGHT_KEYS))
        if unknown:
            raise ValueError(f"unknown oracle weight(s) {unknown}; valid: {', '.join(_WEIGHT_KEYS)}")
        bad = {k: v for k, v in (weights or {}).items()
               if not isinstance(v, (int, float)) or (not isinstance(v, bool) and not math.isfinite(v))}
        if bad:
            raise ValueError(f"oracle weights must be finite numbers (true/false for per_entity, length_relative), "
                             f"got {bad}")
        self.weights = {**PERSONAS[persona], **(weights or {})}
        self.temperature = temperature if temperature is not None else TEACHERS[teacher or "default"]
        if self.temperature < 0 or not math.isfinite(self.temperature):  # NaN or inf: every label a failure
            raise ValueError(f"oracle temperature must be a finite number >= 0, got {self.temperature}")
        self.name = f"oracle[{persona},{teacher or 'default'},t={self.temperature:g}]"

    def utility(self, rows: list[dict], responses: list[str]) -> list[float]:
        return [utility(r, y, self.weights) for r, y in zip(rows, responses)]

    def score(self, rows: list[dict], responses: list[str], seed: int = 0) -> list[float]:
        return [u + self.temperature * _gumbel(self.name, seed, r["id"], y)
                for u, r, y in zip(self.utility(rows, responses), rows, responses)]


_KEYS = {"persona", "teacher", "temperature", "weights"}


def check_build_judge(params: dict) -> None:
    """The options, checked before any stage runs: building the oracle is pure Python, so build it."""
    build_judge(params)


def build_judge(params: dict, ctx=None) -> OracleJudge:
    unknown = set(params) - _KEYS
    if unknown:
        raise ValueError(f"unknown oracle option(s) {sorted(unknown)}; valid: {sorted(_KEYS)}")
    return OracleJudge(**params)
