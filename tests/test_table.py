import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import TINY_OVERRIDES

from eval import stage_report
from eval.paired import paired_interval
from eval.winrate import sample_test
from pipeline.cli import RunFailed
from pipeline.config import ConfigError, load_recipe
from pipeline.data import load_split
from pipeline.models import load_policy
from pipeline.runner import policy_config
from pipeline.table import make_table, methods, pairings, run_dir, runs, sample_all, train_all


def test_win_rate_interval_over_seeds():
    m, lo, hi = paired_interval([0.4, 0.5, 0.6])
    assert m == 0.5 and abs((hi - m) - 4.302653 * 0.1 / 3 ** 0.5) < 1e-6 and abs((m - lo) - (hi - m)) < 1e-12


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _metrics(recipe, method, seed, t):
    m = json.loads((run_dir(recipe, method, seed) / "online" / f"iter_{t}" / "metrics.json").read_text())
    return {k: v for k, v in m.items() if not k.endswith("_s")}  # wall-clock timings differ run to run


def test_tiny_table_end_to_end(tmp_path):
    recipe = load_recipe(None, [
        f"run_dir={tmp_path}", "data.n_examples=80", "data.eval_size=8", "data.test_size=8",
        "policy.name=shape:t5-tiny", "sft.steps=3", "sft.batch_size=8", "sft.eval_examples=0",
        "online.sources=[{name: rouge}]", "online.n_pool=3", "online.k=3", "online.replace_num=1",
        "online.selector.name=ucb", "online.selector.params={block_size: 2}",
        "online.iterations=2", "online.prompts_per_iteration=6", "online.max_new_tokens=6",
        "online.epochs=1", "online.batch_size=4", "eval.max_new_tokens=6", "table.seeds=[0, 1]", "table.n_prompts=6",
        "table.utility_prompts=7", "table.utility_samples=2"])
    assert [m for m, _ in methods(recipe)] == ["tpo", "no_transfer", "exploit:rouge"]
    assert [(m, s, ts) for m, _, s, ts in runs(recipe)][-2:] == [("aa:no_transfer", 0, 1000),
                                                                 ("aa:no_transfer", 1, 1001)]
    table = make_table(recipe)
    out = tmp_path / "table"
    with open(out / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method_a", "method_b", "iteration", "mean_win_rate", "ci_low", "ci_high", "seeds",
                             "ci_over", "labels_a", "labels_b", "label_cost_a", "label_cost_b"]
    assert {r["ci_over"] for r in rows} == {"seeds"} and {r["labels_a"] for r in rows} == {"18.0"}
    assert [(r["method_a"], r["method_b"], r["iteration"]) for r in rows] == [
        ("tpo", "no_transfer", "1"), ("tpo", "no_transfer", "2"), ("tpo", "exploit:rouge", "1"),
        ("tpo", "exploit:rouge", "2"), ("aa:no_transfer", "no_transfer", "1"), ("aa:no_transfer", "no_transfer", "2")]
    assert all(0 <= t["mean_win_rate"] <= 1 and t["seeds"] == 2 for t in table)

    # the headline: exact utilities paired per training seed, the A/A row last
    with open(out / "paired.csv", newline="") as fh:
        paired = list(csv.DictReader(fh))
    assert [(r["method"], r["baseline"], r["iteration"], r["seeds"]) for r in paired] == [
        (m, "no_transfer", str(t), "2") for m in ("tpo", "exploit:rouge", "aa:no_transfer") for t in (1, 2)]
    for r in paired:
        assert float(r["ci_low"]) <= float(r["mean_diff"]) <= float(r["ci_high"])
        assert 0 <= float(r["expected_win_rate"]) <= 1
    md = (out / "paired.md").read_text()
    assert "7 test prompts × 2 samples" in md and "| aa:no_transfer | no_transfer | Δu " in md
    assert (out / "paired.png").exists()
    with open(out / "paired_per_seed.csv", newline="") as fh:  # the per-seed differences behind each interval
        assert len(list(csv.DictReader(fh))) == len(paired) * 2
    # what the samples state: one row per (method, iteration)
    behaviour = (out / "behaviour.md").read_text().splitlines()
    assert sum(line.startswith("| tpo | ") for line in behaviour) == 2 and len(behaviour) == 4 + 1 + 4 * 2
    assert behaviour[4].startswith("| sft | 0 | ")
    # how far each checkpoint moved from the SFT checkpoint its seed started from, on the same draw: the
    # headline's per-seed difference is exactly the difference of the two gains
    gain = _csv(out / "vs_sft.csv")
    assert [(r["method"], r["baseline"], r["iteration"]) for r in gain] == [
        (m, "sft", str(t)) for m in ("tpo", "no_transfer", "exploit:rouge", "aa:no_transfer") for t in (1, 2)]
    per = {(r["method"], r["seed"], r["iteration"]): float(r["diff"]) for r in _csv(out / "vs_sft_per_seed.csv")}
    for r in _csv(out / "paired_per_seed.csv"):
        assert float(r["diff"]) == pytest.approx(per[(r["method"], r["seed"], r["iteration"])]
                                                 - per[("no_transfer", r["seed"], r["iteration"])])
    # the SFT draw is the SFT checkpoint sampled with the seed's own sampling seed: common random numbers
    sft = load_policy(policy_config(recipe, tmp_path / "sft" / "model"))
    cached = json.loads((out / "sft_samples" / "seed1_p7_x2.json").read_text())["samples"]
    ev = dataclasses.replace(recipe.eval, samples_per_prompt=2)
    assert cached == sample_test(sft, load_split(tmp_path / "data", "test")[:7], ev, recipe.online.gen_batch_size, 1)
    # what each run trained on, read back from its label store: as many pairs as the run formed
    pairs = _csv(out / "training_pairs.csv")
    assert len(pairs) == 4 * 2 * 2 and "| tpo | 0 | 1 |" in (out / "training_pairs.md").read_text()
    for r in pairs:
        if r["iteration"] == "1":  # later iterations may meet a response labelled before (stored once)
            assert int(r["pairs"]) == _metrics(recipe, r["method"], int(r["seed"]), 1)["pairs"] > 0
    # the A/A run is the baseline's selector with other training seeds: another run, not a copy
    assert _metrics(recipe, "aa:no_transfer", 0, 1)["arms"] == _metrics(recipe, "no_transfer", 0, 1)["arms"]
    assert _metrics(recipe, "aa:no_transfer", 0, 1) != _metrics(recipe, "no_transfer", 0, 1)
    # one draw per checkpoint (7 prompts x 2 samples) serves both tables
    it1 = run_dir(recipe, "tpo", 0) / "online" / "iter_1"
    assert sorted(p.name for p in it1.glob("test_samples*")) == ["test_samples_p7_x2.json"]

    with open(tmp_path / "methods" / "exploit:rouge" / "seed0" / "arms.csv", newline="") as fh:
        arms = list(csv.DictReader(fh))
    assert {a["arm"] for a in arms} == {"rouge"} and sum(int(a["prompts"]) for a in arms) == 12
    with open(tmp_path / "methods" / "tpo" / "seed0" / "arms.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 3  # 6 prompts in blocks of 2, per iteration
    assert (out / "arms_iter1.png").exists() and (tmp_path / "world_report.md").exists()

    # a rerun finds every run and sample cached, and gives the same headline
    make_table(recipe)
    assert (out / "paired.md").read_text() == md


TINY = [*TINY_OVERRIDES, "online.sources=[{name: rouge}]", "online.n_pool=3", "online.replace_num=1",
        "online.max_new_tokens=6", "eval.max_new_tokens=6", "table.seeds=[0]", "table.n_prompts=6",
        "table.utility_prompts=6", "table.utility_samples=2"]
STAGES = ("table.methods=[{label: no_transfer, selector: {name: none}}, "
          "{label: dual, selector: {name: dual_active, params: {dim: 4, batch: 4}}}, "
          "{label: proxy, selector: {name: shared, params: {dim: 4, steps: 30}}}]")


def test_selection_stages_as_table_rows_versus_no_transfer(tmp_path):
    recipe = load_recipe(None, [f"run_dir={tmp_path}", *TINY, STAGES, "table.versus=no_transfer", "table.aa=false"])
    assert pairings(recipe) == [("dual", "no_transfer"), ("proxy", "no_transfer")]
    table = make_table(recipe)
    assert [(r["method_a"], r["method_b"], r["iteration"]) for r in table] == [
        ("dual", "no_transfer", 1), ("proxy", "no_transfer", 1)]
    for r in table:  # one seed: the interval is over test prompts; labels spent are stated per method
        assert r["ci_over"] == "prompts" and r["ci_low"] <= r["mean_win_rate"] <= r["ci_high"]
        assert r["labels_b"] == 6 * 3 and r["label_cost_a"] <= 6 * 3
    assert table[1]["labels_a"] == 6 * 3  # the proxy's judge labels: the K online responses, as no transfer
    md = (tmp_path / "table" / "table.md").read_text()
    assert "| dual | no_transfer |" in md and "generation s per 10k responses" in md and "over test prompts" in md
    assert (tmp_path / "table" / "arms_dual_iter1.png").exists()
    with open(tmp_path / "table" / "paired.csv", newline="") as fh:  # no A/A row; one seed: no interval
        paired = list(csv.DictReader(fh))
    assert [(r["method"], r["seeds"], r["ci_low"]) for r in paired] == [("dual", "1", "nan"), ("proxy", "1", "nan")]

    # the table folder keeps the recipe it was made with: copied aside, it is still reported after a later command
    # on the same run directory (here: another methods list) rewrote the run directory's config.yaml
    saved = yaml.safe_load((tmp_path / "table" / "config.yaml").read_text())
    assert [m["label"] for m in saved["table"]["methods"]] == ["no_transfer", "dual", "proxy"]
    shutil.copytree(tmp_path / "table", tmp_path / "table_stages")
    later = dict(saved, table=dict(saved["table"], methods=[{"label": "no_transfer", "selector": {"name": "none"}}]))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(later))
    md = stage_report.report(tmp_path, "table_stages")
    assert "## dual_active:" in md and "| dual | no_transfer | 1 | 1 |" in md
    assert (tmp_path / "table_stages" / "stages.md").read_text() == md


