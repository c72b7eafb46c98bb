"""`python -m bench --quick` (the smoke mode of `make bench`) writes complete, well-formed results.

Speed targets are never asserted here: timings belong to the bench run itself (they depend on the machine and
on whatever else shares its cores). What is checked: every section is present with positive finite numbers, the
two sides of each ratio did the same work, and the Markdown names every ratio and stage.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ("batched_judge[rm-64x1]", "reference_precompute", "bon_batched_sampling", "autocast_bf16_sft",
          "autocast_bf16_sampling", "trl_online_dpo[llama-tiny]")
STAGES = ("generate_s", "source_scoring_s", "judge_s", "reference_s", "update_s", "total_s")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "TRLHF_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), proc.stdout


def test_machine_info_and_progress_lines(quick):
    res, _, stdout = quick
    m = res["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] and m["trl"] and m["torch_threads"] == 1
    assert _positive(res["wall_s"]) and _positive(res["peak_rss_mb"])
    for section in ("judge", "reference", "bon", "amp", "demo", "trl", "paper"):  # one progress line per section
        assert f"[bench] {section}:" in stdout


def test_workloads_have_every_stage_and_throughput(quick):
    res, _, _ = quick
    assert set(res["workloads"]) == {"demo", "paper"}
    demo = res["workloads"]["demo"]
    assert demo["unused_sources"] == []  # prompts = (sources + 1) x block: UCB tries every source once
    for source in ("rouge", "bertscore", "smollm2", "t5_big"):
        assert _positive(demo["throughput"][f"scoring_{source}_sequences_per_s"])
    for name, w in res["workloads"].items():
        for key in ("generation_tokens_per_s", "judge_labels_per_s", "update_pairs_per_s", "reference_sequences_per_s"):
            assert _positive(w["throughput"][key]), (name, key)
        assert all(_positive(v) for v in w["throughput"].values()), name
        for key in STAGES:
            assert _positive(w["breakdown_s"][key]), (name, key)
        # the stages are a split of the iteration's wall time, not more
        parts = sum(v for k, v in w["breakdown_s"].items() if k != "total_s")
        assert parts == pytest.approx(w["breakdown_s"]["total_s"], rel=0.02)
        assert w["counts"]["generated_tokens"] > 0 and w["counts"]["pairs"] > 0
        assert _positive(w["peak_rss_mb"])


def test_ratios_have_both_absolute_numbers(quick):
    res, _, _ = quick
    assert set(res["ratios"]) == set(RATIOS)
    for key, r in res["ratios"].items():
        for side in ("ours", "baseline"):
            assert _positive(r[side]["value"]) and _positive(r[side]["seconds"]), (key, side)
        assert _positive(r["ratio"]) and _positive(r["peak_rss_mb"])
        assert r["ratio"] == pytest.approx(r["ours"]["value"] / r["baseline"]["value"], rel=1e-3)
        assert isinstance(r["met"], bool) and r["target"]  # reported, never asserted
        if not r["met"]:
            assert r["profile"]["ours"] and r["profile"]["baseline"]  # a missed target carries its profile


def test_ratio_sides_do_the_same_work(quick):
    res, _, _ = quick
    trl = res["ratios"]["trl_online_dpo[llama-tiny]"]
    assert trl["ours"]["updates"] == trl["baseline"]["updates"] > 0
    assert trl["ours"]["pairs"] == trl["baseline"]["pairs"]
    assert trl["ours"]["generated_tokens"] > 0 and trl["baseline"]["generated_tokens"] > 0
    ref = res["ratios"]["reference_precompute"]
    assert ref["ours"]["pair_updates"] == ref["baseline"]["pair_updates"]
    bon = res["ratios"]["bon_batched_sampling"]
    assert bon["ours"]["samples"] == bon["baseline"]["samples"]
    amp = res["ratios"]["autocast_bf16_sft"]
    assert amp["ours"]["rows"] == amp["baseline"]["rows"] > 0
    amp = res["ratios"]["autocast_bf16_sampling"]
    assert amp["ours"]["samples"] == amp["baseline"]["samples"] > 0


def test_markdown_names_every_ratio_and_stage(quick):
    res, md, _ = quick
    for key in RATIOS:
        assert key in md
    for stage in ("generate", "source_scoring", "judge", "reference", "update"):
        assert f"| {stage} |" in md
    assert "torch" in md and "load average" in md


def test_bad_arguments_fail_before_any_work():
    from bench.run import main

    with pytest.raises(SystemExit, match="unknown --sections"):
        main(["--sections", "demo,bogus"])
    with pytest.raises(SystemExit, match="unknown --trl-models"):
        main(["--trl-models", "gpt5", "--sections", "trl"])


def test_accelerate_example_configs_load():
    """recipes/accelerate/*.yaml: accelerate reads each, and each header states the exact launch command."""
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
    assert {f.stem for f in files} == {"ddp", "multinode", "deepspeed_zero2"}
    for f in files:
        cfg = load_config_from_file(str(f))
        assert cfg.num_processes > 1
        head = [line for line in f.read_text().splitlines() if line.startswith("#")]
        assert any(f"accelerate launch --config_file recipes/accelerate/{f.name}" in line for line in head), f.name
    acc = ROOT / "recipes" / "accelerate"
    assert load_config_from_file(str(acc / "deepspeed_zero2.yaml")).deepspeed_config["zero_stage"] == 2
    assert load_config_from_file(str(acc / "multinode.yaml")).num_machines == 2
