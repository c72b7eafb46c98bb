"""recipes/stages.yaml, the stages table: every method as the recipe writes it (selector and params untouched), on
a tiny version of its world (tiny policy, 3 SFT steps, no source model to train, one iteration of 12 prompts),
runs one iteration, and each stage spends exactly its baseline's budget in that run, read back from each run's
labels.sqlite: judge labels for relevance / shared / lowrank, label cost for dual_active's teachers."""
import re
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from pipeline.config import load_recipe, to_dict
from pipeline.labels import LabelStore
from pipeline.runner import build_judge, build_scorers, run
from pipeline.selection.dual_active_selector import DEFAULT_COSTS
from pipeline.table import methods, run_dir, train_one

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "stages.yaml"
PROMPTS = 12
# stage -> its natural baselines in the recipe (same budget); every row meets no_transfer's label count but the
# two stages that spend their own budget on pairwise queries
BASELINES = {"relevance": ["tpo", "exploit:t5_big"], "dual_active": ["dual_active:random", "dual_active:cheapest"],
             "lowrank": ["lowrank:pooled"], "shared": ["shared:single_task"]}


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    recipe = load_recipe(RECIPE, [
        *TINY_OVERRIDES, f"run_dir={out}", "sft.copy_steps=0", "source_models=[]",
        # t5_big's label on a second ROUGE scorer: the tiny world trains no source model, and the recipe's
        # exploit:t5_big row needs an arm of that name
        "online.sources=[{name: rouge}, {name: rouge, label: doc_overlap, against: document}, "
        "{name: rouge, label: t5_big}]",
        # K = 3 (3 candidate pairs a prompt), so identical tiny-policy samples never leave a baseline short of pairs
        "online.k=3", "online.n_pool=3", f"online.prompts_per_iteration={PROMPTS}", "table.seeds=[0]",
        "table.aa=false"])
    run(recipe, until="sft")
    judge, scorers = build_judge(recipe), build_scorers(recipe)
    done = {}
    for label, selector in methods(recipe):
        train_one(recipe, label, selector, 0, 0, judge, scorers)
        store = LabelStore(run_dir(recipe, label, 0) / "labels.sqlite")
        try:
            done[label] = [j for (j,) in store.db.execute("SELECT judge FROM labels WHERE iteration = '1'")]
        finally:
            store.close()
    return recipe, done


def cost(judges: list[str]) -> float:
    """Label cost of pairwise teacher queries: each teacher's cost (the oracle judge's name carries the teacher)."""
    return sum(DEFAULT_COSTS[re.match(r"oracle\[\w+,(\w+),", j).group(1)] for j in judges)


def test_the_recipe_names_each_stage_with_its_baselines_and_the_published_ones(stage_runs):
    _, done = stage_runs
    assert list(done) == ["no_transfer", "tpo", "exploit:t5_big", "ensemble", "linucb", "relevance", "dual_active",
                          "dual_active:random", "dual_active:cheapest", "lowrank", "lowrank:pooled", "shared",
                          "shared:single_task"]
    full = load_recipe(RECIPE)
    assert full.table.baseline == "no_transfer" and full.online.iterations == 2 and full.table.seeds == [0, 1, 2]
    assert full.online.lr == 1.0e-3 and full.online.nll_alpha == 1.0 and full.online.k == 2  # the testbed's update
    assert [m for m, _ in methods(full)] == list(done)


@pytest.mark.parametrize("stage", list(BASELINES))
def test_each_stage_spends_its_baselines_budget(stage_runs, stage):
    _, done = stage_runs
    assert done[stage], f"{stage} asked no labels"
    if stage == "dual_active":  # label cost, in the teachers' units: 0.45 per prompt, spent in steps of 0.5
        assert cost(done[stage]) == 0.5 * int(0.45 * PROMPTS / 0.5)
        for base in BASELINES[stage]:
            assert cost(done[base]) == cost(done[stage])
        assert {j.split(",")[1] for j in done["dual_active:cheapest"]} == {"novice"}
        assert {j.split(",")[0] for j in done[stage]} == {"oracle[coverage"}  # teachers of the judge's persona
    else:
        for base in BASELINES[stage]:
            assert len(done[base]) == len(done[stage])
    if stage in ("relevance", "shared"):  # the judge labels the K online responses, what no transfer pays
        assert len(done[stage]) == len(done["no_transfer"]) == 3 * PROMPTS


def test_the_published_baselines_spend_no_transfers_labels(stage_runs):
    _, done = stage_runs
    for label in ("tpo", "ensemble", "linucb"):
        assert len(done[label]) == len(done["no_transfer"])


def test_the_6144_stages_recipe_is_the_current_testbed_with_the_same_rows():
    """recipes/stages_6144.yaml: table_6144_e6's world, sources, judge and update (its seeds, rows and iteration
    count apart), and stages.yaml's rows and pairs, relevance's pilot apart (24 blocks of 16 prompts, not 2)."""
    big, testbed, small = (to_dict(load_recipe(RECIPE.parent / name))
                           for name in ("stages_6144.yaml", "table_6144_e6.yaml", "stages.yaml"))
    assert {k: v for k, v in big.items() if k not in ("name", "table", "online")} == \
        {k: v for k, v in testbed.items() if k not in ("name", "table", "online")}
    assert {**big["online"], "iterations": 3} == testbed["online"] and big["online"]["iterations"] == 2
    assert big["table"]["vary_build"] and big["table"]["seeds"] == [0, 1, 2]
    for key in ("vary_build", "aa", "utility_prompts", "utility_samples", "n_prompts", "baseline"):
        assert big["table"][key] == testbed["table"][key], key
    assert big["table"]["pairs"] == small["table"]["pairs"]
    pilot = {m["label"]: m["selector"].get("params", {}).get("pilot_blocks") for m in big["table"]["methods"]}
    assert pilot["relevance"] == 24
    relabel = [{**m, "selector": {**m["selector"], "params": {**m["selector"]["params"], "pilot_blocks": 2}}}
               if m["label"] == "relevance" else m for m in big["table"]["methods"]]
    assert relabel == small["table"]["methods"]
