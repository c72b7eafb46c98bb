import csv
import json
import math

import pytest
import torch
from conftest import TINY_OVERRIDES

from eval.world_report import fact_table
from pipeline.config import ConfigError, load_recipe
from pipeline.replay import BEHAVIOUR, fit, replay, slot_contexts
from pipeline.replay import main as replay_main
from pipeline.runner import load_split
from pipeline.table import build_recipe, make_table, run_dir

TINY = [*TINY_OVERRIDES, "online.sources=[{name: rouge}]", "online.n_pool=3", "online.replace_num=1",
        "online.max_new_tokens=6", "eval.max_new_tokens=6", "table.seeds=[0, 1]", "table.n_prompts=6",
        "table.utility_prompts=6", "table.utility_samples=2", "table.vary_build=true",
        "table.methods=[{label: no_transfer, selector: {name: none}}, {label: tpo, selector: {name: ucb, "
        "params: {block_size: 2}}}]"]


def test_replay_reproduces_a_run_on_its_own_build_and_crosses_builds(tmp_path, capsys, monkeypatch):
    recipe = load_recipe(None, [f"run_dir={tmp_path}", *TINY])
    make_table(recipe)
    weights = lambda d: (d / "model" / "model.safetensors").read_bytes()
    run = run_dir(recipe, "tpo", 0) / "online" / "iter_1"

    # the run's own pairs on its own build: the loop's update, so the run's checkpoint to the byte
    own = replay(recipe, "tpo", 0, 0)
    assert own["reproduces_run"] == "yes"
    assert weights(tmp_path / "replay" / "tpo_seed0_on_build0") == weights(run)
    # on the other build: the same pairs, another starting checkpoint
    crossed = replay(recipe, "tpo", 0, 1)
    assert crossed["pairs"] == own["pairs"] > 0 and crossed["reproduces_run"] == ""
    assert weights(tmp_path / "replay" / "tpo_seed0_on_build1") not in (weights(run), weights(build_recipe(
        recipe, 1).out / "sft"))
    assert crossed["gain"] == pytest.approx(crossed["utility"] - crossed["sft_utility"])
    # the gain is measured against the starting build's SFT on the table's draw: the table's own number
    with open(tmp_path / "table" / "vs_sft_per_seed.csv", newline="") as fh:
        sft_u = {r["seed"]: float(r["baseline_utility"]) for r in csv.DictReader(fh)}
    assert (own["sft_utility"], crossed["sft_utility"]) == (pytest.approx(sft_u["0"]), pytest.approx(sft_u["1"]))
    # what the gain is made of: the replay's samples against its SFT's on the same draw, the pairs' chosen against
    # their rejected responses; the same pairs teach the same on either build
    drawn = json.loads(next((tmp_path / "replay" / "tpo_seed0_on_build1").glob("test_samples_*.json")).read_text())
    sft = json.loads(next((tmp_path / "table" / "sft_samples").glob("seed1_*.json")).read_text())
    test = load_split(tmp_path / "data", "test")[:6]
    flat = lambda s: [y for ys in s["samples"][:6] for y in ys[:2]]
    now, then = (fact_table([r for r in test for _ in range(2)], flat(s)) for s in (drawn, sft))
    assert crossed["d_words"] == pytest.approx(now["words"] - then["words"])
    assert crossed["d_place"] == pytest.approx(now["place"] - then["place"])
    assert now["oracle_utility"] - then["oracle_utility"] == pytest.approx(crossed["gain"])
    assert all(crossed[f"taught_{c}"] == own[f"taught_{c}"] for c in BEHAVIOUR)
    assert own["taught_words"] != 0 or own["taught_invented_per_summary"] != 0
    # the update fits the pairs it trained on: the implicit reward ranks most of them right
    assert own["fit_margin"] > 0 and own["fit_accuracy"] > 0.5
    # where the place's probability moved: scored once into slot.json, probabilities and their changes
    assert (tmp_path / "replay" / "tpo_seed0_on_build1" / "slot.json").exists()
    assert all(math.isnan(crossed[c]) or -1 <= crossed[c] <= 1 for c in ("slot_place", "slot_taught"))
    assert math.isnan(crossed["slot_place_sft"]) or 0 <= crossed["slot_place_sft"] <= crossed["slot_doc_sft"] <= 1

    # the CLI: a replay done is read back, and replay.csv keeps one line per (run, build); the run folder addressed
    # by a relative path reuses the SFT draws cached under the absolute one
    cached = sorted((tmp_path / "table" / "sft_samples").iterdir())
    stamps = [p.stat().st_mtime_ns for p in cached]
    monkeypatch.chdir(tmp_path.parent)
    assert replay_main([str(tmp_path / "config.yaml"), "--pairs", "tpo:0", "--start", "1",
                        f"run_dir={tmp_path.name}"]) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps and len(cached) == 2
    assert "tpo seed 0's" in capsys.readouterr().out
    with open(tmp_path / "replay" / "replay.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["start_build"]) for r in rows] == [("tpo", "0"), ("tpo", "1")]
    # another update on the same pairs and policy: its own folder and row, never the replay above
    slow = replay(load_recipe(tmp_path / "config.yaml", ["online.lr=1e-6"]), "tpo", 0, 0)
    assert slow["update"] == "lr=1e-06" and slow["reproduces_run"] == "" and slow["pairs"] == own["pairs"]
    assert weights(tmp_path / "replay" / "tpo_seed0_on_build0_lr=1e-06") != weights(run)
    assert abs(slow["fit_margin"]) < own["fit_margin"] / 10

    # --all: every run on its own build under that update, summarised as the table summarises its runs
    assert replay_main([str(tmp_path / "config.yaml"), "--all", "online.lr=1e-6"]) == 0
    assert "lr=1e-06" in capsys.readouterr().out
    with open(tmp_path / "replay" / "replay.csv", newline="") as fh:
        gains = {(r["method"], r["pairs_seed"]): float(r["gain"]) for r in csv.DictReader(fh)
                 if r["update"] == "lr=1e-06" and r["pairs_seed"] == r["start_build"]}
    assert sorted(gains) == [(m, s) for m in ("aa:no_transfer", "no_transfer", "tpo") for s in ("0", "1")]
    with open(tmp_path / "replay" / "table_lr=1e-06" / "vs_sft_per_seed.csv", newline="") as fh:
        vs_sft = {(r["method"], r["seed"]): float(r["diff"]) for r in csv.DictReader(fh)}
    assert vs_sft == pytest.approx(gains)
    with open(tmp_path / "replay" / "table_lr=1e-06" / "paired_per_seed.csv", newline="") as fh:
        diff = {r["seed"]: float(r["diff"]) for r in csv.DictReader(fh) if r["method"] == "tpo"}
    assert diff == pytest.approx({s: gains[("tpo", s)] - gains[("no_transfer", s)] for s in ("0", "1")})
    capsys.readouterr()

    for argv, msg in ((["--pairs", "tpo", "--start", "1"], "--pairs must be METHOD:SEED"),
                      (["--pairs", "ucb:0", "--start", "1"], "no such run in the table"),
                      (["--pairs", "tpo:0", "--start", "7"], "--start 7 is not one of table.seeds"),
                      (["--pairs", "tpo:0", "--start", "1", "online.loss=xpo"], "cannot rerun XPO"),
                      (["--all"], "--all replays the table under another update"),
                      (["--all", "--pairs", "tpo:0", "online.lr=1e-6"], "give either --pairs"),
                      (["--pairs", "tpo:0"], "give either --pairs")):
        assert replay_main([str(tmp_path / "config.yaml"), *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_replay_refuses_an_unfinished_run_before_any_work(tmp_path):
    recipe = load_recipe(None, [f"run_dir={tmp_path}", *TINY])
    with pytest.raises(ConfigError, match="is not finished: run the table first"):
        replay(recipe, "tpo", 0, 1)


def test_fit_counts_the_pairs_the_implicit_reward_ranks_right():
    facts = dict(person="Ann Lee", role="mayor", place="Paris", number="12", event="flood")
    train = {"a": {"facts": facts}, "b": {"facts": facts}, "c": {"facts": facts}}
    found = [("a", "Ann Lee in Paris", "Ann Lee"), ("b", "Ann Lee spoke", "someone spoke"), ("c", "x", "y")]
    lp = {"start": {"w": [-5.0, -5.0, -5.0], "l": [-4.0, -4.0, -4.0]},
          "replay": {"w": [-4.0, -6.0, -3.0], "l": [-4.0, -4.0, -1.0]}}  # margins +1, -1, -1
    got = fit(lp, found, train)
    assert got["fit_accuracy"] == pytest.approx(1 / 3) and got["fit_margin"] == pytest.approx(-1 / 3)
    assert got["fit_place"] == 1.0 and got["fit_person"] == 0.0  # pair a alone teaches the place, b the person
    only_c = {k: {side: v[2:] for side, v in d.items()} for k, d in lp.items()}
    assert math.isnan(fit(only_c, found[2:], train)["fit_place"])  # no pair teaches the place: no share


def test_slot_contexts_cut_before_the_place():
    facts = dict(person="Ann Lee", role="mayor", place="Kalobury", number="12", event="jobs",
                 distractors={"place": ["Rosford"]})
    row = {"document": "doc", "facts": facts}
    samples = [["Mayor Ann Lee has cut 12 jobs in Rosford, near Kalobury.",  # first place-like word: Rosford
                "Mayor Ann Lee has cut 12 jobs.",  # no place: no slot
                "Kalobury mayor Ann Lee has cut jobs.",  # the place first: an empty prefix
                "not read: k = 3"]]
    pairs = [("a", "In kalobury, mayor Ann Lee cut jobs.", "Mayor Ann Lee cut jobs."),  # teaches, any case
             ("a", "Ann Lee cut jobs in Kalobury.", "Ann Lee cut jobs in Kalobury today."),  # both state it
             ("a", "Ann Lee cut jobs.", "Ann Lee cut jobs in Kalobury.")]  # the rejected one states it
    got = slot_contexts([row], samples, 3, pairs, {"a": row})
    assert got["own"] == [("doc", "Mayor Ann Lee has cut 12 jobs in", "Kalobury", ["Rosford"]),
                          ("doc", "", "Kalobury", ["Rosford"])]
    assert got["taught"] == [("doc", "In", "Kalobury", ["Rosford"])]


def test_slot_columns_by_hand(tmp_path, monkeypatch):
    """Planted probabilities per (checkpoint, prefix, place): the columns are the means of the planted place's
    probability and of the document's places summed per slot, read back from slot.json without scoring again."""
    import pipeline.replay as rp

    facts = dict(person="Ann Lee", role="mayor", place="Kalobury", number="12", event="jobs",
                 distractors={"place": ["Rosford", "Selwick"]})
    row = {"document": "doc", "facts": facts}
    samples = [["Ann Lee cut jobs in Rosford.", "Kalobury mayor Ann Lee cut jobs."]]
    pairs = [("a", "Ann Lee cut jobs in Kalobury.", "Ann Lee cut jobs.")]
    table = {"start": {("Ann Lee cut jobs in", "Kalobury"): 0.2, ("Ann Lee cut jobs in", "Rosford"): 0.5,
                       ("Ann Lee cut jobs in", "Selwick"): 0.1, ("", "Kalobury"): 0.4, ("", "Rosford"): 0.1,
                       ("", "Selwick"): 0.1},
             "replay": {("Ann Lee cut jobs in", "Kalobury"): 0.6, ("Ann Lee cut jobs in", "Rosford"): 0.2,
                        ("Ann Lee cut jobs in", "Selwick"): 0.1, ("", "Kalobury"): 0.5, ("", "Rosford"): 0.1,
                        ("", "Selwick"): 0.0}}
    scored = []

    class Scorer:  # stands in for a checkpoint: the probabilities above, nothing else
        def __init__(self, name):
            self.name = name

        def continuation_logprobs(self, docs, prefixes, continuations):
            scored.append((self.name, len(docs)))
            return torch.tensor([math.log(max(table[self.name][(p, c.strip())], 1e-300))
                                 for p, c in zip(prefixes, continuations)])

    monkeypatch.setattr(rp, "load_policy", lambda cfg: Scorer(cfg))
    got = rp.slots(tmp_path, "start", "replay", [row], samples, 2, pairs, {"a": row})
    assert got["slot_place_sft"] == pytest.approx((0.2 + 0.4) / 2)
    assert got["slot_place"] == pytest.approx(((0.6 - 0.2) + (0.5 - 0.4)) / 2)
    assert got["slot_taught"] == pytest.approx(0.6 - 0.2)  # the pair's chosen, cut before Kalobury
    assert got["slot_doc_sft"] == pytest.approx((0.8 + 0.6) / 2)
    assert got["slot_doc"] == pytest.approx(((0.9 - 0.8) + (0.6 - 0.6)) / 2)
    # read back without scoring
    scored.clear()
    assert rp.slots(tmp_path, "start", "replay", [row], samples, 2, pairs, {"a": row}) == got and not scored


def _append_many(path, worker):
    from pipeline.replay import _append

    for i in range(25):
        _append(path, {"method": f"m{worker}", "pairs_seed": i, "start_build": 0, "update": "", "gain": i})


def test_replays_finishing_side_by_side_keep_every_row(tmp_path):
    """replay.csv is rewritten whole by each replay; four processes appending at once lose none of the 100 rows."""
    import multiprocessing as mp

    path = tmp_path / "replay.csv"
    procs = [mp.get_context("fork").Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    with open(path, newline="") as fh:
        got = {(r["method"], r["pairs_seed"]) for r in csv.DictReader(fh)}
    assert got == {(f"m{w}", str(i)) for w in range(4) for i in range(25)}
