import csv
import json

import yaml

from eval.stage_report import main, report


def _write_run(root):
    methods = [{"label": "no_transfer", "selector": {"name": "none"}},
               {"label": "relevance", "selector": {"name": "relevance"}},
               {"label": "dual_active", "selector": {"name": "dual_active"}},
               {"label": "dual_active:cheapest",
                "selector": {"name": "dual_active", "params": {"strategy": "cheapest"}}},
               {"label": "dual_active:random",
                "selector": {"name": "dual_active", "params": {"strategy": "random"}}},
               {"label": "shared", "selector": {"name": "shared"}}]
    (root / "config.yaml").write_text(yaml.safe_dump({"name": "x", "table": {"methods": methods}}))
    (root / "world_report.json").write_text(json.dumps({"agreement": {"n_pairs": 9, "good": 0.8, "bad": 0.55}}))
    records = {
        "relevance": [{"nu": {"good": 0.3, "bad": 0.0}, "allocation": {"good": 0.9, "bad": 0.1}},
                      {"nu": {"good": 0.1, "bad": 0.02}, "allocation": {"good": 0.7, "bad": 0.3}}],
        "dual_active": [{"queries": {"expert": 2, "novice": 4}, "cost_per_teacher": {"expert": 4.0, "novice": 2.0},
                         "cost": 6.0, "budget": 6.0, "heldout_agreement": a, "heldout_pairs": n, "heldout_ties": 3}
                        for a, n in ((0.8, 40), (0.9, 44))],
        # real data: no exact utility to measure against
        "dual_active:random": [{"queries": {"expert": 1, "novice": 8}, "cost_per_teacher": {"expert": 2.0,
                                "novice": 4.0}, "cost": 6.0, "budget": 6.0, "heldout_agreement": None,
                                "heldout_pairs": None, "heldout_ties": None}] * 2,
        "dual_active:cheapest": [{"queries": {"expert": 0, "novice": 12}, "cost_per_teacher": {"expert": 0.0,
                                  "novice": 6.0}, "cost": 6.0, "budget": 6.0}] * 2,
        "shared": [{"judge_pairs": 40, "heldout_proxy_judge_agreement": 0.6},
                   {"judge_pairs": 40, "heldout_proxy_judge_agreement": 0.7}],
    }
    for label, recs in records.items():
        for seed, rec in enumerate(recs):
            d = root / "methods" / label / f"seed{seed}" / "online" / "iter_1"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"iteration": 1, "selector": rec}))
    (root / "table").mkdir()
    with open(root / "table" / "paired.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "baseline", "iteration", "seeds", "mean_diff", "ci_low", "ci_high", "expected_win_rate"])
        w.writerow(["tpo", "no_transfer", 1, 2, 0.1, -0.1, 0.3, 0.52])  # no stage in it: left out
        w.writerow(["dual_active", "dual_active:cheapest", 1, 2, 0.05, -0.02, 0.12, 0.51])


def test_stage_report_reads_what_the_selectors_recorded(tmp_path):
    _write_run(tmp_path)
    md = report(tmp_path)
    assert "| good | +0.200 [+0.100, +0.300] | 0.80 | 0.800 |" in md  # ν̂ mean [range] over the 2 seeds
    assert "ν̂ ranks good > bad; agreement ranks good > bad (the same order)." in md
    # the held-out agreement where recorded; "—" for a run from before it was measured (cheapest) or without facts
    assert "| dual_active | 1 | 2 | expert 2.0, novice 4.0 | expert 4.0, novice 2.0 | 6.0 / 6.0 | 42 | " \
           "+0.850 [+0.800, +0.900] |" in md
    assert "| dual_active:cheapest | 1 | 2 | expert 0.0, novice 12.0 | expert 0.0, novice 6.0 | 6.0 / 6.0 | — | — |" \
           in md
    assert "| dual_active:random | 1 | 2 | expert 1.0, novice 8.0 | expert 2.0, novice 4.0 | 6.0 / 6.0 | — | — |" in md
    assert "| shared | 1 | 2 | 40 | +0.650 [+0.600, +0.700] |" in md
    assert "| dual_active | dual_active:cheapest | 1 | 2 | +0.050 [-0.020, +0.120] |" in md and "| tpo |" not in md
    assert "lowrank" not in md  # no such method in the table
    assert (tmp_path / "table" / "stages.md").read_text() == md and (tmp_path / "table" / "stages.png").exists()


def test_stage_report_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} has no config.yaml: not a run directory"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"table": {"methods": [{"label": "a",
                                                                                  "selector": {"name": "ucb"}}]}}))
    assert main([str(tmp_path)]) == 2
    assert "the table has no selection-stage methods" in capsys.readouterr().err