def test_jobs_give_the_same_runs_and_a_failure_is_one_line(tmp_path):
    from pipeline.runner import build_judge, build_scorers, run

    two = ("table.methods=[{label: no_transfer, selector: {name: none}}, "
           "{label: rouge, selector: {name: fixed, params: {arm: rouge}}}]")
    recipe = load_recipe(None, [f"run_dir={tmp_path}", *TINY, two, "table.aa=false"])
    run(recipe, until="sources")
    judge, scorers = build_judge(recipe), build_scorers(recipe)
    train_all(recipe, judge, scorers, jobs=1)
    serial = {m: _metrics(recipe, m, 0, 1) for m in ("no_transfer", "rouge")}
    shutil.move(tmp_path / "methods", tmp_path / "methods_serial")
    train_all(recipe, judge, scorers, jobs=2)
    for m in ("no_transfer", "rouge"):
        assert _metrics(recipe, m, 0, 1) == serial[m]
        got = (run_dir(recipe, m, 0) / "online" / "iter_1" / "model" / "model.safetensors").read_bytes()
        assert got == (tmp_path / "methods_serial" / m / "seed0" / "online" / "iter_1" / "model" /
                       "model.safetensors").read_bytes()
    rows = load_split(tmp_path / "data", "test")[:4]  # sampling the checkpoints in workers draws the same samples
    drawn = sample_all(recipe, rows, 2, jobs=2)
    for cache in (tmp_path / "methods").rglob("test_samples_p4_x2.json"):
        cache.unlink()
    assert sample_all(recipe, rows, 2, jobs=1) == drawn and len(drawn) == 2 and None not in drawn.values()

    shutil.rmtree(tmp_path / "methods")
    shutil.move(tmp_path / "sft" / "model", tmp_path / "sft" / "gone")  # every worker fails to load its start
    with pytest.raises(RunFailed, match=r"^online run (no_transfer|rouge) seed 0 failed: \w+") as e:
        train_all(recipe, judge, scorers, jobs=2)
    assert "\n" not in str(e.value)


