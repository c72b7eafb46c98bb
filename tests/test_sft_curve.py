"""The SFT-budget curve (eval/sft_curve.py) measures the policies the SFT stage would make at each budget."""
import json

import pytest
import torch

from eval import sft_curve
from pipeline.config import load_recipe
from pipeline.models import load_policy
from pipeline.runner import policy_config, run


def _recipe(tmp_path, steps: int):
    return load_recipe(None, [
        f"run_dir={tmp_path}", "data.n_examples=80", "data.eval_size=8", "data.test_size=8",
        "policy.name=shape:t5-tiny", "sft.copy_steps=4", f"sft.steps={steps}", "sft.batch_size=8",
        "sft.eval_examples=0", "online.k=2", "online.n_pool=2", "online.max_new_tokens=8"])


def test_each_budget_is_the_policy_the_sft_stage_makes_with_that_many_steps(tmp_path):
    # two SFT stages (3 and 6 steps), against one copy pretraining followed by budgets 6 then 3 (out of order, so
    # the second budget must really restart from the copy-pretrained checkpoint)
    stage = {}
    for steps in (3, 6):
        recipe = _recipe(tmp_path / f"stage{steps}", steps)
        run(recipe, until="sft")
        stage[steps] = load_policy(policy_config(recipe, recipe.out / "sft" / "model")).model.state_dict()
    recipe = _recipe(tmp_path / "curve", 6)
    run(recipe, until="data")
    with open(tmp_path / "log.jsonl", "w") as log_file:
        seen = []
        for budget, policy in sft_curve.trained(recipe, [6, 3, 0], log_file):
            state = policy.model.state_dict()
            if budget:
                assert all(torch.equal(state[k], stage[budget][k]) for k in state), budget
            else:  # no SFT at all: the copy-pretrained policy, which differs from both
                assert not torch.equal(state["lm_head.weight"], stage[3]["lm_head.weight"])
            seen.append(budget)
    assert seen == [6, 3, 0]


def test_curve_writes_a_row_per_budget_with_rates_in_range(tmp_path):
    recipe = _recipe(tmp_path, 3)
    run(recipe, until="data")
    rows = sft_curve.curve(recipe, [0, 2], n_prompts=4)
    assert [r["sft_steps"] for r in rows] == [0, 2]
    for r in rows:
        for fact in ("person", "place", "number"):
            c = r["coverage"][fact]
            assert 0 <= c["sample"] <= 1 and c["online"] <= c["pool"]  # K online samples are part of the pool
    saved = json.loads((recipe.out / "sft_curve" / "curve.json").read_text())
    assert [r["sft_steps"] for r in saved] == [0, 2]
    assert (recipe.out / "sft_curve" / "curve.md").read_text().count("\n| ") == 3  # header + two budgets


def test_bad_budget_list_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        sft_curve.main(["r.yaml", "--steps", "10,-5"])
    assert e.value.code == 2
    assert "--steps must list values >= 0" in capsys.readouterr().err
