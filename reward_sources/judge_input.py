"""What the learned judge reads: (evidence, claim) text pairs built from a (document, summary).

A cross-encoder affordable on one CPU thread reads ~256 tokens, less than most XSum articles. Cutting the article's
tail would hide the very sentences that support (or fail to support) the summary, so the evidence is the document's
sentences ordered by how many of the summary's content words they contain, and the tokenizer cuts that list.
The claim is the summary followed by the summary's content words (numbers included) that appear nowhere in the
whole document: hallucinated content is mostly such words, and this way the model sees them even when the
sentences that would show their absence were cut.

The format is named in the checkpoint's config (`judge_input`), so the reward_model scorer builds the same pairs
at scoring time as training did.
"""
from __future__ import annotations

import re

FORMAT = "evidence-v1"
MAX_NOVEL = 12  # words listed; keeps the claim well inside the token budget so only the evidence is ever cut
_WORD = re.compile(r"[^\W_]+(?:[.,][^\W_]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
STOPWORDS = frozenset("""a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor
not now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves said says say new one two
s t""".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def content_words(text: str) -> list[str]:
    """Words that carry a claim: not stopwords, and numbers of any length."""
    return [w for w in words(text) if w not in STOPWORDS and (len(w) > 2 or w[0].isdigit())]


def _stem(w: str) -> str:
    # enough normalisation that "councils" in a summary is found as "council" in the document
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def sentences(document: str) -> list[str]:
    parts = [s.strip() for s in (document or "").split("\n") if s.strip()]
    return [p for s in parts for p in _SENTENCE.split(s) if p.strip()]


def novel_words(document: str, summary: str) -> list[str]:
    """The summary's content words (stemmed) found nowhere in the document, in summary order, once each."""
    seen = {_stem(w) for w in words(document)}
    out: list[str] = []
    for w in content_words(summary):
        if _stem(w) not in seen and w not in out:
            out.append(w)
    return out


def evidence_pair(document: str, summary: str) -> tuple[str, str]:
    wanted = {_stem(w) for w in content_words(summary)}
    sents = sentences(document)
    hits = [len(wanted & {_stem(w) for w in words(s)}) for s in sents]
    order = sorted(range(len(sents)), key=lambda i: (-hits[i], i))  # stable: ties keep the article's order
    novel = novel_words(document, summary)[:MAX_NOVEL]
    claim = f"{summary or ''} | not in document: {', '.join(novel) if novel else 'none'}"
    return " ".join(sents[i] for i in order), claim


def format_pairs(fmt: str | None, documents, summaries) -> tuple[list[str], list[str]]:
    """The (first, second) texts a checkpoint trained with input format `fmt` expects (None: as given)."""
    documents, summaries = list(documents), list(summaries)
    if fmt is None:
        return documents, summaries
    if fmt != FORMAT:
        raise ValueError(f"reward_model: checkpoint input format '{fmt}' is unknown; this version reads '{FORMAT}'")
    pairs = [evidence_pair(d, s) for d, s in zip(documents, summaries)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def novel_share(documents, summaries, references=None) -> list[float]:
    """Minus the share of the summary's content words found nowhere in its document: the judge's word-list feature
    as a scorer on its own (`make validate ARGS="--scorers python:reward_sources.judge_input:novel_share"`)."""
    return [-len(novel_words(d, s)) / max(1, len(content_words(s))) for d, s in zip(documents, summaries)]
