import random

import numpy as np
import pytest

from pipeline.selection.bandit import UCB, UCBOptions
from pipeline.selection.base import SELF
from pipeline.selection.registry import build_selector
from pipeline.transfer import ScoreCache, arm_names, best_of_n, transfer


def test_best_of_n_replacement_counts_and_tie_breaking():
    online = [["o0", "o1", "o2", "o3"], ["p0", "p1", "p2", "p3"]]
    pool = [["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"]]
    scores = [[0.1, 0.9, 0.5, 0.8, 0.2], [1.0, 0.0, 0.0, 0.0, 0.5]]
    out = transfer(online, pool, scores, replace_num=2, rng=random.Random(0))
    assert out[0] == ["b", "d", "o2", "o3"] and out[1] == ["f", "j", "p2", "p3"]
    assert transfer(online, pool, scores, replace_num=0, rng=random.Random(0)) == online
    # all-tied scores: the pick is spread over the pool, not always the first sample
    picks = {best_of_n([0.0] * 5, 1, random.Random(s))[0] for s in range(50)}
    assert len(picks) == 5


def test_score_cache_calls_each_source_once_per_response():
    calls = []

    def src(docs, resp, refs):
        calls.append(len(resp))
        return [len(r) for r in resp]

    cache = ScoreCache({"len": src})
    rows = [{"id": "1", "document": "d", "summary": "s"}, {"id": "2", "document": "d", "summary": "s"}]
    assert cache.scores("len", rows, [["ab", "abc"], ["a", "ab"]]) == [[2, 3], [1, 2]]
    assert cache.scores("len", rows, [["ab", "abcd"], ["a", "ab"]]) == [[2, 4], [1, 2]]
    assert calls == [4, 1]


def test_ucb_value_arithmetic_and_reset():
    ucb = UCB(["rouge", "big"], 0, UCBOptions(c=1.0, block_size=10, self_win=0.55))
    ucb.update("rouge", [1, 0, 1, 1])
    assert ucb.value("rouge") == pytest.approx(0.75 + 1 / 2)
    ucb.update("big", [0] * 9)  # 0 + 1/3
    ucb.update(SELF, [0.55] * 16)
    assert ucb.value(SELF) == pytest.approx(0.55 + 0.25)
    assert ucb.choose() == ("rouge", pytest.approx(1.25))
    ucb.new_iteration(2)
    assert ucb.n == {"rouge": 0, "big": 0, SELF: 0}
    carry = UCB(["a"], 0, UCBOptions(carry=True))
    carry.update("a", [1])
    carry.new_iteration(2)
    assert carry.n["a"] == 1


def test_ucb_finds_the_best_arm_with_sublinear_regret():
    means = {"a": 0.3, "b": 0.7, "c": 0.5, SELF: 0.55}
    regrets = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ucb = UCB(["a", "b", "c"], seed, UCBOptions(c=1.0, self_win=0.55))
        regret, curve = 0.0, []
        for _ in range(600):
            arm, _ = ucb.choose()
            win = 0.55 if arm == SELF else float(rng.random() < means[arm])
            ucb.update(arm, [win])
            regret += 0.7 - means[arm]
            curve.append(regret)
        regrets.append(curve)
        assert max(ucb.n, key=ucb.n.get) == "b"
    mean = np.mean(regrets, axis=0)
    # sublinear: the second 300 rounds add far less regret than the first 300
    assert mean[-1] - mean[299] < 0.5 * mean[299]
    assert mean[-1] / 600 < 0.1


def test_selector_registry_errors():
    with pytest.raises(ValueError, match="unknown selector 'ubc'.*Did you mean 'ucb'"):
        build_selector("ubc", {}, ["rouge"], 0)
    with pytest.raises(ValueError, match="unknown option"):
        build_selector("ucb", {"cc": 1}, ["rouge"], 0)
    with pytest.raises(ValueError, match="needs at least one entry"):
        build_selector("fixed", {}, [], 0)
    with pytest.raises(ValueError, match="is not a source"):
        build_selector("fixed", {"arm": "bleu"}, ["rouge"], 0)
    assert build_selector("fixed", {}, ["rouge"], 0).choose()[0] == "rouge"
    assert build_selector("none", {}, ["rouge"], 0).choose()[0] == SELF
    with pytest.raises(ValueError, match="appear twice"):
        arm_names([{"name": "loglik"}, {"name": "loglik"}])
    assert arm_names([{"name": "loglik", "label": "big"}, {"name": "loglik"}]) == ["big", "loglik"]


