"""Do source rewards and judges agree with people? Validation on human judgments of summaries.

    python -m eval.agreement JUDGMENTS.jsonl [--recipe R] [--out DIR] [--scorers a,b,...] [--max-docs N]

Input rows: {id, document, reference, system, summary, human_score} (extra fields ignored). Rows whose document
is null are skipped and counted. Every summary is scored by each scorer; per scorer we report
- per-summary Spearman and Kendall correlation with human_score;
- pairwise accuracy: for each document, every pair of systems whose human scores differ, does the scorer
  prefer the same summary? (scorer ties count 0.5; pairwise judges are asked in both orders, their
  failures are counted and left out), with a 95% bootstrap CI over documents (1000 resamples, seeded);
- system-level Spearman over the systems' mean scores.
Pairwise judges get a per-summary score too (its mean win rate against the document's other summaries,
a Borda count), so their correlations are comparable. They are the expensive scorers, so they run on the
first --judge-docs documents only (the table's n_pairs says how many pairs that was).

Model scorers (loglik sources, the pairwise LLM judge) run in --workers processes with one torch thread each,
while this process computes ROUGE and BERTScore: on shared cores, processes time-share far better than OpenMP
threads do. Their work is split by document; sum and mean (and the PMI pair) share one set of log-probs.

Outputs (runs/validate/<dataset stem>/ unless --out): agreement.md, agreement.csv, agreement.png, scores.csv
(ids, systems and scores only: the data's text is never copied) and judge_raw.jsonl (raw judge answers).
"""
from __future__ import annotations

import argparse
import csv
import difflib
import itertools
import json
import math
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REQUIRED = ("id", "document", "reference", "system", "summary", "human_score")
CSV_COLUMNS = ["scorer", "spearman", "kendall", "pairwise_acc", "system_spearman", "n_summaries", "n_pairs",
               "ci_low", "ci_high"]
SMOL = {"name": "gguf:smollm2", "max_input_tokens": 512}
BUILTIN: dict[str, tuple[str, str, dict]] = {  # label -> (source|judge, registry name, spec)
    "rouge1": ("source", "rouge", {"variant": "rouge1"}),
    "rouge2": ("source", "rouge", {"variant": "rouge2"}),
    "rougeL": ("source", "rouge", {"variant": "rougeL"}),
    "rougeLsum": ("source", "rouge", {"variant": "rougeLsum"}),
    "bertscore": ("source", "bertscore", {}),
    "smollm2_sum": ("source", "loglik", {"model": SMOL, "reduce": "sum"}),
    "smollm2_mean": ("source", "loglik", {"model": SMOL, "reduce": "mean"}),
    "smollm2_pmi_sum": ("source", "loglik", {"model": SMOL, "reduce": "sum", "pmi": True}),
    "smollm2_pmi_mean": ("source", "loglik", {"model": SMOL, "reduce": "mean", "pmi": True}),
    "smollm2_judge": ("judge", "pairwise_llm", {"model": "gguf:smollm2"}),
    "support": ("source", "python", {"function": "reward_sources.examples:support"}),
}
DEFAULT_SCORERS = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "smollm2_sum", "smollm2_mean",
                   "smollm2_pmi_sum", "smollm2_pmi_mean", "smollm2_judge"]
CHEAP_SCORERS = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore"]


class AgreementError(ValueError):
    """A user mistake (missing file or column, unknown scorer): printed as one line."""


# ---------------------------------------------------------------------------- data


def load_judgments(path: str | Path, max_docs: int = 0, exclude_systems=()) -> tuple[list[dict], dict]:
    """Rows with a document, grouped by document id in file order; counts of what was skipped."""
    path = Path(path)
    if not path.is_file():
        raise AgreementError(f"judgments file {path} not found")
    rows, skipped = [], {"null_document": 0, "null_summary_or_score": 0, "excluded_system": 0}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AgreementError(f"{path}:{n} is not valid JSON ({e.msg})") from None
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                raise AgreementError(f"{path}:{n} lacks column(s) {', '.join(missing)}; need {', '.join(REQUIRED)}")
            if row["document"] is None:
                skipped["null_document"] += 1
            elif row["summary"] is None or row["human_score"] is None:
                skipped["null_summary_or_score"] += 1
            elif row["system"] in exclude_systems:
                skipped["excluded_system"] += 1
            else:
                rows.append({"id": str(row["id"]), "document": row["document"], "reference": row["reference"],
                             "system": str(row["system"]), "summary": row["summary"],
                             "human_score": float(row["human_score"])})
    order = list(OrderedDict.fromkeys(r["id"] for r in rows))
    if max_docs:
        order = order[:max_docs]
    rank = {d: i for i, d in enumerate(order)}
    # grouped by document (files are often ordered by system): scorers that share work per document need it
    rows = sorted((r for r in rows if r["id"] in rank), key=lambda r: rank[r["id"]])
    if not rows:
        raise AgreementError(f"{path} has no usable rows (skipped: {skipped})")
    return rows, skipped


