"""The synthetic news world: the embedded, download-free default corpus.

Each article is built around planted facts (who, in which role, did what, how many, where) surrounded by
distractor sentences that mention other people, places and numbers. The reference summary restates the
facts in one sentence, in one of several phrasings. The planted facts are stored per row so that the
oracle judge (reward_sources/oracle.py) can score any summary exactly; source rewards never see them.

All names are invented from syllables, so no real text enters the corpus.
"""
from __future__ import annotations

import random
import re

from pipeline.config import WorldConfig

_SYL = ["ka", "lo", "mi", "ra", "ten", "vor", "sel", "dun", "bri", "fa", "gor", "hal", "jun", "mar", "nel",
        "pim", "ros", "sul", "tav", "wen", "yar", "zel", "bel", "cor", "dal", "ef", "ivo", "ler", "nor", "tis"]
_PLACE_END = ["ton", "ford", "bury", "wick", "mouth", "field", "ley", "stead"]
_ROLES = ["mayor", "minister", "coach", "chief executive", "head teacher", "police chief", "council leader",
          "health secretary", "club chairman", "union leader"]
# (keyword the oracle checks, past-tense verb phrase with the number, number range)
_EVENTS = [
    ("jobs", "cut {n} jobs", (20, 900)),
    ("pupils", "opened a school for {n} pupils", (40, 800)),
    ("trees", "planted {n} trees", (100, 990)),
    ("players", "signed {n} new players", (2, 19)),
    ("homes", "approved {n} new homes", (30, 950)),
    ("nurses", "hired {n} nurses", (10, 400)),
    ("cars", "recalled {n} cars", (50, 990)),
    ("beds", "opened a hospital with {n} beds", (20, 600)),
    ("buses", "ordered {n} electric buses", (5, 120)),
    ("flights", "cancelled {n} flights", (10, 300)),
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_LEADS = [  # paraphrases of the fact sentence inside the article; index 0 is the plain one
    "{Role} {person} has {vp} in {place}, officials said.",
    "In {place}, {person}, the {role}, {vp} on {day}.",
    "{person} said on {day} that the {role}'s office had {vp} across {place}.",
    "Officials in {place} confirmed that {role} {person} {vp} this week.",
]
_SUMMARIES = [
    "{Role} {person} has {vp} in {place}.",
    "{person}, the {role}, has {vp} in {place}.",
    "In {place}, {role} {person} has {vp}.",
    "{place} {role} {person} has {vp}.",
]
_DISTRACTORS = [
    "{person}, a {role} from {place}, {vp} last year.",
    "Earlier, {n} people attended a meeting in {place}.",
    "{person} said the figure of {n} was not final.",
    "Last month {place} reported that {n} residents had signed a petition.",
    "A similar plan in {place} was backed by {person} in {year}.",
]
# A rival states the same kind of event as the fact, by someone in the same role: it differs from the fact sentence
# only in its names and number and in its news-style marker ("last year", "separately", "rival").
_RIVALS = [
    "{Role} {person} {vp} in {place} last year.",
    "Separately, {person}, another {role}, {vp} in {place}.",
    "In {year}, a rival {role}, {person}, {vp} in {place}.",
]
_FILLERS = [
    "The decision was welcomed by local groups.",
    "Critics said more details were needed.",
    "A spokesperson declined to comment further.",
    "The council will meet again next month.",
    "Residents have been invited to share their views.",
    "The plan is expected to be reviewed in the spring.",
]


def _name(rng: random.Random, n_syl: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(n_syl)).capitalize()


def _pools(cfg: WorldConfig, rng: random.Random) -> tuple[list[str], list[str]]:
    people: set[str] = set()
    while len(people) < cfg.n_people:
        people.add(f"{_name(rng, 2)} {_name(rng, rng.choice([2, 3]))}")
    places: set[str] = set()
    while len(places) < cfg.n_places:
        places.add(_name(rng, rng.choice([1, 2])) + rng.choice(_PLACE_END))
    return sorted(people), sorted(places)


def _fill(template: str, **kw) -> str:
    text = template.format(Role=kw.get("role", "").capitalize(), **kw)
    return text[0].upper() + text[1:]


def generate(n: int, cfg: WorldConfig, seed: int) -> list[dict]:
    """`n` articles with reference summaries and planted facts, deterministic in `seed`."""
    rng = random.Random(seed)
    people, places = _pools(cfg, random.Random(f"pools-{seed}"))
    rows = []
    for i in range(n):
        kw_event, vp_tpl, (lo, hi) = rng.choice(_EVENTS)
        number = rng.randint(lo, hi)
        facts = {"person": rng.choice(people), "role": rng.choice(_ROLES), "place": rng.choice(places),
                 "number": str(number), "event": kw_event}
        vp = vp_tpl.format(n=number)
        lead_idx = 0 if rng.random() >= cfg.paraphrase else rng.randrange(1, len(_LEADS))
        lead = _fill(_LEADS[lead_idx], vp=vp, day=rng.choice(_DAYS),
                     **{k: facts[k] for k in ("person", "role", "place")})
        body = []
        for _ in range(cfg.n_distractors):
            o_event, o_vp, (olo, ohi) = rng.choice(_EVENTS)
            o_num = rng.randint(olo, ohi)
            while str(o_num) == facts["number"]:
                o_num = rng.randint(olo, ohi)
            body.append(_fill(rng.choice(_DISTRACTORS), person=rng.choice([p for p in people if p != facts["person"]]),
                              role=rng.choice(_ROLES), place=rng.choice([p for p in places if p != facts["place"]]),
                              vp=o_vp.format(n=o_num), n=o_num, year=rng.randint(2001, 2019)))
        for _ in range(cfg.rivals):
            o_num = rng.randint(lo, hi)
            while str(o_num) == facts["number"]:
                o_num = rng.randint(lo, hi)
            who = rng.choice([p for p in people if p != facts["person"]])
            where = rng.choice([p for p in places if p != facts["place"]])
            body.append(_fill(rng.choice(_RIVALS), person=who, role=facts["role"], place=where,
                              vp=vp_tpl.format(n=o_num), year=rng.randint(2001, 2019)))
        body += rng.sample(_FILLERS, k=2)
        rng.shuffle(body)
        # The fact sentence is usually first (news style) but not always, so position alone is not enough.
        body.insert(0 if rng.random() < cfg.lead_first else rng.randint(1, 2), lead)
        summary = _fill(_SUMMARIES[rng.randrange(max(1, min(cfg.summary_templates, len(_SUMMARIES))))],
                        vp=vp, **{k: facts[k] for k in ("person", "role", "place")})
        document = "\n".join(body)
        facts["distractors"] = distractors(document, facts, people, places)
        rows.append({"id": f"w{seed}-{i:06d}", "document": document, "summary": summary, "facts": facts})
    return rows


def distractors(document: str, facts: dict, people: list[str], places: list[str]) -> dict[str, list[str]]:
    """Persons, places and numbers the document mentions other than the planted ones: a summary that states one of
    them states a wrong fact that overlap with the document cannot catch."""
    low = " " + " ".join(w.lower() for w in words(document)) + " "
    return {"person": sorted(p for p in people if p != facts["person"] and f" {p.lower()} " in low),
            "place": sorted(p for p in places if p != facts["place"] and f" {p.lower()} " in low),
            "number": sorted({w for w in words(document) if w.isdigit() and w != facts["number"]})}


_WORD = re.compile(r"[A-Za-z0-9]+")
# Sentence-initial function words are capitalised without being names.
_FUNCTION_WORDS = {"in", "the", "a", "an", "on", "at", "of", "for", "and", "but", "last", "earlier", "officials"}


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def fact_hits(facts: dict, response: str) -> dict[str, bool]:
    """Which planted facts a response states (case-insensitive, whole words, names in full)."""
    low = " " + " ".join(w.lower() for w in words(response)) + " "
    return {
        "person": f" {facts['person'].lower()} " in low,
        "role": f" {facts['role'].lower()} " in low,
        "place": f" {facts['place'].lower()} " in low,
        "number": f" {facts['number']} " in low,
        "event": f" {facts['event']} " in low,
    }


def stated_distractors(facts: dict, response: str) -> list[str]:
    """The document's other persons, places and numbers that a response states (each counted once)."""
    d = facts.get("distractors") or {}
    low = " " + " ".join(w.lower() for w in words(response)) + " "
    return [x for kind in ("person", "place", "number") for x in d.get(kind, []) if f" {x.lower()} " in low]


def _invented_flags(document: str, response: str) -> list[tuple[str, bool]]:
    """Each word of the response, and whether it is a name or number the document never mentions."""
    doc_words = set(words(document))
    doc_lower = {w.lower() for w in doc_words}
    # A capitalised common word ("In", "The") that the document has in any case is not an entity.
    return [(w, (any(c.isdigit() for c in w) or w[0].isupper()) and w.lower() not in _FUNCTION_WORDS
             and w not in doc_words and w.lower() not in doc_lower) for w in words(response)]


def invented_entities(document: str, response: str) -> list[str]:
    """Invented names and numbers counted per entity: a run of consecutive invented capitalised words is one
    name ("Kalo Mira" is one invented person, not two), and each distinct entity counts once."""
    out, run = [], []
    for w, new in _invented_flags(document, response) + [("", False)]:
        if new and w[0].isupper() and run and run[-1][0].isupper():
            run.append(w)
            continue
        if run:
            out.append(" ".join(run))
        run = [w] if new else []
    return sorted(set(out))


def place_slot(response: str) -> int | None:
    """Character offset of the response's first place-like word (capitalised, with one of the world's place endings:
    the planted place, another place or an invented one), or None: where the response decides which place it states.
    """
    for m in _WORD.finditer(response):
        w = m.group()
        if w[0].isupper() and any(w.lower().endswith(e) and len(w) > len(e) for e in _PLACE_END):
            return m.start()
    return None


def name_offset(response: str, name: str) -> int | None:
    """Character offset of the first whole-word, case-insensitive occurrence of `name`, or None."""
    m = re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", response, re.IGNORECASE)
    return None if m is None else m.start()


def invented(document: str, response: str) -> list[str]:
    """Names and numbers in the response that the document never mentions (hallucinations)."""
    return [w for w, new in _invented_flags(document, response) if new]
