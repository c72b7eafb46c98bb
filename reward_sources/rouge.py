"""ROUGE source reward: F-measure of a response against the reference summary (rouge-score, stemmed).

`against: document` scores the response against the article itself instead: the reference-free overlap that
users reach for when they have no reference. It is a *tempting* source: on today's samples it prefers summaries
that copy the article (and so state its facts) over ones that invent, but in excess it pays for length and for
copying any sentence, the wrong ones included (docs/testbed.md).

`evaluate.load("rouge")` fetches its script from the hub and fails offline, so rouge-score is called
directly. ROUGE-Lsum is the summary-level LCS: it needs sentences separated by "\n" (rouge-score splits on
newlines only), so texts without newlines are split at sentence ends first.

This module also holds `check_spec`, the strict spec check every source and judge module uses (and `positive_int`,
its check of an integer option).
"""
from __future__ import annotations

import re

from pipeline.config import closest

VARIANTS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def check_spec(spec: dict, valid: set[str] | list[str], who: str) -> None:
    """Unknown keys are a one-line ValueError naming the key and the valid ones (a typo must not be ignored)."""
    allowed = sorted(set(valid) | {"name"})
    for key in spec:
        if key not in allowed:
            close = closest(key, allowed)
            hint = f" Did you mean '{close}'?" if close else ""
            raise ValueError(f"{who}: unknown option '{key}'; valid: {', '.join(allowed)}.{hint}")


def positive_int(params: dict, key: str, default: int, who: str) -> int:
    """params[key] (default when absent), an integer >= 1, or a one-line ValueError."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: {key} must be an integer >= 1, got {value!r}")
    return value


def check_batch(who: str, documents, responses, references=None) -> None:
    """Sources are called with parallel lists; a length mismatch would silently misalign rewards."""
    n = len(responses)
    if len(documents) != n or (references is not None and len(references) != n):
        ref = "" if references is None else f", {len(references)} references"
        raise ValueError(f"{who}: got {len(documents)} documents, {n} responses{ref}; lengths must match")


def sentence_lines(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects; existing newlines are kept as sentence breaks."""
    if "\n" in text:
        return "\n".join(line.strip() for line in text.split("\n") if line.strip())
    return _SENT_END.sub("\n", text.strip())


def check_build(spec: dict) -> None:
    """The options, checked before any stage runs (pipeline/cli.py looks for check_<factory>)."""
    check_spec(spec, {"variant", "against"}, "rouge")
    variant = spec.get("variant", "rougeLsum")
    if variant not in VARIANTS:
        raise ValueError(f"rouge: variant must be one of {', '.join(VARIANTS)}, got '{variant}'")
    if spec.get("against", "reference") not in ("reference", "document"):
        raise ValueError(f"rouge: against must be 'reference' or 'document', got '{spec['against']}'")


def build(spec: dict, ctx=None):
    check_build(spec)
    variant = spec.get("variant", "rougeLsum")
    against = spec.get("against", "reference")
    from rouge_score import rouge_scorer

    # use_stemmer=True is the convention of the summarisation papers (and of the XSum-faith ROUGE columns).
    scorer = rouge_scorer.RougeScorer([variant], use_stemmer=True)
    lsum = variant == "rougeLsum"

    def score(documents, responses, references):
        check_batch("rouge", documents, responses, references)
        if against == "document":
            references = documents
        if any(r is None for r in references):
            raise ValueError("rouge: a reference summary is missing (None); ROUGE needs references")
        out = []
        for resp, ref in zip(responses, references):
            if lsum:
                resp, ref = sentence_lines(resp or ""), sentence_lines(ref)
            out.append(float(scorer.score(ref, resp or "")[variant].fmeasure))
        return out

    score.__name__ = f"rouge_{variant}" + ("_document" if against == "document" else "")
    return score