def test_a_table_row_is_resumed_sealed_and_guarded_like_any_run(tmp_path):
    """A (method, seed) row goes through the runner's online stage: its finished iterations are sealed with a
    checksum manifest, a tampered checkpoint is refused on resume, and a label store that lost labels is refused."""
    from pipeline.durable import MANIFEST, StateError
    from pipeline.runner import run
    from pipeline.table import train_one

    one = "table.methods=[{label: no_transfer, selector: {name: none}}]"
    recipe = load_recipe(None, [f"run_dir={tmp_path}", *TINY, one, "table.aa=false"])
    run(recipe, until="sources")
    selector = methods(recipe)[0][1]
    train_one(recipe, "no_transfer", selector, 0, 0)
    row = run_dir(recipe, "no_transfer", 0)
    assert (row / "online" / "iter_1" / MANIFEST).exists()
    (row / "online" / "DONE").unlink()  # the row is resumed, not skipped
    weights = row / "online" / "iter_1" / "model" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + bytes(8))
    with pytest.raises(StateError, match="changed since"):
        train_one(recipe, "no_transfer", selector, 0, 0)
    weights.write_bytes(good)
    (row / "labels.sqlite").unlink()
    with pytest.raises(StateError, match="holds 0 labels"):
        train_one(recipe, "no_transfer", selector, 0, 0)


