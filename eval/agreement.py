"""Do source rewards and judges agree with people? Validation on human judgments of summaries.

    python -m eval.agreement JUDGMENTS.jsonl [--recipe R] [--out DIR] [--scorers a,b,...] [--max-docs N]

Input rows: {id, document, reference, system, summary, human_score} (extra fields ignored). Rows whose document
is null are skipped and counted. Every summary is scored by each scorer; per scorer we report
- per-summary Spearman and Kendall correlation with human_score;
- pairwise accuracy: for each document, every pair of systems whose human scores differ, does the scorer
  prefer the same summary? (scorer ties count 0.5; pairwise judges are asked in both orders, their
  failures are counted and left out), with a 95% bootstrap CI over documents (1000 resamples, seeded);
- system-level Spearman over the systems' mean scores.
Every correlation has a 95% bootstrap interval over documents too, and every n/a its reason (one summary per
document, fewer than 3 systems, constant scores). Pairwise judges get a per-summary score too (its mean win rate
against the document's other summaries, a Borda count), so their correlations are comparable. They are the
expensive scorers, so they run on the first --judge-docs documents only (the table's n_pairs says how many pairs
that was); smollm2_judge, at chance on every set tried, runs only when named.

A learned judge (`--scorers learned:CHECKPOINT_DIR`, saved by eval.learned_judge) is refused on a file that shares
documents (same id or same text) with its training file, unless --exclude-docs-of TRAINING_FILE (or the checkpoint
directory) leaves them out.

Model scorers (loglik sources, the pairwise LLM judge) run in --workers processes with one torch thread each,
while this process computes ROUGE and BERTScore: on shared cores, processes time-share far better than OpenMP
threads do. Their work is split by document; sum and mean (and the PMI pair) share one set of log-probs.

Outputs (runs/validate/<dataset stem>/ unless --out): agreement.md, agreement.csv, agreement.png, scores.csv
(ids, systems and scores only: the data's text is never copied) and judge_raw.jsonl (raw judge answers).

This module is the command; the work is split by job: eval/judgments.py (reading files, shared documents),
eval/scoring.py (scorers by name), eval/model_work.py (model scorers in worker processes),
eval/agreement_metrics.py (metrics and intervals), eval/agreement_report.py (what is written).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from eval.agreement_metrics import agreement, borda
from eval.agreement_report import fmt, write_outputs
from eval.judgments import (
    AgreementError,
    doc_groups,
    excluded_documents,
    load_judgments,
    parse_columns,
    refuse_seen_documents,
)
from eval.model_work import make_executor, resolve_workers, set_threads, submit_model_work
from eval.scoring import BUILTIN, CHEAP_SCORERS, DEFAULT_SCORERS, resolve_scorers, run_judge, run_source
from reward_sources.registry import Context


def run(args) -> tuple[list[dict], list[tuple[str, str]]]:
    t_all = time.time()
    exclude = [s for s in (args.exclude_systems or "").split(",") if s]
    names = [s.strip() for s in (args.scorers or ",".join(DEFAULT_SCORERS)).split(",") if s.strip()]
    names = [n for name in names for n in (CHEAP_SCORERS if name == "cheap" else [name])]
    scorers = resolve_scorers(names, args.recipe)
    exclude_docs = excluded_documents(args.exclude_docs_of) if args.exclude_docs_of else frozenset()
    rows, skipped = load_judgments(args.judgments, args.max_docs, exclude, exclude_docs, parse_columns(args.columns))
    refuse_seen_documents(scorers, rows)
    model_work = any(reg in ("loglik", "pairwise_llm") for _, _, reg, _ in scorers)
    workers = resolve_workers(args.workers) if model_work else 0
    # with worker processes on the cores, this process (ROUGE, BERTScore) takes one thread unless told otherwise
    threads = set_threads(args.threads or (1 if workers > 1 else 0))
    out = Path(args.out or Path("runs/validate") / Path(args.judgments).stem)
    out.mkdir(parents=True, exist_ok=True)
    n_docs = len(doc_groups(rows))
    print(f"torch threads: {threads}; model-scorer workers: {workers}; {len(rows)} summaries of {n_docs} documents; "
          f"skipped: {skipped}", file=sys.stderr)
    results, columns, raw_all = [], {}, []
    failed = []  # (label, reason): one broken scorer must not throw away an hour of the others' work
    executor, jobs = make_executor(workers) if model_work else None, {}
    try:
        ctx = Context()  # the model workers' log-probs reach the loglik scorers through it
        jobs = (submit_model_work(executor, scorers, rows, args.judge_docs, args.seed, ctx.logprob_cache)
                if executor else {})
        for label, what, reg_name, spec in scorers:
            one = score_one(label, what, reg_name, spec, rows, jobs.get(label), args, ctx)
            if isinstance(one, str):
                failed.append((label, one))
                print(f"{label}: FAILED: {one}", file=sys.stderr)
                continue
            res, scores, raw = one
            results.append(res)
            columns[label] = scores
            raw_all += [{"scorer": label, **r} for r in raw]
            print(f"{label}: pairwise acc {fmt(res['pairwise_acc'])}, Spearman {fmt(res['spearman'])} "
                  f"({res['seconds']:.0f} s)", file=sys.stderr)
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
    unique = {id(job): job for js in jobs.values() for job in js}.values()
    model_cpu = sum(job.cpu_seconds for job in unique)
    write_outputs(args, out, rows, skipped, exclude, results, columns, raw_all, failed, threads, workers, model_cpu,
                  t_all)
    return results, failed


def score_one(label, what, reg_name, spec, rows, jobs, args, ctx):
    """(metrics, per-summary scores, raw judge answers) of one scorer, or the reason it failed."""
    t0, outcomes, raw = time.time(), None, []
    try:
        done = [job.finish(label) for job in jobs or []]
        if what == "judge" and jobs:
            outcomes, raw = done[0]
            scores = borda(len(rows), outcomes)
        elif what == "judge":
            judge, outcomes, raw = run_judge(label, reg_name, spec, rows, args.judge_docs, args.seed)
            if outcomes is None:  # a scalar judge (reward model) scores every summary
                scores = np.array(judge.score(rows, [r["summary"] for r in rows], args.seed), dtype=float)
            else:
                scores = borda(len(rows), outcomes)
        else:
            scores = run_source(label, reg_name, spec, rows, ctx)
    except ValueError as e:  # sources, judges and models raise one-line ValueErrors for user mistakes
        return str(e)
    # model work ran in the background since submission: its wall time, not the wait for it here
    seconds = max(job.seconds for job in jobs) if jobs else time.time() - t0
    res = agreement(rows, scores, outcomes, args.bootstrap, args.seed)
    res.update(scorer=label, seconds=seconds)
    return res, scores, raw


def _judge_docs(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"'{text}': give a number of documents (0 = none) or 'all'")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("judgments", help="JSONL with id, document, reference, system, summary, human_score")
    p.add_argument("--recipe", help="also score the recipe's online sources and (non-oracle) judge")
    p.add_argument("--out", help="output directory (default runs/validate/<dataset stem>)")
    p.add_argument("--scorers", help=f"comma list of {', '.join(BUILTIN)}, python:module:callable or "
                                     f"learned:CHECKPOINT_DIR (default: {','.join(DEFAULT_SCORERS)}; "
                                     f"'cheap' = {','.join(CHEAP_SCORERS)})")
    p.add_argument("--max-docs", type=int, default=0, help="only the first N documents (0 = all)")
    p.add_argument("--judge-docs", type=_judge_docs, default=50,
                   help="pairwise judges run on the first N documents ('all' = every document; 0 = none: the "
                        "judge is reported n/a; SmolLM2: ~8 CPU s per document)")
    p.add_argument("--columns", default="", metavar="NAME=FILE_COLUMN,...",
                   help="read a column under another name, e.g. reference=reference_tok,human_score=faithful")
    p.add_argument("--exclude-systems", default="", help="comma list of systems to leave out (e.g. Gold)")
    p.add_argument("--exclude-docs-of", metavar="FILE",
                   help="leave out documents (same id or same text) that also occur in this judgments file, or "
                        "that a learned judge's checkpoint directory was trained on: a judge is refused on documents "
                        "it was trained on")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (and judge seed)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads of this process (0 = auto: 1 with worker processes, else the cores not "
                        "already busy, at least 1)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for the model scorers, 1 torch thread each (0 = one per CPU core, at most 4; "
                        "1 = in this process)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _, failed = run(args)
    except (AgreementError, ValueError) as e:  # registry/source/model errors are one-line ValueErrors too
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
