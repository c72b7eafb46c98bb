"""The four selection stages as selectors of the online loop (pipeline/selection/*_selector.py): one online
iteration each on the tiny synthetic world from a recipe, checking what each selector did (not only that it ran),
plus a planted setting for dual_active's teacher rationalities and resume equality for relevance."""
import json
import random

import numpy as np
import pytest

from pipeline import data as data_stage
from pipeline import world
from pipeline.config import WorldConfig, load_recipe
from pipeline.labels import LabelStore
from pipeline.models import load_policy
from pipeline.online import make_pairs, run_iteration, run_online
from pipeline.runner import build_judge, policy_config, run
from pipeline.selection import dual_active_selector
from pipeline.selection.base import SELF, LabelContext, candidate_pairs
from pipeline.selection.dual_active import lcb_scores
from pipeline.selection.registry import build_selector
from pipeline.selection.relevance_selector import COMPOSITE, capped_split
from pipeline.transfer import ScoreCache
from reward_sources.oracle import PERSONAS, utility
from reward_sources.registry import build_source

K = 4


def planted_utility(rows):
    """A source that knows the oracle's noiseless utility (default persona): the planted 'relevant' source."""
    by_doc = {r["document"]: r for r in rows}

    def score(documents, responses, references):
        return [utility(by_doc[d], y, PERSONAS["default"]) for d, y in zip(documents, responses)]

    return score


def length(documents, responses, references):
    return [float(len(y.split())) for y in responses]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("selectors")
    base = [f"run_dir={out}", "data.n_examples=120", "data.eval_size=8", "data.test_size=8",
            "policy.name=shape:t5-tiny", "sft.steps=5", "sft.batch_size=8", "sft.eval_examples=0",
            "online.iterations=1", "online.prompts_per_iteration=16", f"online.k={K}", "online.n_pool=4",
            "online.replace_num=2", "online.max_new_tokens=10", "online.epochs=1", "online.batch_size=8",
            "online.sources=[{name: rouge}]"]
    run(load_recipe(None, base), until="sft")
    rows = data_stage.load_split(out / "data", "train")
    scorers = {"rouge": build_source({"name": "rouge"}), "utility": planted_utility(rows), "length": length}
    return {"out": out, "base": base, "rows": rows, "scorers": scorers}


def one_iteration(tiny, tmp_path, name, params, extra=(), t=1):
    """One online iteration of the tiny world with the recipe's selector; returns (result, selector, store)."""
    recipe = load_recipe(None, [*tiny["base"], f"online.selector.name={name}",
                                f"online.selector.params={json.dumps(params)}", *extra])
    selector = build_selector(name, recipe.online.selector.params, list(tiny["scorers"]), seed=recipe.online.seed)
    store = LabelStore(tmp_path / "labels.sqlite")
    policy = load_policy(policy_config(recipe, tiny["out"] / "sft" / "model"))
    res = run_iteration(t, policy, tiny["rows"], build_judge(recipe), store, tiny["scorers"], selector, recipe.online,
                        None, tmp_path)
    json.dumps(res["metrics"])  # metrics.json must serialise
    return res, selector, store


def round_trip(selector, name, params, arms):
    """state() is JSON and a fresh selector loaded from it has the same state."""
    fresh = build_selector(name, params, arms, seed=0)
    fresh.load_state(json.loads(json.dumps(selector.state())))
    assert fresh.state() == selector.state()


