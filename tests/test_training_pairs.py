import math

import pytest

from eval.training_pairs import chosen_rejected, pair_stats
from pipeline.labels import LabelStore


class Planted:
    """A scalar judge whose answers are planted per response, and whose exact utility is the response's first
    word: the judge's ranking and the truth can disagree on purpose."""
    name, kind = "planted", "scalar"

    def __init__(self, answers: dict):
        self.answers = answers

    def score(self, rows, responses, seed=0):
        return [self.answers[y] for y in responses]

    def utility(self, rows, responses):
        return [float(y.split()[0]) for y in responses]


ANSWERS = {"1.0": 0.9, "3.0": 0.1,                  # p0: the judge prefers the truly worse one
           "2.0": 0.2, "0.5": -0.3, "4.0": 0.7,     # p1: K = 3: chosen 4.0 (highest), rejected 0.5 (lowest)
           "5.0": 0.4, "6.0": 0.4,                  # p2: a tie: no pair
           "2.5": 0.1, "2.5 x": 0.3,                # p3: a pair with no true gap
           "7.0": 1.0}                              # p4: one distinct response: no pair


def _store(tmp_path, judge):
    rows = {p: {"id": p} for p in ("p0", "p1", "p2", "p3", "p4")}
    queries = [("p0", "1.0"), ("p0", "3.0"), ("p1", "2.0"), ("p1", "0.5"), ("p1", "4.0"), ("p2", "5.0"),
               ("p2", "6.0"), ("p3", "2.5"), ("p3", "2.5 x"), ("p4", "7.0"), ("p4", "7.0")]
    store = LabelStore(tmp_path / "labels.sqlite")
    store.scalar(judge, [rows[p] for p, _ in queries], [y for _, y in queries], iteration=1)
    store.scalar(judge, [rows["p0"]], ["6.0"], iteration=2)  # another iteration's label is not read with iteration 1
    return store, rows


def test_pairs_read_back_from_the_store_are_the_judges_highest_and_lowest(tmp_path):
    judge = Planted(ANSWERS)
    store, rows = _store(tmp_path, judge)
    answers = store.scalar_answers(1)
    assert len(answers) == 10 and store.scalar_answers(2) == [("p0", "6.0", 0.4)]
    assert sorted(chosen_rejected(answers)) == [("p0", "1.0", "3.0"), ("p1", "4.0", "0.5"), ("p3", "2.5 x", "2.5")]
    s = pair_stats(answers, rows, judge.utility)
    # chosen 1, 4, 2.5; rejected 3, 0.5, 2.5 (worked by hand)
    assert s["pairs"] == 3
    assert s["chosen_utility"] == pytest.approx(2.5) and s["rejected_utility"] == pytest.approx(2.0)
    assert s["gap"] == pytest.approx(0.5) and s["chosen_worse"] == pytest.approx(1 / 3)
    assert s["no_gap"] == pytest.approx(1 / 3)
    assert store.scalar_answers(3) == [] and math.isnan(pair_stats([], rows, judge.utility)["gap"])
    store.close()


def test_a_failed_answer_is_no_part_of_a_pair(tmp_path):
    answers = dict(ANSWERS, **{"3.0": float("nan")})  # the store records a failure as NULL
    judge = Planted(answers)
    store, rows = _store(tmp_path, judge)
    assert ("p0", "3.0") not in {(p, y) for p, y, _ in store.scalar_answers(1)}
    assert "p0" not in {p for p, _, _ in chosen_rejected(store.scalar_answers(1))}  # one answered response left
    store.close()
