"""Judges and sources meet the named contracts of reward_sources/contracts.py, and capabilities are read only from
what a judge declares."""
from reward_sources.contracts import PairwiseJudge, ScalarJudge, Source, is_shardable, knows_utility
from reward_sources.registry import build_judge, build_source


class Pairwise:
    name, kind = "toy", "pairwise"

    def compare(self, rows, a, b, seed=0):
        return [0.5] * len(a)


def test_builtin_judges_and_sources_meet_their_contracts():
    oracle = build_judge("oracle", {})
    assert isinstance(oracle, ScalarJudge) and knows_utility(oracle) and is_shardable(oracle)
    assert isinstance(build_source({"name": "rouge"}), Source)


def test_capabilities_come_from_declarations_only():
    toy = Pairwise()
    assert isinstance(toy, PairwiseJudge) and not isinstance(toy, ScalarJudge)
    assert not knows_utility(toy) and not is_shardable(toy)
    toy.shardable = "yes"  # a truthy non-declaration does not make batches splittable
    assert not is_shardable(toy)
    toy.shardable = True
    assert is_shardable(toy)