# ----------------------------------------------------------------------------------------------- relevance
def test_relevance_pilot_estimates_nu_then_transfers_from_the_composite(tiny, tmp_path):
    params = {"block_size": 4, "pilot_blocks": 2, "features": "both"}
    res, sel, store = one_iteration(tiny, tmp_path, "relevance", params, ["judge.params={teacher: expert}"])
    arms = [r["arm"] for r in res["arms"]]
    assert arms == [SELF, SELF, COMPOSITE, COMPOSITE]  # pilot blocks on the self arm, then the composite arm
    nu = res["selector_state"]["fit"]["nu"]
    assert set(nu) == {"rouge", "utility", "length"} and res["metrics"]["selector"]["nu"] == nu
    # Planted: the judge is the oracle's utility + little noise, so the utility source is the relevant one.
    assert max(nu, key=lambda m: abs(nu[m])) == "utility" and nu["utility"] > 0
    alloc = sel.fit["allocation"]
    assert sum(alloc.values()) == pytest.approx(1.0) and min(alloc.values()) >= 0.05 - 1e-12
    assert alloc["utility"] == max(alloc.values())
    # Equal label budget: the judge labelled the K online responses of every prompt, pilot included.
    assert res["metrics"]["labels_this_iteration"] == 16 * K == store.count()
    # The composite arm ranks a pool by sum_m nu_m (r_m - pilot mean_m) / pilot sd_m.
    rows = tiny["rows"][:3]
    pool = [[r["summary"], r["summary"] + " Zorbo Quix said.", "Nothing happened."] for r in rows]
    got = sel.pool_scores(COMPOSITE, ScoreCache(tiny["scorers"]), rows, pool)
    want = sum(nu[m] * (np.array(tiny["scorers"][m]([r["document"] for r in rows for _ in range(3)],
                                                     [y for ys in pool for y in ys],
                                                     [r["summary"] for r in rows for _ in range(3)]))
                        - sel.fit["mean"][m]) / sel.fit["sd"][m] for m in nu)
    assert np.allclose(np.ravel(got), want)
    round_trip(sel, "relevance", params, list(tiny["scorers"]))


def test_relevance_source_budget_scores_pools_by_allocation(tiny, tmp_path):
    assert capped_split(8, np.array([0.05, 0.95]), 4) == [4, 4]  # what a capped source cannot use goes elsewhere
    assert capped_split(4, np.array([0.05, 0.95]), 4) == [0, 4]
    assert sum(capped_split(5, np.array([0.2, 0.3, 0.5]), 4)) == 5
    params = {"block_size": 4, "pilot_blocks": 2, "features": "both", "source_budget": 0.5}
    res, sel, _ = one_iteration(tiny, tmp_path, "relevance", params, ["judge.params={teacher: expert}"])
    scored = res["metrics"]["selector"]["pool_scored"]
    assert sum(scored.values()) == 2 * round(0.5 * 3 * 4)  # two composite blocks of 4 prompts, 3 sources
    assert scored.get("utility", 0) == max(scored.values())


def test_relevance_resumed_run_equals_uninterrupted(tiny, tmp_path):
    """With repilot off, iteration 2 uses iteration 1's ν̂ from the saved state: a run resumed after iteration 1
    (a fresh process: a new selector loaded from selector.json) must do exactly what an uninterrupted one does."""
    def go(out, iterations):
        recipe = load_recipe(None, [*tiny["base"], f"online.iterations={iterations}", "online.selector.name=relevance",
                                    'online.selector.params={block_size: 8, repilot: false, features: both}'])
        store = LabelStore(out / "labels.sqlite")
        try:
            return run_online(recipe.policy, tiny["out"] / "sft" / "model", recipe.online, tiny["rows"],
                              build_judge(recipe), store, tiny["scorers"], out / "online")
        finally:
            store.close()

    whole = go(tmp_path / "a", 2)
    go(tmp_path / "b", 1)
    resumed = go(tmp_path / "b", 2)
    for sub in ("arms.csv", "selector.json"):
        assert (tmp_path / "a/online/iter_2" / sub).read_text() == (tmp_path / "b/online/iter_2" / sub).read_text()
    state = json.loads((tmp_path / "b/online/iter_2/selector.json").read_text())
    assert state["fit"] == json.loads((tmp_path / "b/online/iter_1/selector.json").read_text())["fit"]
    for key in ("pairs", "mean_judge_score", "loss_first", "loss_last", "labels_this_iteration"):
        assert resumed[1][key] == whole[1][key]
    arms = (tmp_path / "a/online/iter_2/arms.csv").read_text()
    assert ",self," not in arms  # no pilot in iteration 2: ν̂ carried over


