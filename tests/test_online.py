import json
import random

import pytest
import torch

from pipeline import world
from pipeline.config import OnlineConfig, WorldConfig, load_recipe
from pipeline.labels import LabelStore, label_responses
from pipeline.online import OnlineStopped, Pair, make_pairs, reference_logprobs, update
from pipeline.runner import run


def test_pairs_take_best_and_worst_and_drop_ties():
    rows = [{"id": str(i)} for i in range(3)]
    responses = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    scores = [[0.1, 0.9, 0.5], [1.0, 1.0, 1.0], [None, 2.0, 3.0]]
    pairs, dropped = make_pairs(rows, responses, scores, random.Random(0))
    assert dropped == 1
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("i", "h")]
    # two responses tie for best: either may be chosen, never always the first
    chosen = {make_pairs(rows[:1], [["x", "y", "z"]], [[1.0, 1.0, 0.0]], random.Random(s))[0][0].chosen
              for s in range(20)}
    assert chosen == {"x", "y"}


def test_min_margin_drops_pairs_the_judge_barely_separates():
    rows = [{"id": str(i)} for i in range(4)]
    responses = [["a", "b"], ["c", "d"], ["e", "f", "g"], ["h", "i"]]
    # spans 0.6, 2.0, 1.0 (max 1.5 - min 0.5, the middle score irrelevant), 0.0
    scores = [[1.0, 0.4], [2.0, 0.0], [0.5, 1.2, 1.5], [0.3, 0.3]]
    pairs, dropped = make_pairs(rows, responses, scores, random.Random(0), min_margin=1.0)
    assert [(p.chosen, p.rejected) for p in pairs] == [("c", "d"), ("g", "e")]  # a span equal to the margin is kept
    assert dropped == 2
    assert len(make_pairs(rows, responses, scores, random.Random(0))[0]) == 3  # default: exact ties only


def test_a_margin_that_leaves_no_pair_stops_the_iteration_in_one_line(tmp_path):
    with pytest.raises(OnlineStopped, match="spanned less than online.min_margin=100"):
        run(tiny_recipe(tmp_path, "online.iterations=1", "online.min_margin=100"))


class AlwaysA:
    """A position-biased pairwise judge: prefers whatever is shown first."""
    kind, name = "pairwise", "always-a"

    def compare(self, rows, a, b, seed=0):
        return [0.5 for _ in a]  # both orders asked -> disagreement -> tie (see reward_sources/pairwise_llm.py)


class Longer:
    kind, name = "pairwise", "longer"

    def compare(self, rows, a, b, seed=0):
        return [1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)]


