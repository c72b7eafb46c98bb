"""recipes/xsum_smollm2.yaml (`make xsum`): the real-data recipe's settings, and its whole code path through the table
driver on the real XSum sample with tiny models in place of SmolLM2 and the learned judge (seconds, not the 20+
minutes of the real run). Skipped when ../shared/data/xsum is absent, as the recipe is optional."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "xsum_smollm2.yaml"
XSUM = ROOT.parent / "shared" / "data" / "xsum" / "xsum_sample.jsonl"


def test_the_recipe_says_what_the_issue_asks():
    r = load_recipe(RECIPE)
    assert (r.data.source, r.data.path) == ("local", "../shared/data/xsum/xsum_sample.jsonl")
    assert r.policy.name == "gguf:smollm2" and r.policy.lora.enabled and not r.sft.enabled
    # the simulated human is the learned judge, and the prompts leave out the documents it was trained on
    assert r.judge.name == "reward_model" and r.judge.params["model"] == "runs/judge/xsumfaith_maynez2020/model"
    assert r.data.exclude_docs_of == r.judge.params["model"]
    assert [(s["name"], s.get("pmi", False)) for s in r.online.sources] == [
        ("rouge", False), ("bertscore", False), ("loglik", True)]
    assert [(m["label"], m["selector"]["name"]) for m in r.table.methods] == [("tpo", "ucb"), ("no_transfer", "none")]
    assert r.online.selector.params == r.table.methods[0]["selector"]["params"]
    assert "make xsum" in RECIPE.read_text().splitlines()[0]


def _tiny_learned_judge(tmp_path, seen_rows: list[dict]) -> Path:
    """A tiny random BERT reward model that reads the learned judge's input format and records `seen_rows`'
    documents as its training documents, as eval/learned_judge.py does."""
    from test_sources import _tiny_reward_model

    from pipeline.documents import TRAINING_RECORD, document_keys
    from reward_sources.judge_input import FORMAT

    model = Path(_tiny_reward_model(tmp_path, "bert", chat=False))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "judge_input": FORMAT}))
    (model / TRAINING_RECORD).write_text(json.dumps({"documents": sorted(document_keys(seen_rows))}))
    return model


@pytest.mark.skipif(not XSUM.exists(), reason="../shared/data/xsum is absent (real XSum data is optional)")
def test_the_recipe_runs_one_tiny_iteration_on_real_xsum(tmp_path, capsys):
    from pipeline.table import main as table_main

    rows = [json.loads(line) for line in XSUM.read_text(encoding="utf-8").splitlines() if line.strip()]
    seen = [r for r in rows if r["split"] == "train"][:3] + [r for r in rows if r["split"] == "eval"][:2]
    judge = _tiny_learned_judge(tmp_path, seen)
    run = tmp_path / "run"
    policy = run / "sft" / "model"  # sft is off: the policy as loaded, also the log-probability source's model
    assert table_main([str(RECIPE), f"run_dir={run}", f"data.path={XSUM}", f"data.exclude_docs_of={judge}",
                       f"judge.params.model={judge}", "policy.name=shape:llama-tiny", "policy.max_input_tokens=64",
                       "online.sources=[{name: rouge}, {name: bertscore}, {name: loglik, label: smollm2_pmi, "
                       f"model: '{policy}', reduce: mean, pmi: true}}]",
                       "online.prompts_per_iteration=8", "online.max_new_tokens=6", "online.batch_size=4",
                       "table.seeds=[0]", "table.n_prompts=4", "eval.max_new_tokens=6",
                       "tracking.report_to=[none]", "tracking.sample_prompts=0"]) == 0
    report = json.loads((run / "data" / "report.json").read_text())
    assert report["excluded_document"] == len(seen) == 5
    assert (report["n_train"], report["n_eval"] + report["n_test"]) == (713 - 3, 200 - 2)
    kept = [json.loads(line) for s in ("train", "eval", "test")
            for line in (run / "data" / f"{s}.jsonl").read_text().splitlines()]
    assert not {r["id"] for r in seen} & {r["id"] for r in kept}
    for method in ("tpo", "no_transfer"):
        m = json.loads((run / "methods" / method / "seed0" / "online" / "iter_1" / "metrics.json").read_text())
        assert m["labels_this_iteration"] == 8 * 2  # K = 2 labels per prompt, transferred responses included
    arms = (run / "methods" / "tpo" / "seed0" / "arms.csv").read_text().splitlines()[1:]
    assert len(arms) == 2  # 8 prompts in blocks of 4
    assert {a.split(",")[2] for a in arms} <= {"self", "rouge", "bertscore", "smollm2_pmi"}
    table = (run / "table" / "table.md").read_text()
    assert table.startswith(f"Judge: reward_model:{judge}; seeds [0]; 4 test prompts")
    assert "| tpo | no_transfer |" in table