def test_table_method_errors_fail_before_any_stage(tmp_path):
    bad_name = STAGES.replace("name: shared", "name: sharde")
    with pytest.raises(ConfigError,
                       match=r"table.methods\[2\] \(proxy\): unknown selector 'sharde'.*Did you mean 'shared'"):
        methods(load_recipe(None, [f"run_dir={tmp_path}", *TINY, bad_name]))
    with pytest.raises(ConfigError, match="unknown option.*'steps'"):
        methods(load_recipe(None, [f"run_dir={tmp_path}", *TINY, STAGES.replace("steps: 30", "stepz: 30")]))
    with pytest.raises(ConfigError, match="table.versus 'baseline' is not a method"):
        make_table(load_recipe(None, [f"run_dir={tmp_path}", *TINY, STAGES, "table.versus=baseline"]))
    with pytest.raises(ConfigError, match="table.baseline 'tpo' is not a method.*A/A"):
        make_table(load_recipe(None, [f"run_dir={tmp_path}", *TINY, STAGES, "table.baseline=tpo"]))
    with pytest.raises(ConfigError, match="reuse training seed"):
        methods(load_recipe(None, [f"run_dir={tmp_path}", *TINY, "table.seeds=[0, 1]", "table.aa_seed_offset=1"]))
    with pytest.raises(ConfigError, match=r"table.vary_build offsets sft.seed by up to 2, past 4294967295"):
        make_table(load_recipe(None, [f"run_dir={tmp_path}", *TINY, "table.seeds=[0, 2]", "table.vary_build=true",
                                      "sft.seed=4294967294"]))
    with pytest.raises(ConfigError, match="or be 'sft' \\(the starting checkpoint's row\\)"):
        methods(load_recipe(None, [f"run_dir={tmp_path}", *TINY, STAGES.replace("label: dual", "label: sft")]))
    assert not (tmp_path / "data").exists()


class _LengthJudge:
    """Scalar judge: longer is better; a response containing 'fail' gets no answer (a judge failure)."""
    kind, name = "scalar", "length"

    def score(self, rows, responses, seed=0):
        return [None if "fail" in y else float(len(y)) for y in responses]


def test_outcomes_average_paired_samples_per_prompt(tmp_path):
    from eval.winrate import outcomes
    from pipeline.labels import LabelStore

    store = LabelStore(tmp_path / "labels.sqlite")
    rows = [{"id": "p0", "document": "d0"}, {"id": "p1", "document": "d1"}, {"id": "p2", "document": "d2"}]
    a = [["long one", "x"], ["ab", "ab"], ["fail", "fail"]]
    b = [["short", "short"], ["ab", "abc"], ["y", "z"]]
    # p0: sample 1 wins, sample 2 loses -> 0.5; p1: tie (0.5) and loss (0) -> 0.25; p2: every pair failed -> None
    assert outcomes(store, _LengthJudge(), rows, a, b, seed=0) == [0.5, 0.25, None]
    # one sample per prompt is the former behaviour: outcome = that pair's result
    assert outcomes(store, _LengthJudge(), rows, [x[:1] for x in a], [y[:1] for y in b], seed=0) == [1.0, 0.5, None]
    store.close()



def test_sample_test_draws_paired_samples(make_policy):
    from eval.winrate import sample_test
    from pipeline.config import EvalConfig

    policy = make_policy("t5-tiny")
    rows = [{"id": f"p{i}", "document": d} for i, d in enumerate(["The council met.", "A bridge opened.", "Rain."])]
    ev = EvalConfig(samples_per_prompt=3, max_new_tokens=6)
    got = sample_test(policy, rows, ev, batch_size=8, seed=2)
    assert [len(s) for s in got] == [3, 3, 3] and len({y for s in got for y in s}) > 3
    assert sample_test(policy, rows, ev, batch_size=8, seed=2) == got  # same eval seed: same samples for a policy
    one = sample_test(policy, rows, EvalConfig(samples_per_prompt=1, max_new_tokens=6), batch_size=8, seed=2)
    assert [len(s) for s in one] == [1, 1, 1]
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 1"):
        sample_test(policy, rows, EvalConfig(samples_per_prompt=0), batch_size=8, seed=2)