# --------------------------------------------------------------------------------------------- dual_active
def _variants(row, rng):
    f, s = row["facts"], row["summary"]
    out = [s, s.replace(f["number"], str(int(f["number"]) + 7)), s.replace(f["person"], "Zorbo Quix"),
           s.replace(f["place"], "somewhere"), f"{f['person']} did something.", s + " Blanko Trev said so.",
           f"In {f['place']} it happened.", f"{f['person']} {f['number']}."]
    return rng.sample(list(dict.fromkeys(out)), K)


def test_dual_active_recovers_teacher_rationalities_on_a_planted_setting(tmp_path):
    """Responses whose oracle utility varies widely, φ = the (standardised) planted utility: the joint MLE must
    order the oracle teachers by reliability (temperatures 0.1 < 0.5 < 2), every teacher asked, the cost budget
    kept, every query in the label store, and a rerun over the same store asks nothing and scores the same."""
    rows = world.generate(40, WorldConfig(), seed=3)
    rng = random.Random(3)
    online = [_variants(r, rng) for r in rows]
    scorers = {"utility": planted_utility(rows)}
    params = {"features": "scores", "budget": 6, "warmup": 30}

    def label(store):
        sel = build_selector("dual_active", params, ["utility"], seed=0)
        sel.new_iteration(1)
        stats = {"labels": 0, "failed": 0}
        ctx = LabelContext(rows=rows, online=online, pool=[[] for _ in rows], cache=ScoreCache(scorers), store=store,
                           judge=None, iteration=1, seed=0, k=K, judge_stats=stats, rng=random.Random(0))
        return sel, sel.label(ctx), stats

    store = LabelStore(tmp_path / "l.sqlite")
    sel, scores, stats = label(store)
    info = sel.info()
    beta = info["beta"]
    assert beta["expert"] > beta["default"] > beta["novice"] > 0
    assert all(n >= 10 for n in info["queries"].values())  # the warm-up alone gives each teacher 10
    assert info["cost"] == stats["cost"] <= 6 * len(rows)
    assert stats["labels"] == sum(info["queries"].values()) == store.count()
    # LCB scores of the final fit, and they prefer high-utility responses.
    last = sel.last
    assert np.allclose(scores[0], lcb_scores(last["theta"], last["H"], last["phi"][0]))
    pairs, _ = make_pairs(rows, online, scores, random.Random(0))
    u = lambda r, y: utility(r, y, PERSONAS["default"])
    assert np.mean([u(r, w) - u(r, lose) for r, w, lose, _ in pairs]) > 1.0
    store2 = LabelStore(tmp_path / "l.sqlite")
    _, again, _ = label(store2)
    assert store2.asked == 0 and again == scores


def test_dual_active_in_the_loop_keeps_the_label_budget(tiny, tmp_path):
    params = {"features": "both", "dim": 8, "batch": 8}
    res, sel, store = one_iteration(tiny, tmp_path, "dual_active", params)
    m, info = res["metrics"], res["metrics"]["selector"]
    assert m["generated_responses"] == 16 * K  # no Best-of-N pool is drawn for it
    assert m["label_cost_this_iteration"] == info["cost"] <= 16 * K  # same budget as no transfer: K per prompt
    assert m["labels_this_iteration"] == sum(info["queries"].values()) == store.count()
    assert sum(n > 0 for n in info["queries"].values()) == 3 and set(info["beta"]) == {"expert", "default", "novice"}
    judges = {j for (j,) in store.db.execute("SELECT DISTINCT judge FROM labels")}
    assert judges == {f"oracle[default,{t},t={T:g}]|pair"
                      for t, T in (("expert", 0.1), ("default", 0.5), ("novice", 2.0))}
    assert m["pairs"] > 0 and res["arms"][0]["arm"] == SELF
    assert 0 <= info["heldout_agreement"] <= 1 and info["heldout_pairs"] > 0  # the synthetic rows carry facts
    round_trip(sel, "dual_active", params, list(tiny["scorers"]))


