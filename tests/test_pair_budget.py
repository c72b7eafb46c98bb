"""The ideal-pair probe (eval/pair_budget.py): pairs are the pool's best and worst by exact utility, and each budget's
update moves the SFT policy."""
import pytest

from eval import pair_budget
from pipeline.config import load_recipe
from pipeline.runner import run
from reward_sources.oracle import PERSONAS


def test_ideal_pairs_take_the_highest_and_lowest_utility_and_skip_flat_prompts():
    facts = {"person": "Ann Bo", "role": "mayor", "place": "Kent", "number": "12", "event": "jobs",
             "distractors": {"person": [], "place": [], "number": []}}
    text = "Mayor Ann Bo has cut 12 jobs in Kent."
    row = {"id": "p", "document": text, "summary": text, "facts": facts}
    good, bad = "Mayor Ann Bo has cut 12 jobs in Kent.", "The mayor spoke."
    pairs = pair_budget.ideal_pairs([row, row], [[bad, good, bad], [bad, bad]], PERSONAS["default"])
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].explore) == (good, bad, bad)
    assert pairs[1] is None  # every sample of the second prompt has the same utility


def test_each_budget_row_is_written_with_its_pairs(tmp_path):
    recipe = load_recipe(None, [
        f"run_dir={tmp_path}", "data.n_examples=80", "data.eval_size=8", "data.test_size=8",
        "policy.name=shape:t5-tiny", "sft.steps=5", "sft.batch_size=8", "sft.eval_examples=0",
        "online.max_new_tokens=8", "online.epochs=1", "online.batch_size=4", "online.lr=3e-3"])
    run(recipe, until="sft")
    rows = pair_budget.probe(recipe, [4, 8], pool=3, n_prompts=4, n_samples=2)
    assert [r["prompts"] for r in rows] == [0, 4, 8]
    assert rows[0]["pairs"] == 0 and 0 < rows[1]["pairs"] <= 4 and rows[1]["pairs"] <= rows[2]["pairs"] <= 8
    assert all(r["chosen_utility"] > r["rejected_utility"] for r in rows[1:])
    assert (recipe.out / "pair_budget" / "budget.md").read_text().count("\n| ") == 4  # header + SFT + two budgets


def test_bad_budget_list_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        pair_budget.main(["r.yaml", "--pairs", "0"])
    assert e.value.code == 2
    assert "--pairs must list values >= 1" in capsys.readouterr().err