@pytest.mark.parametrize("name", ["relevance", "dual_active", "lowrank", "shared"])
def test_selection_stages_are_selectors(name):
    sel = build_selector(name, {}, ["rouge", "bertscore"], 0)
    assert sel.uses_pool == (name == "relevance")  # the others label the K online responses, no Best-of-N
    assert sel.block_size == (16 if name == "relevance" else 0)
    sel.new_iteration(1)
    assert sel.choose()[0] == SELF  # relevance: its pilot block; the others: no transfer arm by default
    assert build_selector(name, {"arm": "rouge"} if name != "relevance" else {}, ["rouge"], 0).uses_pool


def test_selection_stage_option_errors():
    with pytest.raises(ValueError, match="unknown selector 'dual_activ'.*Did you mean 'dual_active'"):
        build_selector("dual_activ", {}, ["rouge"], 0)
    with pytest.raises(ValueError,
                       match=r"unknown option\(s\) \['budgt'\] for selector 'lowrank'.*did you mean 'budget'"):
        build_selector("lowrank", {"budgt": 4}, ["rouge"], 0)
    bad = [("lowrank", {"population": {"grumpy": 1}}, "unknown persona"),
           ("lowrank", {"target": {"default": -1}}, "weights must be finite numbers >= 0"),
           ("dual_active", {"teachers": ["guru"]}, "unknown teacher 'guru'"),
           ("dual_active", {"teachers": [{"name": "oracle", "cost": 0}]}, "cost must be a number > 0"),
           ("dual_active", {"budget": -1}, r"selector 'dual_active': 'online.selector.params.budget' must be >= 0"),
           ("relevance", {"source_budget": 0}, r"'online.selector.params.source_budget' must be > 0 and <= 1, got 0"),
           ("relevance", {"block_size": 0}, r"'online.selector.params.block_size' must be >= 1"),
           ("ucb", {"c": "big"}, r"'online.selector.params.c' must be a number"),
           ("relevance", {"floor": 0.6}, "exceeds the whole budget"),
           ("shared", {"adapter": "deep"}, "adapter' must be one of affine, linear"),
           ("dual_active", {"features": "pixels"}, "features' must be one of"),
           ("dual_active", {"arm": "bleu"}, "is not a source")]
    for name, params, msg in bad:
        with pytest.raises(ValueError, match=msg):
            build_selector(name, params, ["rouge", "bertscore"], 0)


def test_self_win_defaults_to_the_lucky_transfer_rate_plus_a_margin():
    """self_win = replace_num / k + 0.05 unless the recipe gives it: the paper's 0.55 is 4 of 8 transferred."""
    assert build_selector("ucb", {}, ["rouge"], 0).self_win == pytest.approx(0.55)  # defaults k=8, replace_num=4
    assert build_selector("ucb", {}, ["rouge"], 0, k=8, replace_num=4).self_win == pytest.approx(0.55)
    assert build_selector("ucb", {}, ["rouge"], 0, k=4, replace_num=1).self_win == pytest.approx(0.30)
    assert build_selector("ucb", {}, ["rouge"], 0, k=3, replace_num=2).self_win == pytest.approx(2 / 3 + 0.05)
    assert build_selector("ucb", {"self_win": 0.9}, ["rouge"], 0, k=4, replace_num=1).self_win == 0.9
    relevance = build_selector("relevance", {"bandit": True}, ["rouge"], 0, k=4, replace_num=1)
    assert relevance.self_win == pytest.approx(0.30)
    relevance.new_iteration(1)
    assert relevance.ucb.self_win == pytest.approx(0.30)  # the bandit over the composite arm uses it


def test_validate_passes_k_and_replace_num_to_the_selector():
    from pipeline.config import OnlineConfig, SelectorConfig
    from pipeline.online import validate

    sel = validate(OnlineConfig(k=8, n_pool=8, replace_num=2, selector=SelectorConfig("ucb", {})), ["rouge"])
    assert sel.self_win == pytest.approx(0.30)
    paper = validate(OnlineConfig(k=8, n_pool=32, replace_num=4, selector=SelectorConfig("ucb", {})), ["rouge"])
    assert paper.self_win == pytest.approx(0.55)
