import hashlib
import math

import numpy as np
import pytest

from pipeline import world
from pipeline.config import WorldConfig
from reward_sources import build_judge
from reward_sources.oracle import PERSONAS, OracleJudge, utility


def test_world_is_seeded_and_references_state_every_fact():
    a = world.generate(50, WorldConfig(), seed=3)
    assert a == world.generate(50, WorldConfig(), seed=3)
    assert a != world.generate(50, WorldConfig(), seed=4)
    for r in a:
        assert all(world.fact_hits(r["facts"], r["summary"]).values())
        assert world.invented(r["document"], r["summary"]) == []
        assert r["facts"]["person"] in r["document"] and r["facts"]["number"] in r["document"]


def test_oracle_utility_by_hand():
    row = {"id": "x", "document": "Mayor Kalo Ten has cut 40 jobs in Marton, officials said.\nTisra Bel said 12.",
           "facts": {"person": "Kalo Ten", "role": "mayor", "place": "Marton", "number": "40", "event": "jobs"}}
    w = PERSONAS["default"]
    assert utility(row, "Mayor Kalo Ten has cut 40 jobs in Marton.", w) == pytest.approx(4.0)
    # wrong number taken from the document: loses the number fact, invents nothing
    assert utility(row, "Mayor Kalo Ten has cut 12 jobs in Marton.", w) == pytest.approx(3.0)
    # an invented person and number: both facts lost (role 0.5 + place 1 + event 0.5 remain) and three
    # invented words (Voro, Lin, 77) at -1 each
    assert utility(row, "Mayor Voro Lin has cut 77 jobs in Marton.", w) == pytest.approx(2.0 - 3.0)
    # 25 words: 5 over the limit at 0.1 each
    long = "Mayor Kalo Ten has cut 40 jobs in Marton " + " ".join(["and"] * 16)
    assert utility(row, long, w) == pytest.approx(4.0 - 0.5)
    with pytest.raises(ValueError, match="planted facts"):
        utility({"id": "y", "document": "d"}, "s", w)


def test_oracle_noise_is_bradley_terry_and_reproducible():
    rows = world.generate(1, WorldConfig(), seed=0)
    judge = OracleJudge(temperature=1.0)
    good, bad = rows[0]["summary"], "The council will meet."
    du = judge.utility(rows, [good])[0] - judge.utility(rows, [bad])[0]
    assert judge.score(rows, [good], seed=1) == judge.score(rows, [good], seed=1)
    # P(good > bad) over many seeds approaches sigma(du / T)
    wins = np.mean([judge.score(rows, [good], seed=s)[0] > judge.score(rows, [bad], seed=s)[0] for s in range(3000)])
    assert wins == pytest.approx(1 / (1 + math.exp(-du)), abs=0.03)


def test_oracle_registry_options():
    j = build_judge("oracle", {"persona": "concise", "teacher": "expert"})
    assert j.temperature == 0.1 and j.weights["max_words"] == 10
    with pytest.raises(ValueError, match="unknown oracle persona 'terse'"):
        build_judge("oracle", {"persona": "terse"})
    with pytest.raises(ValueError, match="unknown oracle option"):
        build_judge("oracle", {"temp": 1})


def _coverage_row():
    doc = ("Mayor Kalo Ten has cut 40 jobs in Marton, officials said.\n"
           "Separately, Rosa Dun, another mayor, cut 75 jobs in Belford.\n"
           "Tisra Bel said the figure of 12 was not final.")
    facts = {"person": "Kalo Ten", "role": "mayor", "place": "Marton", "number": "40", "event": "jobs"}
    facts["distractors"] = world.distractors(doc, facts, ["Kalo Ten", "Rosa Dun", "Tisra Bel", "Voro Lin"],
                                             ["Marton", "Belford", "Tonbury"])
    return {"id": "c", "document": doc, "summary": "Mayor Kalo Ten has cut 40 jobs in Marton.", "facts": facts}


def test_distractors_are_the_documents_other_entities():
    row = _coverage_row()
    assert row["facts"]["distractors"] == {"person": ["Rosa Dun", "Tisra Bel"], "place": ["Belford"],
                                           "number": ["12", "75"]}