def test_utility_compare_on_planted_utilities():
    from eval.utility import compare, markdown

    base = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    rows = compare({"base": base, "same": base.copy(), "better": base + 1.0, "mixed": base + [[1.0, -1.0]]}, 0.5)
    assert rows[0] == {"checkpoint": "base", "mean_utility": pytest.approx(0.5), "ci_half": pytest.approx(
        1.96 * np.std([0.5, 0.5, 0.5], ddof=1) / np.sqrt(3))}
    same, better, mixed = rows[1:]
    assert (same["utility_diff"], same["noise_free_win"], same["bt_expected_win"]) == (0.0, 50.0, 50.0)
    assert better["noise_free_win"] == 100.0
    assert better["bt_expected_win"] == pytest.approx(100 / (1 + np.exp(-2.0)))  # sigma(1 / 0.5)
    assert mixed["utility_diff"] == 0.0 and mixed["noise_free_win"] == 50.0
    assert "| better | +1.500 ± 0.000 | base | +1.000 | 100.0 | 88.1 |" in markdown(rows, 0.5)


def test_utility_of_a_policy_is_the_oracle_on_its_samples(make_policy):
    from eval.utility import draw, utilities
    from pipeline import world
    from pipeline.config import WorldConfig
    from reward_sources.oracle import PERSONAS, utility

    rows = world.generate(4, WorldConfig(), seed=3)
    policy = make_policy("t5-tiny")
    drawn = draw(policy, rows, 3, max_new_tokens=8, seed=5)
    assert drawn == policy.sample([r["document"] for r in rows], 3, max_new_tokens=8, batch_size=64, seed=5)
    u = utilities(rows, drawn, PERSONAS["default"])
    assert u.shape == (4, 3)
    assert u.tolist() == [[utility(r, y, PERSONAS["default"]) for y in ys] for r, ys in zip(rows, drawn)]


def test_behaviour_counts_facts_invented_names_and_words():
    from eval.utility import behaviour
    from pipeline import world
    from pipeline.config import WorldConfig

    row = world.generate(1, WorldConfig(), seed=3)[0]
    f = row["facts"]
    exact = f"{f['person']} has {f['number']} {f['event']}"  # person, number, event stated; nothing invented
    b = behaviour([row], [[exact, "Zzqx Qqzz said 123456"]])
    assert (b["person"], b["number"], b["event"], b["place"]) == (0.5, 0.5, 0.5, 0.0)
    assert b["invented_per_summary"] == 1.0  # one invented name (Zzqx Qqzz) and 123456 in the second summary
    assert b["words_per_summary"] == (len(world.words(exact)) + 4) / 2