def doc_groups(rows: list[dict]) -> list[list[int]]:
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, r in enumerate(rows):
        groups.setdefault(r["id"], []).append(i)
    return list(groups.values())


# ---------------------------------------------------------------------------- metrics


def _corr(fn, x, y) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")  # undefined for constant scores; NaN is honest, 0 would not be
    return float(fn(x, y).statistic)


def agreement(rows: list[dict], scores: np.ndarray, outcomes: dict | None = None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Metrics for one scorer. scores: per-summary (NaN = not scored). outcomes: for pairwise judges,
    {(i, j): 1 (i better) | 0 | 0.5 | None}; otherwise pair outcomes come from comparing scores."""
    from scipy import stats

    human = np.array([r["human_score"] for r in rows])
    ok = ~np.isnan(scores)
    res = {"spearman": _corr(stats.spearmanr, scores[ok], human[ok]),
           "kendall": _corr(stats.kendalltau, scores[ok], human[ok]), "n_summaries": int(ok.sum())}
    systems = sorted({r["system"] for r in rows})
    sys_of = np.array([r["system"] for r in rows])
    means = [(scores[ok & (sys_of == s)].mean(), human[ok & (sys_of == s)].mean()) for s in systems
             if (ok & (sys_of == s)).any()]
    res["system_spearman"] = _corr(stats.spearmanr, *map(np.array, zip(*means))) if means else float("nan")
    per_doc = []
    for g in doc_groups(rows):
        correct = n = 0
        for i, j in itertools.combinations(g, 2):
            if human[i] == human[j]:
                continue  # people have no preference: nothing to agree with
            if outcomes is not None:
                out = outcomes.get((i, j))
                if out is None:  # not judged (beyond --judge-docs) or a failure, counted below
                    continue
            else:
                if not (ok[i] and ok[j]):
                    continue
                out = 1.0 if scores[i] > scores[j] else 0.0 if scores[i] < scores[j] else 0.5
            correct += out if human[i] > human[j] else 1.0 - out
            n += 1
        if n:
            per_doc.append((correct, n))
    res["failures"] = sum(v is None for v in outcomes.values()) if outcomes is not None else 0
    res["n_pairs"] = int(sum(n for _, n in per_doc))
    if not per_doc:
        res.update(pairwise_acc=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
        return res
    c, n = np.array(per_doc, dtype=float).T
    res["pairwise_acc"] = float(c.sum() / n.sum())
    # bootstrap over documents: pairs of one document are not independent of each other
    idx = np.random.default_rng(seed).integers(0, len(c), size=(n_boot, len(c)))
    boot = c[idx].sum(1) / n[idx].sum(1)
    res["ci_low"], res["ci_high"] = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    return res


def borda(n_rows: int, outcomes: dict) -> np.ndarray:
    """Per-summary mean win rate over its judged comparisons (NaN when none succeeded)."""
    wins, count = np.zeros(n_rows), np.zeros(n_rows)
    for (i, j), out in outcomes.items():
        if out is None:
            continue
        wins[i] += out
        wins[j] += 1.0 - out
        count[i] += 1
        count[j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, wins / count, np.nan)


# ---------------------------------------------------------------------------- scorers


def resolve_scorers(names: list[str], recipe_path: str | None) -> list[tuple[str, str, str, dict]]:
    """[(label, source|judge, registry name, spec)] from --scorers names and a recipe's sources and judge."""
    out = []
    for name in names:
        if name.startswith("python:"):  # python:package.module:callable
            out.append((name, "source", "python", {"function": name[len("python:"):]}))
        elif name in BUILTIN:
            out.append((name,) + BUILTIN[name])
        else:
            close = difflib.get_close_matches(name, list(BUILTIN), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise AgreementError(f"unknown scorer '{name}'; known: {', '.join(BUILTIN)}, python:module:callable.{hint}")
    if recipe_path:
        from pipeline.config import ConfigError, load_recipe

        try:
            recipe = load_recipe(recipe_path)
        except ConfigError as e:
            raise AgreementError(str(e)) from None
        for k, spec in enumerate(recipe.online.sources):
            spec = dict(spec)
            out.append((f"{recipe.name}:{spec.get('name', '?')}#{k}", "source", spec.pop("name", "?"), spec))
        if recipe.judge.name != "oracle":  # the oracle reads the synthetic world's planted facts: not real data
            out.append((f"{recipe.name}:judge:{recipe.judge.name}", "judge", recipe.judge.name,
                        dict(recipe.judge.params)))
    return out


def run_source(label, registry_name, spec, rows, chunk: int = 100) -> np.ndarray:
    from tqdm import tqdm

    from reward_sources import build_source

    fn = build_source({"name": registry_name, **spec})
    scores = np.full(len(rows), np.nan)
    groups = doc_groups(rows)
    per = max(1, chunk // max(1, round(len(rows) / len(groups))))  # whole documents per call (shared prompts)
    with tqdm(total=len(rows), desc=label, unit="summary", leave=False) as bar:
        for s in range(0, len(groups), per):
            idx = [i for g in groups[s:s + per] for i in g]
            scores[idx] = fn([rows[i]["document"] for i in idx], [rows[i]["summary"] for i in idx],
                             [rows[i]["reference"] for i in idx])
            bar.update(len(idx))
    return scores


def run_judge(label, registry_name, params, rows, judge_docs: int, seed: int = 0):
    """(outcomes {(i, j): value}, raw answers) for every pair of summaries in the first judge_docs documents."""
    from tqdm import tqdm

    from reward_sources import build_judge

    judge = build_judge(registry_name, params)
    groups = doc_groups(rows)[: judge_docs or None]
    outcomes, raw = {}, []
    if judge.kind == "scalar":  # a scalar judge scores summaries; its pair outcomes come from the scores
        return judge, None, []
    for g in tqdm(groups, desc=label, unit="doc", leave=False):
        pairs = list(itertools.combinations(g, 2))
        res = judge.compare([rows[i] for i, _ in pairs], [rows[i]["summary"] for i, _ in pairs],
                            [rows[j]["summary"] for _, j in pairs], seed)
        for (i, j), value, answer in zip(pairs, res, judge.last_raw):
            outcomes[(i, j)] = value
            raw.append({"id": rows[i]["id"], "a": rows[i]["system"], "b": rows[j]["system"], "result": value,
                        "ab": answer.get("ab"), "ba": answer.get("ba")})
    return judge, outcomes, raw


# ---------------------------------------------------------------------------- model scorers in worker processes

_WORKER_JUDGES: dict[str, object] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _loglik_task(model, documents, responses, batch_size):
    """Worker: (summed log-probs, token counts, (wall, CPU) seconds) of responses given documents."""
    from reward_sources.loglik import get_policy, grouped_logprobs

    t0, c0 = time.time(), time.process_time()
    _, policy = get_policy(model)
    sums, counts = grouped_logprobs(policy, documents, responses, batch_size)
    return sums, counts, (time.time() - t0, time.process_time() - c0)


def _judge_task(registry_name, params, rows, a, b, seed):
    """Worker: (outcomes, raw answers, (wall, CPU) seconds) of one judge on summary pairs (a[k], b[k]) of rows[k]."""
    from reward_sources import build_judge

    t0, c0 = time.time(), time.process_time()
    key = json.dumps([registry_name, params], sort_keys=True, default=str)
    if key not in _WORKER_JUDGES:
        _WORKER_JUDGES[key] = build_judge(registry_name, params)
    judge = _WORKER_JUDGES[key]
    return judge.compare(rows, a, b, seed), judge.last_raw, (time.time() - t0, time.process_time() - c0)


class LazyTask:
    """workers=1: a task run here, when its result is first asked for (so progress bars show it running)."""

    def __init__(self, fn, args):
        self.fn, self.args, self.out = fn, args, None

    def result(self):
        if self.out is None:
            try:
                self.out = (True, self.fn(*self.args))
            except Exception as e:  # noqa: BLE001 - re-raised on every call, as a process pool's future does
                self.out = (False, e)
        if not self.out[0]:
            raise self.out[1]
        return self.out[1]


class InlineExecutor:
    def submit(self, fn, *args) -> LazyTask:
        return LazyTask(fn, args)

    def shutdown(self, cancel_futures=False) -> None:
        pass


def make_executor(workers: int):
    if workers <= 1:
        return InlineExecutor()
    import multiprocessing

    # spawn: a forked child would inherit this process's OpenMP state (and its model, if loaded)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


class Job:
    """Futures of one piece of model work; finish() combines them once and re-raises a worker's error for every
    scorer that needs the job. seconds, cpu_seconds: summed over its tasks."""

    def __init__(self, futures, combine):
        self.futures, self.combine, self.done, self.claimed = futures, combine, None, False
        self.seconds = self.cpu_seconds = 0.0

    def finish(self, label: str):
        from tqdm import tqdm

        if self.done is None:
            try:
                results = [f.result() for f in tqdm(self.futures, desc=label, unit="task", leave=False)]
                self.seconds = sum(r[-1][0] for r in results)
                self.cpu_seconds = sum(r[-1][1] for r in results)
                self.done = ("ok", self.combine(results))
            except Exception as e:  # noqa: BLE001 - a dead worker process is not a ValueError
                self.done = ("error", e if isinstance(e, ValueError) else ValueError(f"worker failed: {e!r}"))
        if self.done[0] == "error":
            raise self.done[1]
        return self.done[1]


def submit_model_work(executor, scorers, rows, judge_docs: int, seed: int, docs_per_task: int = 8,
                      summaries_per_task: int = 64) -> dict[str, list[Job]]:
    """Jobs for the model-backed scorers, keyed by scorer label (scorers on one model share jobs): log-probs of
    every summary given its document (and given no document, for PMI), and the pairwise LLM judge's comparisons.
    Log-probs land in reward_sources.loglik's memo, so the scorers themselves then only combine numbers."""
    from reward_sources import loglik

    groups = doc_groups(rows)
    jobs: dict[str, list[Job]] = {}
    shared: dict[tuple, Job] = {}

    def loglik_job(model, batch_size, with_document: bool):
        key = (loglik.model_key(model), with_document)
        if key not in shared:
            if with_document:  # whole documents per task, so each document's prompt is encoded once
                order = [i for g in groups for i in g]
                documents, responses = [rows[i]["document"] for i in order], [rows[i]["summary"] for i in order]
                sizes = [sum(map(len, groups[k:k + docs_per_task])) for k in range(0, len(groups), docs_per_task)]
            else:  # PMI baseline: each distinct summary given the empty document
                responses = list(OrderedDict.fromkeys(r["summary"] for r in rows))
                documents = [""] * len(responses)
                sizes = [summaries_per_task] * math.ceil(len(responses) / summaries_per_task)
            starts = np.cumsum([0] + sizes[:-1]).tolist()
            futures = [executor.submit(_loglik_task, model, documents[s:s + n], responses[s:s + n], batch_size)
                       for s, n in zip(starts, sizes)]

            def combine(results, documents=documents, responses=responses):
                sums = [x for r in results for x in r[0]]
                counts = [x for r in results for x in r[1]]
                loglik.remember(model, documents, responses, sums, counts)
                return True

            shared[key] = Job(futures, combine)
        return shared[key]

    for label, what, reg_name, spec in scorers:
        if what == "source" and reg_name == "loglik" and "model" in spec and not spec.get("minus_reference"):
            try:  # loaded here first: checks the spec, and a GGUF is dequantised once, not once per worker
                loglik.get_policy(spec["model"])
                batch_size = int(spec.get("batch_size", 16))
            except (ValueError, TypeError):
                continue  # the scorer itself reports the bad spec
            jobs[label] = [loglik_job(spec["model"], batch_size, True)]
            if spec.get("pmi"):
                jobs[label].append(loglik_job(spec["model"], batch_size, False))
        elif what == "judge" and reg_name == "pairwise_llm":
            futures, pair_lists = [], []
            for g in groups[: judge_docs or None]:
                pairs = list(itertools.combinations(g, 2))
                slim = [{"id": rows[i]["id"], "document": rows[i]["document"]} for i, _ in pairs]
                futures.append(executor.submit(_judge_task, reg_name, spec, slim,
                                               [rows[i]["summary"] for i, _ in pairs],
                                               [rows[j]["summary"] for _, j in pairs], seed))
                pair_lists.append(pairs)

            def combine(results, pair_lists=pair_lists):
                outcomes, raw = {}, []
                for pairs, (values, answers, _) in zip(pair_lists, results):
                    for (i, j), value, answer in zip(pairs, values, answers):
                        outcomes[(i, j)] = value
                        raw.append({"id": rows[i]["id"], "a": rows[i]["system"], "b": rows[j]["system"],
                                    "result": value, "ab": answer.get("ab"), "ba": answer.get("ba")})
                return outcomes, raw

            jobs[label] = [Job(futures, combine)]
    return jobs


# ---------------------------------------------------------------------------- report


def _fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: list[dict], header: list[str]) -> str:
    lines = header + ["", "| scorer | Spearman | Kendall | pairwise acc [95% CI] | system Spearman | summaries | pairs "
                          "| failures | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['scorer']} | {_fmt(r['spearman'])} | {_fmt(r['kendall'])} | {_fmt(r['pairwise_acc'])} "
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['system_spearman'])} | "
                     f"{r['n_summaries']} | {r['n_pairs']} | {r['failures']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scorer"] for r in results]
    acc = np.array([r["pairwise_acc"] for r in results], dtype=float)
    err = np.array([[a - r["ci_low"], r["ci_high"] - a] for a, r in zip(acc, results)], dtype=float).T
    rho = np.array([r["spearman"] for r in results], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.5))
    ax1.bar(names, np.nan_to_num(acc), yerr=np.nan_to_num(err), capsize=3, color="tab:blue")
    ax1.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax1.set(ylabel="pairwise accuracy vs people (95% CI)", ylim=(0, 1))
    ax1.legend()
    ax2.bar(names, np.nan_to_num(rho), color="tab:orange")
    ax2.axhline(0, color="grey", lw=1)
    ax2.set(ylabel="per-summary Spearman with human score", ylim=(-1, 1))
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def set_threads(n: int) -> int:
    """On a shared machine, OpenMP threads competing for busy cores are slower than fewer threads
    (measured here: SmolLM2 prefill 2.1 s with 1 thread vs 5-11 s with 2 while the other core was busy)."""
    import os

    import torch

    if n <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, min(cores, cores - round(os.getloadavg()[0])))
    torch.set_num_threads(n)
    return n