def test_coverage_oracle_by_hand():
    row, w = _coverage_row(), PERSONAS["coverage"]
    assert utility(row, row["summary"], w) == pytest.approx(4.0)
    # copying the rival sentence: role and event right (1.0), and its person, place and number are the
    # document's other entities, at -1 each; nothing is invented, so document overlap sees no error
    rival = "Mayor Rosa Dun cut 75 jobs in Belford."
    assert world.invented(row["document"], rival) == []
    assert utility(row, rival, w) == pytest.approx(1.0 - 3.0)
    # an invented two-word name counts once per entity (the default persona counts each word)
    made_up = "Mayor Voro Lin has cut 40 jobs in Marton."
    assert utility(row, made_up, w) == pytest.approx(3.0 - 1.0)
    assert utility(row, made_up, PERSONAS["default"]) == pytest.approx(3.0 - 2.0)
    # the length term binds 2 words past the reference's 9 words: 14 words are 3 over, at 0.25 each
    long = row["summary"][:-1] + " and more and more and"
    assert len(world.words(long)) == 14
    assert utility(row, long, w) == pytest.approx(4.0 - 0.75)


def test_rival_sentences_share_the_facts_role_and_event():
    rows = world.generate(40, WorldConfig(rivals=2), seed=1)
    assert rows != world.generate(40, WorldConfig(), seed=1)
    # without rivals the world is the one earlier runs used: the same articles, byte for byte (digest of the
    # documents that the generator wrote before rivals existed)
    old = "\n\n".join(r["document"] for r in world.generate(40, WorldConfig(rivals=0), seed=1))
    assert (hashlib.sha256(old.encode()).hexdigest()
            == "36cbcc84b62cca25ba5b33b1ca7799bfd906abdccd643364d907fd999feffe54")
    for r in rows:
        f = r["facts"]
        hits = [world.fact_hits(f, s) for s in r["document"].split("\n")]
        rivals = [h for h in hits if h["role"] and h["event"] and not h["person"] and not h["number"]]
        assert len(rivals) >= 2
        assert f["person"] not in f["distractors"]["person"] and f["number"] not in f["distractors"]["number"]
        assert len(f["distractors"]["person"]) >= 1


class _FixedJudge:
    """Scores fixed per response, so the simulated round's choices are known by hand."""
    def __init__(self, scores):
        self.scores = scores

    def score(self, rows, responses, seed=0):
        return [self.scores[y] for y in responses]


def test_labelling_round_keeps_pairs_as_the_loop_does_and_counts_label_errors():
    from eval.world_report import labelling_round
    rows = [{"id": str(i)} for i in range(3)]
    samples = [["a", "b"], ["c", "d"], ["e", "f"]]
    utilities = [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    judge = _FixedJudge({"a": 1.2, "b": 0.0, "c": 0.3, "d": 0.0, "e": 0.0, "f": 1.5})
    # spans 1.2 (right way), 0.3 (equal utility), 1.5 (wrong way)
    everything = labelling_round(rows, samples, None, utilities, judge, k=2, replace_num=1)
    assert everything["kept"] == 1.0
    assert everything["flat_pairs"] == pytest.approx(1 / 3) and everything["wrong_pairs"] == pytest.approx(1 / 3)
    margin = labelling_round(rows, samples, None, utilities, judge, k=2, replace_num=1, min_margin=1.0)
    assert margin["kept"] == pytest.approx(2 / 3)
    assert margin["flat_pairs"] == 0.0 and margin["wrong_pairs"] == 0.5
    assert margin["chosen"] == 0.5 and margin["gap"] == 0.0  # chosen a (1) and f (0); rejected b (0) and e (1)


def test_place_slot_finds_the_first_place_like_word():
    assert world.place_slot("Mayor Ann Lee cut 12 jobs in Rosford.") == len("Mayor Ann Lee cut 12 jobs in ")
    assert world.place_slot("Ton said the stead was in kalobury.") is None  # a bare ending, lower case: no place
    assert world.place_slot("Selwick") == 0
    assert world.name_offset("In kalobury and Kalobury", "Kalobury") == 3
    assert world.name_offset("Kaloburyton", "Kalobury") is None  # whole words only
