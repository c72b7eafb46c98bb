"""Agreement harness: metrics on judgments whose agreement is known by construction (through the CLI function),
pairwise-judge bookkeeping, input errors, and our ROUGE against the XSum-faithfulness paper's own numbers."""
from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from eval.agreement import main
from eval.agreement_metrics import agreement, borda
from eval.agreement_report import CSV_COLUMNS
from eval.judgments import load_judgments

JUDGMENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "judgments" / "xsumfaith_maynez2020.jsonl"
SYSTEMS = ["sysA", "sysB", "sysC", "sysD"]


def _score_in_text(summary: str) -> float:
    return float(summary.rsplit("score=", 1)[1])


@pytest.fixture
def scorer_module(monkeypatch):
    """User scorers importable by name: one that reads the human score hidden in the summary, its negation,
    and a constant (every pair a tie)."""
    mod = types.ModuleType("agreement_scorers")
    mod.echo = lambda docs, summaries, refs: [_score_in_text(s) for s in summaries]
    mod.negated = lambda docs, summaries, refs: [-_score_in_text(s) for s in summaries]
    mod.constant = lambda docs, summaries, refs: [1.0] * len(summaries)
    mod.broken = lambda docs, summaries, refs: [1.0]
    monkeypatch.setitem(sys.modules, "agreement_scorers", mod)
    return mod


def write_judgments(path: Path, n_docs: int = 12, seed: int = 0) -> dict:
    """n_docs documents x 4 systems, human scores distinct within a document except one planted tie, plus two
    rows with a null document. Returns what the harness should count."""
    rng = np.random.default_rng(seed)
    rows, n_pairs = [], 0
    for d in range(n_docs):
        scores = rng.permutation(4) / 4 + d / 1000  # distinct within the document
        if d == 0:
            scores[1] = scores[0]  # a human tie: that pair is not counted
        for system, h in zip(SYSTEMS, scores):
            # system quality is built in: sysD gets +0.3 on average, so system-level correlation is defined
            h = float(h) + 0.1 * SYSTEMS.index(system)
            rows.append({"id": f"doc{d}", "document": f"document {d}", "reference": f"reference {d}",
                         "system": system, "summary": f"summary of {d} score={h:.6f}", "human_score": h,
                         "extra_field": [1, 2]})
        human = [r["human_score"] for r in rows[-4:]]
        n_pairs += sum(human[i] != human[j] for i in range(4) for j in range(i + 1, 4))
    rows += [{"id": "nodoc", "document": None, "reference": "r", "system": s, "summary": "s score=0.5",
              "human_score": 0.5} for s in SYSTEMS[:2]]
    rng.shuffle(rows)  # the harness must not rely on file order
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"n_summaries": 4 * n_docs, "n_pairs": n_pairs, "null": 2}


