import json
import random

import pytest
import torch

from pipeline import world
from pipeline.config import OnlineConfig, WorldConfig, load_recipe
from pipeline.labels import LabelStore
from pipeline.online import label_responses, make_pairs, reference_logprobs, update
from pipeline.runner import run


def test_pairs_take_best_and_worst_and_drop_ties():
    rows = [{"id": str(i)} for i in range(3)]
    responses = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    scores = [[0.1, 0.9, 0.5], [1.0, 1.0, 1.0], [None, 2.0, 3.0]]
    pairs, dropped = make_pairs(rows, responses, scores, random.Random(0))
    assert dropped == 1
    assert [(p[1], p[2]) for p in pairs] == [("b", "a"), ("i", "h")]
    # two responses tie for best: either may be chosen, never always the first
    chosen = {make_pairs(rows[:1], [["x", "y", "z"]], [[1.0, 1.0, 0.0]], random.Random(s))[0][0][1] for s in range(20)}
    assert chosen == {"x", "y"}


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
    pairs = [(r, r["summary"], "The council will meet again next month.", "Critics said more details were needed.")
             for r in rows]
    cfg = OnlineConfig(loss=loss, beta=0.1, lr=1e-3, warmup=0, epochs=1, batch_size=8)
    ref = reference_logprobs(policy, pairs, cfg, None)
    before = (ref["w"] - ref["l"]).mean().item()
    stats = update(policy, pairs, ref, cfg, seed=0)
    after_w = policy.logprobs([p[0]["document"] for p in pairs], [p[1] for p in pairs])[0]
    after_l = policy.logprobs([p[0]["document"] for p in pairs], [p[2] for p in pairs])[0]
    assert stats["steps"] == 1
    assert (after_w - after_l).mean().item() > before + 0.05


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