def test_utility_cli_errors(tmp_path, capsys):
    from eval.utility import main

    assert main([str(tmp_path), "a=" + str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main([str(tmp_path), "a=missing/path"]) == 2
    assert "not LABEL=existing-path: a=missing/path" in capsys.readouterr().err


class _PlantedUtility:
    """An exact-utility judge: a response's utility is its number."""
    name, temperature = "planted", 0.5

    def utility(self, rows, responses):
        return [float(y) for y in responses]


def test_table_pairs_add_paired_rows_of_a_method_against_its_own_baseline(tmp_path):
    from pipeline.table import utility_headline

    recipe = load_recipe(None, [f"run_dir={tmp_path}", "table.methods=[{label: none, selector: {name: none}}, "
                                "{label: a, selector: {name: none}}, {label: b, selector: {name: none}}]",
                                "table.baseline=none", "table.aa=false", "table.seeds=[0, 1, 2]",
                                "table.pairs=[[a, b]]", "table.utility_prompts=2", "table.utility_samples=1"])
    level = {"none": 0.0, "a": 1.0, "b": 0.25}
    samples = {(m, s, 1): [[str(level[m] + 0.1 * s)], [str(level[m] - 0.1 * s)]] for m in level for s in (0, 1, 2)}
    samples[("a", 2, 1)] = [["1.5"], ["1.5"]]  # a's gain over b differs between seeds: a real interval
    utility_headline(recipe, _PlantedUtility(), [{"id": "p0"}, {"id": "p1"}], samples, tmp_path)
    with open(tmp_path / "paired.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["baseline"]) for r in rows] == [("a", "none"), ("b", "none"), ("a", "b")]
    diffs = [0.75, 0.75, 1.5 - 0.25]  # per seed: mean utility of a minus b's
    m, lo, hi = paired_interval(diffs)
    assert float(rows[2]["mean_diff"]) == pytest.approx(m) and float(rows[2]["ci_low"]) == pytest.approx(lo)
    assert rows[2]["seeds"] == "3" and "| a | b | Δu +0.92" in (tmp_path / "paired.md").read_text()
    for bad in ("[[a, a]]", "[[a, c]]", "[[a]]"):
        with pytest.raises(ConfigError, match=r"table.pairs entry .* must be \[method, baseline\]"):
            methods(load_recipe(None, [f"run_dir={tmp_path}", "table.methods=[{label: none, selector: {name: none}}, "
                                       "{label: a, selector: {name: none}}]", f"table.pairs={bad}"]))


def test_vary_build_gives_each_training_seed_its_own_build(tmp_path):
    """With table.vary_build the rows of seed 1 (the A/A run included) start from an SFT checkpoint and source
    model trained with seeds offset by 1, in builds/seed1; seed 0's build is the recipe's own. A row's outputs
    equal those of the same run started by hand from that build, and differ from the run from the seed-0 build."""
    from pipeline.runner import run
    from pipeline.table import build_recipe, builds, train_one

    big = ["source_models=[{label: big, model: {name: 'shape:t5-tiny'}, sft: {steps: 2, batch_size: 8, "
           "eval_examples: 0}}]", "online.sources=[{name: loglik, label: big, model: 'run:big', reduce: sum}]"]
    rows = ("table.methods=[{label: no_transfer, selector: {name: none}}, "
            "{label: exploit_big, selector: {name: fixed, params: {arm: big}}}]")
    common = [*TINY, *big, rows, "table.seeds=[0, 1]"]
    recipe = load_recipe(None, [f"run_dir={tmp_path / 'varied'}", *common, "table.vary_build=true"])
    assert build_recipe(recipe, 0) is recipe
    b1 = build_recipe(recipe, 1)
    assert b1.out == tmp_path / "varied" / "builds" / "seed1"
    assert [b.out for b in builds(recipe)] == [recipe.out, b1.out]
    assert (b1.policy.init_seed, b1.sft.seed, b1.data) == (recipe.policy.init_seed + 1, recipe.sft.seed + 1,
                                                           recipe.data)
    assert (b1.source_models[0].model.init_seed, b1.source_models[0].sft.seed) == (1, 1)
    assert not b1.table.vary_build and build_recipe(b1, 1) is b1
    make_table(recipe, jobs=2)
    assert load_split(b1.out / "data", "test") == load_split(recipe.out / "data", "test")  # the same world
    weights = lambda d: (d / "model" / "model.safetensors").read_bytes()
    assert weights(b1.out / "sft") != weights(recipe.out / "sft")
    assert weights(b1.out / "sources" / "big") != weights(recipe.out / "sources" / "big")
    assert (b1.out / "world_report.md").exists() and (recipe.out / "world_report.md").exists()

    # the same rows trained by hand from the recipe's own build (no vary_build): seed 0 equal, seed 1 not
    fixed = load_recipe(None, [f"run_dir={tmp_path / 'fixed'}", *common])
    run(fixed, until="sources")
    it1 = lambda r, m, s: run_dir(r, m, s) / "online" / "iter_1"
    for label, sel in methods(fixed):
        for seed in (0, 1):
            train_one(fixed, label, sel, seed, seed)
            assert (weights(it1(fixed, label, seed)) == weights(it1(recipe, label, seed))) == (seed == 0), (label, seed)
    # the A/A run of seed 1 (training seed 1001) starts from build 1 as well
    train_one(build_recipe(recipe, 1), "aa_by_hand", methods(recipe)[0][1], 1, 1001)
    by_hand = run_dir(build_recipe(recipe, 1), "aa_by_hand", 1) / "online" / "iter_1"
    assert weights(by_hand) == weights(it1(recipe, "aa:no_transfer", 1))