def test_one_build_per_seed_ranks_each_seed_against_its_own_build(tmp_path):
    """table.vary_build: each seed's policy met its own build's sources, so ν̂ of seed s is ranked against
    builds/seed<s>/world_report.json, and the agreement column shows the builds' spread."""
    _write_run(tmp_path)
    (tmp_path / "world_report.json").unlink()
    for seed, (good, bad) in enumerate([(0.8, 0.55), (0.6, 0.7)]):  # in build 1 the 'bad' source agrees more
        (tmp_path / "builds" / f"seed{seed}").mkdir(parents=True)
        (tmp_path / "builds" / f"seed{seed}" / "world_report.json").write_text(
            json.dumps({"agreement": {"n_pairs": 9, "good": good, "bad": bad}}))
    md = report(tmp_path)
    assert "| good | +0.200 [+0.100, +0.300] | 0.80 | 0.700 [0.600, 0.800] over builds |" in md
    assert "| bad | +0.010 [+0.000, +0.020] | 0.20 | 0.625 [0.550, 0.700] over builds |" in md
    # both seeds' ν̂ put good first: right for build 0, wrong for build 1
    assert ("Seed by seed, ν̂ ranks the sources as that seed's agreement does in 1 of 2 "
            "(seed 0: good > bad; seed 1: good > bad).") in md


def test_a_table_folder_copied_aside_is_read_by_its_own_recipe(tmp_path, capsys):
    """Each table command rewrites RUN_DIR/config.yaml and RUN_DIR/table/; a copy made with its own config.yaml is
    reported by that recipe, and its stages.md is written beside it."""
    _write_run(tmp_path)
    (tmp_path / "table").rename(tmp_path / "table_stages")
    made_with = yaml.safe_load((tmp_path / "config.yaml").read_text())
    made_with["table"]["seeds"], made_with["online"] = [0, 1], {"iterations": 1}
    (tmp_path / "table_stages" / "config.yaml").write_text(yaml.safe_dump(made_with))
    for seed, t in ((0, 2), (5, 1)):  # the runs went on (iteration 2) and another seed ran after the copy
        d = tmp_path / "methods" / "relevance" / f"seed{seed}" / "online" / f"iter_{t}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"iteration": t, "selector": {"nu": {"good": 9.0, "bad": 9.0}}}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"table": {"methods": [{"label": "no_transfer",
                                                                                  "selector": {"name": "none"}}]}}))
    assert main([str(tmp_path)]) == 2 and "no selection-stage methods" in capsys.readouterr().err
    md = report(tmp_path, "table_stages")
    assert "**relevance, iteration 1** (2 seeds)" in md and "iteration 2" not in md and "+9.000" not in md
    assert "| dual_active | dual_active:cheapest | 1 | 2 | +0.050 [-0.020, +0.120] |" in md
    assert (tmp_path / "table_stages" / "stages.md").read_text() == md
    assert not (tmp_path / "table" / "stages.md").exists()
    assert main([str(tmp_path), "--table", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'nowhere'} does not exist: --table names a folder "
                                               "inside the run directory")
