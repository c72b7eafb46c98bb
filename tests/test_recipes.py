from pathlib import Path

import pytest

from pipeline.config import load_recipe

# recipes/accelerate/ holds accelerate launch configs, not pipeline recipes (tests/test_bench.py reads them)
RECIPES = sorted(p for p in Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml")
                 if p.parent.name != "accelerate")


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


def test_paper_tpo_recipe_runs_one_tiny_iteration_offline(tmp_path):
    """The paper recipe's whole code path (local data instead of the hub, tiny shapes instead of hub models,
    a tiny random reward model as the judge), with the paper's K = 8, N = 32 and replace_num = 4."""
    import json

    from test_sources import _tiny_reward_model

    from pipeline import world
    from pipeline.config import WorldConfig
    from pipeline.labels import LabelStore
    from pipeline.runner import run

    rm = _tiny_reward_model(tmp_path, "bert", chat=False)
    data = tmp_path / "xsum_like.jsonl"  # real-data schema: no planted facts
    data.write_text("\n".join(json.dumps({k: r[k] for k in ("id", "document", "summary")})
                              for r in world.generate(40, WorldConfig(), seed=5)))
    tiny = "{name: 'shape:t5-tiny'}, sft: {steps: 2, batch_size: 4, eval_examples: 0}"
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/paper/xsum_t5_dpo.yaml", [
        f"run_dir={tmp_path / 'run'}", "data.source=local", f"data.path={data}", "data.eval_size=4",
        "data.test_size=4", "policy.name=shape:t5-tiny", "policy.max_input_tokens=64", "sft.steps=2",
        "sft.batch_size=4", "sft.eval_examples=2", "sft.eval_max_new_tokens=8",
        f"source_models=[{{label: t5_base, model: {tiny}}}, {{label: t5_large, model: {tiny}}}]",
        "online.sources=[{name: rouge}, {name: bertscore}, {name: loglik, label: t5_base, model: 'run:t5_base'},"
        " {name: loglik, label: t5_large, model: 'run:t5_large'}]",
        f"judge.params={{model: '{rm}', batch_size: 8}}", "online.iterations=1", "online.prompts_per_iteration=4",
        "online.max_new_tokens=8", "online.batch_size=4", "online.epochs=1", "online.warmup=0",
        "eval.max_new_tokens=8", "eval.seeds=[0]", "eval.n_prompts=4"])
    assert (recipe.online.k, recipe.online.n_pool, recipe.online.replace_num) == (8, 32, 4)
    run(recipe)
    out = tmp_path / "run"
    assert (out / "sources" / "t5_large" / "model" / "config.json").exists()
    assert (out / "online" / "iter_1" / "model" / "model.safetensors").exists()
    arms = (out / "arms.csv").read_text().splitlines()
    assert len(arms) == 2 and arms[1].split(",")[2] in ("self", "rouge", "bertscore", "t5_base", "t5_large")
    assert LabelStore(out / "labels.sqlite").spent()["1"] == 4 * 8  # every online response labelled once
    assert (out / "eval" / "winrates.csv").exists()