def resolve_workers(n: int) -> int:
    """0 = one per CPU core (at most 4): single-threaded processes share even busy cores without the stalls that
    OpenMP threads suffer there."""
    if n > 0:
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 4))


def run(args) -> tuple[list[dict], list[tuple[str, str]]]:
    t_all = time.time()
    exclude = [s for s in (args.exclude_systems or "").split(",") if s]
    rows, skipped = load_judgments(args.judgments, args.max_docs, exclude)
    names = [s.strip() for s in (args.scorers or ",".join(DEFAULT_SCORERS)).split(",") if s.strip()]
    names = [n for name in names for n in (CHEAP_SCORERS if name == "cheap" else [name])]
    scorers = resolve_scorers(names, args.recipe)
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
        jobs = submit_model_work(executor, scorers, rows, args.judge_docs, args.seed) if executor else {}
        for label, what, reg_name, spec in scorers:
            one = score_one(label, what, reg_name, spec, rows, jobs.get(label), args)
            if isinstance(one, str):
                failed.append((label, one))
                print(f"{label}: FAILED: {one}", file=sys.stderr)
                continue
            res, scores, raw = one
            results.append(res)
            columns[label] = scores
            raw_all += [{"scorer": label, **r} for r in raw]
            print(f"{label}: pairwise acc {_fmt(res['pairwise_acc'])}, Spearman {_fmt(res['spearman'])} "
                  f"({res['seconds']:.0f} s)", file=sys.stderr)
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
    unique = {id(job): job for js in jobs.values() for job in js}.values()
    model_cpu = sum(job.cpu_seconds for job in unique)
    write_outputs(args, out, rows, skipped, exclude, results, columns, raw_all, failed, threads, workers, model_cpu,
                  t_all)
    return results, failed