def test_harness_on_known_agreement(tmp_path, scorer_module, capsys):
    path = tmp_path / "toy_judgments.jsonl"
    expect = write_judgments(path)
    out = tmp_path / "out"
    scorers = "python:agreement_scorers:echo,python:agreement_scorers:negated,python:agreement_scorers:constant"
    assert main([str(path), "--out", str(out), "--scorers", scorers, "--bootstrap", "200", "--threads", "1"]) == 0
    with (out / "agreement.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        got = {r["scorer"].split(":")[-1]: r for r in reader}
    echo, neg, const = got["echo"], got["negated"], got["constant"]
    for row in got.values():
        assert int(row["n_summaries"]) == expect["n_summaries"] and int(row["n_pairs"]) == expect["n_pairs"]
    assert float(echo["spearman"]) == pytest.approx(1) and float(echo["kendall"]) == pytest.approx(1)
    assert float(echo["pairwise_acc"]) == 1 and float(echo["ci_low"]) == 1 and float(echo["ci_high"]) == 1
    assert float(echo["system_spearman"]) == pytest.approx(1)
    assert float(neg["spearman"]) == pytest.approx(-1) and float(neg["pairwise_acc"]) == 0
    assert float(neg["system_spearman"]) == pytest.approx(-1)
    assert float(const["pairwise_acc"]) == 0.5 and math.isnan(float(const["spearman"]))  # ties count 0.5
    md = (out / "agreement.md").read_text()
    assert f"{expect['null']} with a null document" in md
    assert "| python:agreement_scorers:echo | 1.000 [1.000, 1.000] |" in md
    assert (out / "agreement.png").stat().st_size > 1000
    scores = list(csv.DictReader((out / "scores.csv").open()))
    assert len(scores) == expect["n_summaries"] and "summary" not in scores[0]  # no text copied out
    assert "| scorer | Spearman" in capsys.readouterr().out  # the table is printed


def test_max_docs_and_input_errors(tmp_path, scorer_module, capsys):
    path = tmp_path / "toy.jsonl"
    write_judgments(path)
    rows, skipped = load_judgments(path, max_docs=3)
    assert len({r["id"] for r in rows}) == 3 and skipped["null_document"] == 2
    # rows come grouped by document even though the file is shuffled
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, key=ids.index)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "document": "d", "system": "s", "summary": "x"}) + "\n")
    assert main([str(bad), "--out", str(tmp_path / "o"), "--scorers", "rouge1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "lacks column(s) reference, human_score" in err[-1]
    assert main([str(path), "--scorers", "rogue1"]) == 2
    err = capsys.readouterr().err
    assert "unknown scorer 'rogue1'" in err and "Did you mean 'rouge1'" in err
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    bad.write_text(path.read_text().splitlines()[0] + "\n{not json\n")
    assert main([str(bad), "--out", str(tmp_path / "o"), "--scorers", "rouge1"]) == 2
    assert "bad.jsonl:2 is not valid JSON (" in capsys.readouterr().err


def test_a_failing_scorer_is_reported_and_the_others_kept(tmp_path, scorer_module, capsys):
    path = tmp_path / "toy.jsonl"
    write_judgments(path, n_docs=4)
    out = tmp_path / "out"
    code = main([str(path), "--out", str(out), "--scorers", "python:agreement_scorers:broken,rouge1"])
    assert code == 1
    table = list(csv.DictReader((out / "agreement.csv").open()))
    assert [(r["scorer"], r["status"][:6]) for r in table] == [("rouge1", "ok"),
                                                              ("python:agreement_scorers:broken", "failed")]
    assert table[0]["seconds"] and "returned 1 scores" in table[1]["status"]
    assert "FAILED scorer python:agreement_scorers:broken: python: 'agreement_scorers:broken' returned 1 scores" \
        in (out / "agreement.md").read_text()


def test_undefined_metrics_say_why(tmp_path, scorer_module):
    """One summary per document: no pairs; two systems: no system-level correlation. Each n/a has its reason."""
    path = tmp_path / "single.jsonl"
    rows = [{"id": f"d{d}", "document": "x", "reference": "r", "system": "AB"[d % 2], "summary": f"s score={d}",
             "human_score": d} for d in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--scorers", "python:agreement_scorers:echo", "--bootstrap", "50"]) == 0
    row = next(csv.DictReader((out / "agreement.csv").open()))
    assert row["pairwise_acc"] == "" or math.isnan(float(row["pairwise_acc"]))
    assert "pairwise_acc: one summary per document" in row["na_reasons"]
    assert "system_spearman: fewer than 3 systems" in row["na_reasons"]
    assert float(row["spearman"]) == pytest.approx(1) and float(row["spearman_low"]) == pytest.approx(1)
    assert "n/a because" in (out / "agreement.md").read_text()


def test_pairwise_judge_bookkeeping():
    """Judge outcomes: failures are counted and left out; ties are 0.5; Borda scores give the correlations."""
    rows = [{"id": "d", "system": s, "human_score": h} for s, h in zip("abc", [0.9, 0.5, 0.1])]
    rows += [{"id": "e", "system": s, "human_score": h} for s, h in zip("abc", [0.2, 0.2, 0.8])]
    outcomes = {(0, 1): 1.0, (0, 2): 1.0, (1, 2): None,  # doc d: right, right, failure
                (3, 4): 0.0, (3, 5): 0.5, (4, 5): 0.0}  # doc e: human tie (not counted), tie 0.5, right
    res = agreement(rows, borda(6, outcomes), outcomes, n_boot=100)
    assert res["failures"] == 1 and res["n_pairs"] == 4  # 2 (doc d, one failed) + 2 (doc e, one human tie)
    assert res["pairwise_acc"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    scores = borda(6, outcomes)
    assert scores[:3] == pytest.approx([1.0, 0.0, 0.0]) and scores[5] == pytest.approx((0.5 + 1) / 2)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    rows = [{"id": f"d{d}", "system": s, "human_score": float(rng.random())} for d in range(100) for s in "abcd"]
    scores = np.array([r["human_score"] + rng.normal(0, 0.3) for r in rows])
    a, b = agreement(rows, scores, seed=3), agreement(rows, scores, seed=3)
    assert a == b and a["ci_low"] < a["pairwise_acc"] < a["ci_high"]
    c = agreement(rows, scores, seed=4)
    assert (c["ci_low"], c["ci_high"]) != (a["ci_low"], a["ci_high"]) and c["pairwise_acc"] == a["pairwise_acc"]


@pytest.mark.skipif(not JUDGMENTS.exists(), reason="../shared/data (XSum faithfulness judgments) not present")
def test_rouge_reproduces_paper_scores():
    """rouge-score with Porter stemming reproduces the paper's R1/R2/RL (F-measure, 0-1 scale, lower-cased
    texts) for the four model systems: mean absolute difference 0.005 / 0.0004 / 0.003 (exact on 91% / 99% /
    94% of rows; the rest differ by one matched unigram at equal lengths, cause unknown)."""
    from reward_sources import build_source

    rows = [json.loads(line) for line in JUDGMENTS.open(encoding="utf-8")]
    rows = [r for r in rows if (r.get("paper_scores") or {}).get("R1") is not None]
    assert len(rows) > 1900
    docs, refs, hyps = [r["document"] for r in rows], [r["reference"] for r in rows], [r["summary"] for r in rows]
    for key, variant in [("R1", "rouge1"), ("R2", "rouge2"), ("RL", "rougeL")]:
        ours = np.array(build_source({"name": "rouge", "variant": variant})(docs, hyps, refs))
        paper = np.array([r["paper_scores"][key] for r in rows])
        assert np.abs(ours - paper).mean() <= 0.01, key


# ------------------------------------------------------------------ model scorers: fast paths vs plain computation


@pytest.fixture
def tiny_causal(make_policy, tmp_path):
    """A saved random llama-tiny with large weights (log-probs and greedy answers depend on every input)."""
    import torch

    policy = make_policy("llama-tiny")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return policy, str(policy.save(tmp_path / "tiny"))


def _toy_rows():
    docs = ["The council said on monday that a new bridge in riverton would cost 12 million pounds.",
            "Police said workers announced a strike.", "The mayor announced plans for 300 homes in may."]
    summaries = [["A new bridge would cost 12 million pounds.", "", "The council said.", "bridge bridge"],
                 ["Workers strike", "Police said workers announced a strike over pay.", "may", "The council."],
                 ["Plans for 300 homes.", "The mayor announced plans for 300 new homes in riverton in may.", "homes",
                  "Workers strike"]]  # a summary shared with another document: its PMI baseline is computed once
    return [{"id": f"d{d}", "document": doc, "reference": "r", "system": f"s{k}", "summary": s,
             "human_score": float(k)} for d, doc in enumerate(docs) for k, s in enumerate(summaries[d])]


@pytest.mark.parametrize("mode", ["sdpa", "eager", "padded"])
def test_packed_logprobs_equal_one_forward_per_summary(tiny_causal, mode, monkeypatch):
    """The shared-prompt path (summaries packed into one row with a block mask; or padded batches, the fallback
    for attention kernels without 4D masks) gives each summary's log-prob as computed on its own, one forward per
    (document, summary), for chunks of several summaries and of one."""
    from reward_sources import loglik

    policy, _ = tiny_causal
    rows = _toy_rows()
    docs, summaries = [r["document"] for r in rows] + [""] * 3, [r["summary"] for r in rows] + ["", "may", "A b c"]
    plain = [policy.logprobs([d], [s], batch_size=1) for d, s in zip(docs, summaries)]
    total = np.array([float(t[0]) for t, _, _ in plain])
    assert total.std() > 1.0  # the comparison is not vacuous
    if mode == "padded":
        monkeypatch.setattr(loglik, "_packable", lambda model: False)
    else:
        policy.model.set_attn_implementation(mode)
    for batch_size in (16, 1):  # 16: all of a document's summaries in one packed row; 1: a row each
        s, n = loglik.grouped_logprobs(policy, docs, summaries, batch_size=batch_size)
        assert s == pytest.approx(total.tolist(), abs=1e-4)
        assert n == [int(c[0]) for _, _, c in plain]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # spawning costs ~20 s
def test_model_work_in_workers_equals_plain_scoring(tiny_causal, workers):
    """Log-probs and judge answers computed by the worker jobs (in process, or in 2 spawned processes) are those
    of the plain path: per-summary Policy.logprobs for sum/mean/PMI, run_judge for the pairwise judge."""
    from eval.model_work import make_executor, submit_model_work
    from eval.scoring import run_judge, run_source
    from reward_sources import Context, loglik

    policy, path = tiny_causal
    rows = _toy_rows()
    scorers = [("sum", "source", "loglik", {"model": path}),
               ("mean", "source", "loglik", {"model": path, "reduce": "mean"}),
               ("pmi", "source", "loglik", {"model": path, "pmi": True}),
               ("judge", "judge", "pairwise_llm", {"model": path, "max_new_tokens": 3})]
    ctx = Context()
    executor = make_executor(workers)
    try:
        jobs = submit_model_work(executor, scorers, rows, judge_docs=2, seed=0, logprob_cache=ctx.logprob_cache,
                                 docs_per_task=1, summaries_per_task=5)
        for label, *_ in scorers:
            done = [job.finish(label) for job in jobs[label]]
    finally:
        executor.shutdown()
    outcomes, raw = done[0]
    assert len(jobs["pmi"]) == 2 and jobs["pmi"][0] is jobs["sum"][0]  # one set of log-probs for all three
    memo = dict(ctx.logprob_cache[loglik.model_key(path)])
    assert len(memo) == len(rows) + len({r["summary"] for r in rows})  # with and without the document
    with_doc = [policy.logprobs([r["document"]], [r["summary"]], batch_size=1) for r in rows]
    no_doc = [policy.logprobs([""], [r["summary"]], batch_size=1) for r in rows]
    for (label, _, reg, spec), want in [
            (scorers[0], [float(t[0]) for t, _, _ in with_doc]),
            (scorers[1], [float(m[0]) for _, m, _ in with_doc]),
            (scorers[2], [float(a[0] - b[0]) for (a, _, _), (b, _, _) in zip(with_doc, no_doc)])]:
        assert run_source(label, reg, spec, rows, ctx).tolist() == pytest.approx(want, abs=1e-4), label
    assert ctx.logprob_cache[loglik.model_key(path)] == memo  # nothing was recomputed: the scorers read the cache
    _, plain_outcomes, plain_raw = run_judge("judge", "pairwise_llm", scorers[3][3], rows, judge_docs=2)
    assert outcomes == plain_outcomes and raw == plain_raw and len(raw) == 12  # 2 documents x 6 pairs


def test_columns_under_other_names_and_judge_docs(tmp_path, scorer_module, capsys):
    from eval.agreement import parser

    path = tmp_path / "renamed.jsonl"
    write_judgments(path, n_docs=4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["reference_tok"] = r.pop("reference")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(path), "--out", str(tmp_path / "o"), "--scorers", "rouge2", "--bootstrap", "20"]
    assert main(args) == 2 and "--columns NAME=FILE_COLUMN" in capsys.readouterr().err
    assert main(args + ["--columns", "reference=reference_tok"]) == 0
    assert main(args + ["--columns", "nonsense=reference_tok"]) == 2
    # 0 documents means none, 'all' means every one
    assert parser().parse_args(["f", "--judge-docs", "0"]).judge_docs == 0
    assert parser().parse_args(["f", "--judge-docs", "all"]).judge_docs is None
    with pytest.raises(SystemExit):
        parser().parse_args(["f", "--judge-docs", "-1"])