def test_dual_active_baselines_spend_the_same_cost_budget(tmp_path, monkeypatch):
    """strategy=random asks random pairs of random teachers, strategy=cheapest only the cheapest teacher; both spend
    the budget D-optimal spends (2 cost units per prompt here), and each is scored by the same LCB of its own fit."""
    rows = world.generate(30, WorldConfig(), seed=4)
    rng = random.Random(4)
    online = [_variants(r, rng) for r in rows]
    scorers = {"utility": planted_utility(rows)}
    got = {}

    def label(strategy: str, path):
        params = {"features": "scores", "budget": 2, "warmup": 12, "batch": 8, "strategy": strategy}
        sel = build_selector("dual_active", params, ["utility"], seed=0)
        sel.new_iteration(1)
        store = LabelStore(path)
        stats = {"labels": 0, "failed": 0}
        ctx = LabelContext(rows=rows, online=online, pool=[[] for _ in rows], cache=ScoreCache(scorers), store=store,
                           judge=None, iteration=1, seed=0, k=K, judge_stats=stats, rng=random.Random(0))
        return sel, store, stats, sel.label(ctx)

    for strategy in ("doptimal", "random", "cheapest"):
        # measuring the held-out agreement changes no pick, label or random stream: the scores equal those of the
        # same selector with the measurement switched off
        with monkeypatch.context() as m:
            m.setattr(dual_active_selector, "heldout_agreement", lambda *a, **k: {})
            _, unmeasured_store, _, unmeasured = label(strategy, tmp_path / f"{strategy}-unmeasured.sqlite")
            unmeasured_store.close()
        sel, store, stats, scores = label(strategy, tmp_path / f"{strategy}.sqlite")
        assert scores == unmeasured
        info = sel.info()
        judges = {j for (j,) in store.db.execute("SELECT DISTINCT judge FROM labels")}
        got[strategy] = (info, judges, stats)
        assert info["strategy"] == strategy and stats["labels"] == sum(info["queries"].values()) == store.count()
        assert np.allclose(scores[0], lcb_scores(sel.last["theta"], sel.last["H"], sel.last["phi"][0]))
        assert 0 <= info["heldout_agreement"] <= 1
        store.close()
    assert {s: g[2]["cost"] for s, g in got.items()} == {s: 2 * len(rows) for s in got}  # equal cost budget
    cheap, rand = got["cheapest"], got["random"]
    assert list(cheap[0]["queries"]) == ["novice"] and cheap[1] == {"oracle[default,novice,t=2]|pair"}
    assert cheap[0]["queries"]["novice"] == 4 * len(rows)  # 0.5 a query: four times the pairs of the default teacher
    assert all(n > 0 for n in rand[0]["queries"].values()) and len(rand[1]) == 3
    with pytest.raises(ValueError, match="strategy"):
        build_selector("dual_active", {"strategy": "greedy"}, ["utility"], seed=0)


def _label_block(tmp_path, rows, online, scorers, params, name="l"):
    sel = build_selector("dual_active", params, list(scorers), seed=0)
    sel.new_iteration(1)
    store = LabelStore(tmp_path / f"{name}.sqlite")
    ctx = LabelContext(rows=rows, online=online, pool=[[] for _ in rows], cache=ScoreCache(scorers), store=store,
                       judge=None, iteration=1, seed=0, k=K, judge_stats={"labels": 0, "failed": 0},
                       rng=random.Random(0))
    return sel, sel.label(ctx), store


def _by_hand(rows, online, store, theta, phi):
    """(agreement, pairs, ties) of θ̂ with the default persona's utility on the candidate pairs the store never saw
    (pairs of equal utility are the ties, left out)."""
    asked = {(p, frozenset((a, b))) for p, a, b in store.db.execute("SELECT prompt_id, response_a, response_b "
                                                                    "FROM labels")}
    agree, ties = [], 0
    for p, i, j in candidate_pairs(online):
        if (rows[p]["id"], frozenset((online[p][i], online[p][j]))) in asked:
            continue
        du = utility(rows[p], online[p][i], PERSONAS["default"]) - utility(rows[p], online[p][j], PERSONAS["default"])
        if du == 0:
            ties += 1
        else:
            margin = theta @ (phi[p][i] - phi[p][j])
            agree.append(0.5 if margin == 0 else float(np.sign(margin) == np.sign(du)))  # a tie of θ̂: half
    return np.mean(agree), len(agree), ties


