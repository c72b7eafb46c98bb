import math

import numpy as np
import pytest

from pipeline import world
from pipeline.config import WorldConfig
from reward_sources import build_judge
from reward_sources.oracle import OracleJudge, utility, PERSONAS


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