def test_pairwise_judge_round_robin_scores(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    rows = [{"id": "p"}]
    scores = label_responses(store, Longer(), rows, [["aaa", "a", "aa"]], 1, 0)
    assert scores == [[2.0, 0.0, 1.0]] and store.count() == 3  # K(K-1)/2 comparisons
    assert label_responses(store, AlwaysA(), rows, [["aaa", "a", "aa"]], 1, 0) == [[1.0, 1.0, 1.0]]
    assert make_pairs(rows, [["aaa", "a", "aa"]], [[1.0, 1.0, 1.0]], random.Random(0))[1] == 1


@pytest.mark.parametrize("loss", ["dpo", "ipo", "xpo"])
def test_one_update_raises_the_margin(make_policy, loss):
    torch.manual_seed(0)
    policy = make_policy("t5-tiny")
    rows = world.generate(8, WorldConfig(), seed=1)
    pairs = [Pair(r, r["summary"], "The council will meet again next month.", "Critics said more details were needed.")
             for r in rows]
    cfg = OnlineConfig(loss=loss, beta=0.1, lr=1e-3, warmup=0, epochs=1, batch_size=8)
    ref = reference_logprobs(policy, pairs, cfg, None)
    before = (ref["w"] - ref["l"]).mean().item()
    stats = update(policy, pairs, ref, cfg, seed=0)
    after_w = policy.logprobs([p.row["document"] for p in pairs], [p.chosen for p in pairs])[0]
    after_l = policy.logprobs([p.row["document"] for p in pairs], [p.rejected for p in pairs])[0]
    assert stats["steps"] == 1
    assert (after_w - after_l).mean().item() > before + 0.05


def test_nll_term_keeps_the_chosen_response_likelier(make_policy):
    """DPO + nll_alpha raises log π(chosen) above what DPO alone leaves it at, from the same start and batches."""
    rows = world.generate(8, WorldConfig(), seed=1)
    pairs = [Pair(r, r["summary"], "The council will meet again next month.", "Critics said more details were needed.")
             for r in rows]
    chosen = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        policy = make_policy("t5-tiny")
        cfg = OnlineConfig(loss="dpo", beta=0.1, lr=1e-3, warmup=0, epochs=2, batch_size=4, nll_alpha=alpha)
        update(policy, pairs, reference_logprobs(policy, pairs, cfg, None), cfg, seed=0)
        chosen[alpha] = policy.logprobs([p.row["document"] for p in pairs], [p.chosen for p in pairs])[0].mean().item()
    assert chosen[1.0] > chosen[0.0] + 0.1


def tiny_recipe(tmp_path, *extra):
    return load_recipe(None, [
        f"run_dir={tmp_path}", "data.n_examples=80", "data.eval_size=8", "data.test_size=8",
        "policy.name=shape:t5-tiny", "sft.steps=5", "sft.batch_size=8", "sft.eval_examples=4",
        "online.iterations=2", "online.prompts_per_iteration=6", "online.k=3", "online.max_new_tokens=8",
        "online.epochs=1", "online.batch_size=4", "eval.n_prompts=6", "eval.seeds=[0,1]", "eval.max_new_tokens=8",
        *extra])


def test_pipeline_end_to_end_and_resume_reuses_labels(tmp_path):
    recipe = tiny_recipe(tmp_path)
    run(recipe)
    m1 = json.loads((tmp_path / "online" / "iter_2" / "metrics.json").read_text())
    store = LabelStore(tmp_path / "labels.sqlite")
    n_labels, spent = store.count(), store.spent()
    assert spent["1"] == spent["2"] == 6 * 3  # prompts x K per iteration
    assert m1["labels_this_iteration"] == m1["label_cost_this_iteration"] == 6 * 3
    assert m1["generated_responses"] == 6 * 3 and m1["selector"] == {}  # no pool without sources
    assert 0 < spent["eval"] <= 2 * 6 * 3  # seeds x prompts x 3 policies, identical responses asked once
    header = (tmp_path / "eval" / "winrates.csv").read_text().splitlines()[0]
    assert header == "policy_a,policy_b,iteration,seed,n_prompts,win_rate,ci_low,ci_high"
    assert (tmp_path / "eval" / "winrates.png").stat().st_size > 1000

    # Lose the second iteration (as if it crashed before its marker): the rerun redoes it with stored labels.
    for marker in ("online/iter_2/DONE", "online/DONE", "eval/DONE"):
        (tmp_path / marker).unlink()
    run(recipe)
    m2 = json.loads((tmp_path / "online" / "iter_2" / "metrics.json").read_text())
    assert m2["labels_asked_this_process"] == 0
    assert LabelStore(tmp_path / "labels.sqlite").count() == n_labels
    for key in ("pairs", "mean_judge_score", "loss_first", "loss_last"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-6)


def test_changed_recipe_is_refused_on_resume(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.runner import prepare_run_dir

    prepare_run_dir(tiny_recipe(tmp_path))
    with pytest.raises(ConfigError, match=r"recipe changed since .* \(online.beta\)"):
        prepare_run_dir(tiny_recipe(tmp_path, "online.beta=0.5"))
    prepare_run_dir(tiny_recipe(tmp_path, "online.beta=0.5"), force=True)


def test_more_iterations_on_resume_continues_the_run(tmp_path):
    run(tiny_recipe(tmp_path, "online.iterations=1"))
    first = (tmp_path / "online" / "iter_1" / "model" / "model.safetensors").read_bytes()
    run(tiny_recipe(tmp_path, "online.iterations=2"), force=True)
    assert (tmp_path / "online" / "iter_1" / "model" / "model.safetensors").read_bytes() == first  # not redone
    assert (tmp_path / "online" / "iter_2" / "DONE").exists()
    rows = (tmp_path / "eval" / "winrates.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[2] for r in rows}) == ["1", "2"]  # the eval was redone for the new iterate


def test_every_method_labels_the_same_online_samples_at_iteration_1(make_policy, tmp_path):
    """Online samples are keyed by prompt id and seeded by (online seed, iteration) only: no transfer (no pool
    drawn), pure exploit of a rouge source and UCB (pool of N drawn after the K) draw the same K online samples
    at iteration 1, so the judged responses differ only at the transferred indices 0..replace_num-1."""
    from pipeline.config import SelectorConfig
    from pipeline.online import run_iteration, validate
    from reward_sources.registry import build_judge, build_source

    rows = world.generate(12, WorldConfig(), seed=1)
    judge, scorers = build_judge("oracle", {}), {"rouge": build_source({"name": "rouge"})}
    K, N, R = 3, 3, 1
    seen = {}
    for name, params in [("none", {}), ("fixed", {"arm": "rouge"}), ("ucb", {"block_size": 2})]:
        cfg = OnlineConfig(prompts_per_iteration=6, k=K, n_pool=N, replace_num=R, max_new_tokens=8,
                           gen_batch_size=5, epochs=1, batch_size=4, warmup=0, selector=SelectorConfig(name, params))
        selector, policy = validate(cfg, list(scorers)), make_policy("t5-tiny")
        drawn, judged = [], []
        sample, label = policy.sample, selector.label
        policy.sample = lambda *a, **kw: drawn.append(sample(*a, **kw)) or drawn[-1]
        selector.label = lambda ctx: judged.extend(ctx.online) or label(ctx)
        res = run_iteration(1, policy, rows, judge, LabelStore(tmp_path / f"{name}.sqlite"), scorers, selector, cfg,
                            None, tmp_path)
        seen[name] = drawn[0], judged, res["arms"]
    online, judged_none, _ = seen["none"]
    assert [len(ys) for ys in online] == [K] * 6 and judged_none == online  # no pool without transfer
    assert len({y for ys in online for y in ys}) > 6  # really sampled
    for name in ("fixed", "ucb"):
        drawn, judged, arms = seen[name]
        assert [ys[:K] for ys in drawn] == online and [len(ys) for ys in drawn] == [K + N] * 6
        assert [ys[R:] for ys in judged] == [ys[R:] for ys in online]  # ys[-1]: XPO's untransferred sample too
        per_prompt = [r["arm"] for r in arms for _ in range(r["prompts"])]
        transferred = [p for p, arm in enumerate(per_prompt) if arm != "self"]
        assert transferred and all(set(judged[p][:R]) <= set(drawn[p][K:]) for p in transferred)


def test_transfer_without_a_usable_pool_is_refused(tmp_path):
    """A source arm with no pool (UCB would credit a source with the policy's own responses) and a pool smaller
    than replace_num: one-line errors from validate, ConfigError through the runner; no transfer needs no pool."""
    from pipeline.config import ConfigError, SelectorConfig
    from pipeline.online import validate
    from pipeline.runner import build_scorers

    def cfg(name, n_pool, replace_num=2, params=None):
        return OnlineConfig(k=4, n_pool=n_pool, replace_num=replace_num, selector=SelectorConfig(name, params or {}))

    no_pool = (r"^selector '{}' transfers from online.sources but online.n_pool is 0: set online.n_pool to at "
               r"least online.replace_num \(2; .*or use selector 'none' or drop online.sources$")
    for name, params in [("ucb", {}), ("fixed", {}), ("relevance", {}), ("dual_active", {"arm": "rouge"})]:
        with pytest.raises(ValueError, match=no_pool.format(name)):
            validate(cfg(name, 0, params=params), ["rouge"])
    small = (r"^online.n_pool \(1\) is smaller than online.replace_num \(2\): Best-of-N cannot transfer 2 responses "
             r"from a pool of 1; raise online.n_pool to at least 2 or lower online.replace_num$")
    with pytest.raises(ValueError, match=small):
        validate(cfg("ucb", 1), ["rouge"])
    assert validate(cfg("ucb", 2), ["rouge"]).uses_pool
    for name, params in [("none", {}), ("dual_active", {})]:  # these never transfer: no pool needed
        assert not validate(cfg(name, 0, params=params), ["rouge"]).uses_pool
    assert not validate(cfg("none", 0, replace_num=9), ["rouge"]).uses_pool
    recipe = tiny_recipe(tmp_path, "online.sources=[{name: rouge}]", "online.selector.name=ucb", "online.n_pool=0")
    with pytest.raises(ConfigError, match=r"online.n_pool is 0: set online.n_pool") as e:
        build_scorers(recipe)
    assert "\n" not in str(e.value)


def test_sft_anchor_keeps_the_references_likelier_than_the_same_update_without_it(make_policy):
    # pairs whose chosen is a filler sentence: the preference loss alone pulls the policy away from writing summaries
    rows = world.generate(16, WorldConfig(), seed=1)
    pairs = [Pair(r, "The council will meet again next month.", r["summary"], r["summary"]) for r in rows[:8]]
    anchor_rows = rows[8:]
    nll = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        policy = make_policy("t5-tiny")
        cfg = OnlineConfig(beta=0.1, lr=3e-3, warmup=0, epochs=3, batch_size=4, sft_anchor=weight)
        ref = reference_logprobs(policy, pairs, cfg, None)
        stats = update(policy, pairs, ref, cfg, seed=0, anchor_rows=anchor_rows if weight else None)
        total, _, count = policy.logprobs([r["document"] for r in anchor_rows], [r["summary"] for r in anchor_rows])
        nll[weight] = -(total.sum() / count.sum()).item()
        assert stats["steps"] == 6
    assert nll[1.0] < nll[0.0] - 0.1


def test_sft_anchor_without_rows_is_refused(make_policy):
    policy = make_policy("t5-tiny")
    cfg = OnlineConfig(sft_anchor=1.0)
    with pytest.raises(ValueError, match="sft_anchor"):
        update(policy, [], {"w": torch.zeros(0), "l": torch.zeros(0)}, cfg, seed=0)
