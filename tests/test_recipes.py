from pathlib import Path

import pytest

from pipeline.config import load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_parses_and_says_how_to_run_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("make " in first or "python -m" in first), first
    recipe = load_recipe(path)
    assert recipe.name


def test_paper_recipe_has_the_paper_settings():
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes/paper/xsum_t5.yaml")
    assert (r.policy.name, r.data.path, r.data.source) == ("google-t5/t5-small", "EdinburghNLP/xsum", "hub")
    assert (r.online.k, r.online.beta, r.online.lr, r.online.epochs, r.online.batch_size) == (8, 0.1, 5e-5, 3, 64)
    assert (r.online.prompts_per_iteration, r.online.iterations, r.online.max_new_tokens) == (10000, 3, 256)
    assert r.judge.name == "reward_model" and r.policy.max_input_tokens == 1000