def test_dual_active_heldout_agreement_on_pairs_never_asked(tmp_path):
    """The held-out agreement is θ̂'s pairwise accuracy against the exact utility on the candidate pairs no teacher
    was asked, ties in utility left out. Planted: with the utility itself as the only feature, θ̂ = +1 orders
    every pair as the utility does (agreement 1); with length as the only feature, it is the share of held-out
    pairs that θ̂'s length order gets right, counted here pair by pair."""
    rows = world.generate(30, WorldConfig(), seed=5)
    rng = random.Random(5)
    online = [_variants(r, rng) for r in rows]
    params = {"features": "scores", "budget": 2, "warmup": 12, "batch": 8}
    for name, scorers in (("planted", {"utility": planted_utility(rows)}), ("length", {"length": length})):
        sel, _, store = _label_block(tmp_path, rows, online, scorers, params, name)
        info, last = sel.info(), sel.last
        agreement, pairs, ties = _by_hand(rows, online, store, last["theta"], last["phi"])
        assert 0 < pairs < len(candidate_pairs(online)) and ties > 0
        assert (info["heldout_pairs"], info["heldout_ties"]) == (pairs, ties)
        assert info["heldout_agreement"] == pytest.approx(agreement, abs=1e-12) and "heldout_note" not in info
        if name == "planted":
            assert last["theta"] == pytest.approx([1.0]) and info["heldout_agreement"] == 1.0
        else:
            assert 0 < info["heldout_agreement"] < 1  # length is only partly what the oracle wants


class _Shortest:
    """A judge that needs no facts: the shorter response wins."""

    kind = "scalar"

    def __init__(self, teacher):
        self.name = f"shortest[{teacher}]"

    def score(self, rows, responses, seed=0):
        return [-float(len(y)) for y in responses]


def test_dual_active_heldout_agreement_is_none_without_facts(tmp_path, monkeypatch):
    """Real data carries no planted facts, so there is no exact utility to measure against: None, and saying why."""
    from pipeline.selection import dual_active_selector

    monkeypatch.setattr(dual_active_selector, "build_judge", lambda name, params: _Shortest(params["teacher"]))
    full = world.generate(20, WorldConfig(), seed=6)
    rng = random.Random(6)
    online = [_variants(r, rng) for r in full]
    rows = [{k: v for k, v in r.items() if k != "facts"} for r in full]
    sel, scores, store = _label_block(tmp_path, rows, online, {"length": length},
                                      {"features": "scores", "budget": 2, "warmup": 12, "batch": 8})
    info = sel.info()
    assert store.count() > 0 and all(None not in s for s in scores)  # labelled and scored as ever
    assert info["heldout_agreement"] is None and info["heldout_pairs"] is None and info["heldout_ties"] is None
    assert "no planted facts" in info["heldout_note"]


# ------------------------------------------------------------------------------------------------- lowrank
def test_lowrank_asks_a_persona_population_and_scores_by_prs(tiny, tmp_path):
    params = {"features": "both", "dim": 8, "rank": 2, "target": {"default": 0.75, "concise": 0.25}}
    res, sel, store = one_iteration(tiny, tmp_path, "lowrank", params)
    m, info = res["metrics"], res["metrics"]["selector"]
    assert info["contexts"] == sorted(PERSONAS) and sum(info["personas"].values()) == info["labels"]
    assert len(info["personas"]) >= 3  # annotators drawn from the whole population
    assert m["labels_this_iteration"] == info["labels"] == store.count() <= 16 * K
    judges = {j for (j,) in store.db.execute("SELECT DISTINCT judge FROM labels")}
    assert {j.split(",")[0] for j in judges} == {f"oracle[{p}" for p in info["personas"]}
    # Scores are the PRS lower bounds of the rank-2 factorised fit under the target mix of contexts.
    last = sel.last
    assert np.linalg.matrix_rank(last["model"].Theta, tol=1e-8) == 2
    # cautious, concise, coverage, default, facts_first
    assert np.allclose(last["x_target"], [0.0, 0.25, 0.0, 0.75, 0.0])
    for p in range(3):
        assert np.allclose(last["scores"][p], last["model"].lcb(last["x_target"], last["phi"][p], 1.0))
    assert m["pairs"] > 0
    round_trip(sel, "lowrank", params, list(tiny["scorers"]))


