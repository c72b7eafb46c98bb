"""Example user callables for the `python` source (recipe: `{name: python, function: reward_sources.examples:...}`).

Each takes parallel lists (documents, responses, references) and returns one float per response.
"""
from __future__ import annotations

import re
from pathlib import Path

from pipeline import data as data_stage
from reward_sources.oracle import PERSONAS, utility

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def support(documents, responses, references, min_len: int = 3):
    """Share of the response's words (of at least `min_len` letters) that occur in the document.

    A crude faithfulness proxy: words the document never uses (names, numbers) are often invented.
    An empty response scores 0, so saying nothing is not rewarded.
    """
    out = []
    for doc, resp in zip(documents, responses):
        vocab = set(_words(doc))
        words = [w for w in _words(resp) if len(w) >= min_len]
        out.append(sum(w in vocab for w in words) / len(words) if words else 0.0)
    return out


def length_penalty(documents, responses, references, target: int = 20):
    """Minus the distance in words from a target length (XSum references have ~20 words)."""
    return [-abs(len(_words(r)) - target) / target for r in responses]


_ROWS: dict[str, dict] = {}  # data_dir -> {document: row}, loaded once per process


def oracle_utility(documents, responses, references, data_dir: str, persona: str = "default"):
    """DIAGNOSTIC, not a usable reward: the synthetic world's exact oracle utility, i.e. a perfectly relevant
    source. It cheats by looking each document's planted facts up in the run's data splits (`data_dir`, e.g.
    runs/<name>/data). Use it to bound what transfer can do (recipes/diagnostics/perfect_source.yaml)."""
    if data_dir not in _ROWS:
        _ROWS[data_dir] = {r["document"]: r for split in ("train", "eval", "test")
                           for r in data_stage.load_split(Path(data_dir), split)}
    rows = _ROWS[data_dir]
    missing = sum(d not in rows for d in documents)
    if missing:
        raise ValueError(f"oracle_utility: {missing} document(s) are not in {data_dir}")
    return [utility(rows[d], y, PERSONAS[persona]) for d, y in zip(documents, responses)]