def score_one(label, what, reg_name, spec, rows, jobs, args):
    """(metrics, per-summary scores, raw judge answers) of one scorer, or the reason it failed."""
    t0, worker_s, outcomes, raw = time.time(), 0.0, None, []
    try:
        done = [job.finish(label) for job in jobs or []]
        for job in jobs or []:  # work shared by several scorers is timed once, with the first
            worker_s += 0.0 if job.claimed else job.seconds
            job.claimed = True
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
            scores = run_source(label, reg_name, spec, rows)
    except ValueError as e:  # sources, judges and models raise one-line ValueErrors for user mistakes
        return str(e)
    res = agreement(rows, scores, outcomes, args.bootstrap, args.seed)
    res.update(scorer=label, seconds=time.time() - t0 + worker_s)
    return res, scores, raw


def write_outputs(args, out, rows, skipped, exclude, results, columns, raw_all, failed, threads, workers, model_cpu,
                  t_all):
    n_docs = len(doc_groups(rows))
    with (out / "agreement.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    with (out / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "system", "human_score"] + list(columns))
        for i, r in enumerate(rows):
            w.writerow([r["id"], r["system"], r["human_score"]] + [_fmt(columns[c][i], 6) for c in columns])
    if raw_all:
        (out / "judge_raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw_all), encoding="utf-8")
    systems = sorted({r["system"] for r in rows})
    header = [f"# Agreement with human judgments: {Path(args.judgments).name}", "",
              f"- {len(rows)} summaries of {n_docs} documents, systems: {', '.join(systems)}"
              + (f" (excluded: {', '.join(exclude)})" if exclude else ""),
              f"- skipped rows: {skipped['null_document']} with a null document, "
              f"{skipped['null_summary_or_score']} without a summary or human score",
              f"- pairwise accuracy over document-wise pairs whose human scores differ (scorer ties = 0.5); "
              f"95% CI: {args.bootstrap} bootstrap resamples of documents, seed {args.seed}",
              f"- pairwise judges: both orders, first {args.judge_docs or 'all'} documents; per-summary score = "
              "mean win rate (Borda); failures = unparseable answers, left out",
              "- reference-based scorers (ROUGE, BERTScore) give a 'Gold' system (the reference itself) a perfect "
              "score; --exclude-systems Gold removes it",
              f"- wall time {time.time() - t_all:.0f} s; model scorers (log-probs, LLM judge) in {workers} worker "
              f"process(es), 1 torch thread each ({model_cpu:.0f} CPU s in all), ROUGE and BERTScore beside them "
              f"with {threads} thread(s); a model scorer's 'seconds' are its tasks' wall seconds summed over workers "
              "(log-probs shared by several scorers are counted once, with the first)"]
    header += [f"- FAILED scorer {label}: {reason}" for label, reason in failed]
    md = markdown(results, header)
    (out / "agreement.md").write_text(md, encoding="utf-8")
    plot(results, out / "agreement.png")
    print(md)
    print(f"wrote {out}/agreement.md, agreement.csv, agreement.png, scores.csv", file=sys.stderr)
    return results, failed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("judgments", help="JSONL with id, document, reference, system, summary, human_score")
    p.add_argument("--recipe", help="also score the recipe's online sources and (non-oracle) judge")
    p.add_argument("--out", help="output directory (default runs/validate/<dataset stem>)")
    p.add_argument("--scorers", help=f"comma list of {', '.join(BUILTIN)} or python:module:callable "
                                     f"(default: {','.join(DEFAULT_SCORERS)}; 'cheap' = {','.join(CHEAP_SCORERS)})")
    p.add_argument("--max-docs", type=int, default=0, help="only the first N documents (0 = all)")
    p.add_argument("--judge-docs", type=int, default=50,
                   help="pairwise judges run on the first N documents (0 = all; SmolLM2: ~8 CPU s per document)")
    p.add_argument("--exclude-systems", default="", help="comma list of systems to leave out (e.g. Gold)")
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