def test_lowrank_pooled_ignores_the_annotator_on_the_same_labels(tiny, tmp_path, monkeypatch):
    """pooled: the same pairs asked of the same annotators (identical label rows), but the fit sees one context for
    every label, so which persona answered cannot enter it; scores are its rank-1 lower bounds."""
    from pipeline.selection import lowrank_selector

    seen = []
    real = lowrank_selector.fit_lowrank
    monkeypatch.setattr(lowrank_selector, "fit_lowrank", lambda X, *a, **kw: seen.append(X) or real(X, *a, **kw))
    params = {"features": "both", "dim": 8, "rank": 2, "target": {"coverage": 1}}
    rows = {}
    for pooled in (False, True):
        res, sel, store = one_iteration(tiny, tmp_path / str(pooled), "lowrank", {**params, "pooled": pooled})
        rows[pooled] = sorted(store.db.execute("SELECT judge, prompt_id, response_a, response_b FROM labels"))
        info = res["metrics"]["selector"]
        assert info["pooled"] == pooled and res["metrics"]["labels_this_iteration"] == store.count()
    assert rows[True] == rows[False] and len({r[0] for r in rows[True]}) >= 3  # same labels, several personas
    assert seen[0].shape[1] == 5 and seen[1].shape == (len(rows[True]), 1) and np.all(seen[1] == 1.0)
    last = sel.last
    assert info["rank"] == 1 and info["contexts"] == ["pooled"] and np.allclose(last["x_target"], [1.0])
    assert np.allclose(last["scores"][0], last["model"].lcb(np.ones(1), last["phi"][0], 1.0))


# -------------------------------------------------------------------------------------------------- shared
def test_shared_proxy_is_trained_and_picks_the_pairs(tiny, tmp_path):
    params = {"dim": 8, "steps": 150, "folds": 2}
    res, sel, store = one_iteration(tiny, tmp_path, "shared", params)
    m, info = res["metrics"], res["metrics"]["selector"]
    assert m["labels_this_iteration"] == 16 * K == store.count()  # the judge labels the K online responses
    assert info["tasks"] == ["judge", "rouge", "utility", "length"]  # a head per source + the judge's BT head
    assert all(b < a for a, b in zip(info["loss_first"], info["loss_last"]))  # trained
    assert 0 <= info["heldout_proxy_judge_agreement"] <= 1
    last = sel.last
    import torch

    for p in range(4):  # each prompt scored by the fold model that never saw its judge labels
        model = last["models"][last["fold_of"][p]]
        with torch.no_grad():
            want = model.score(0, torch.as_tensor(last["phi"][p][:K], dtype=torch.float32)).numpy()
        assert np.allclose(last["scores"][p], want, atol=1e-6)
    # The pairs follow the proxy, not the judge: on some prompt the two disagree on the best response.
    assert any(np.argmax(s) != np.argmax([x if x is not None else -np.inf for x in j])
               for s, j in zip(last["scores"], last["judged"]))
    assert m["pairs"] > 0
    round_trip(sel, "shared", params, list(tiny["scorers"]))


def test_shared_single_task_trains_the_judge_head_alone(tiny, tmp_path, monkeypatch):
    """single_task: the same judge labels, but the model has only the judge's BT head and no source is scored."""
    from pipeline.selection import shared_selector

    trained = []
    real = shared_selector.train
    monkeypatch.setattr(shared_selector, "train", lambda model, data, *a, **kw: trained.append(
        (list(model.kinds), sorted(data))) or real(model, data, *a, **kw))
    res, sel, store = one_iteration(tiny, tmp_path, "shared", {"dim": 8, "steps": 30, "single_task": True})
    m, info = res["metrics"], res["metrics"]["selector"]
    assert m["labels_this_iteration"] == 16 * K == store.count()  # what the multi-task model gets
    assert info["tasks"] == ["judge"] and trained == [(["bt"], [0]), (["bt"], [0])]  # two folds, judge loss only
    assert all(len(model.heads) == 1 for model in sel.last["models"])


def test_candidate_pairs_skip_identical_and_repeated_texts():
    assert candidate_pairs([["a", "b", "a"], ["c", "c"]]) == [(0, 0, 1)]
