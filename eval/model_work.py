"""Model scorers (loglik sources, the pairwise LLM judge) in worker processes with one torch thread each, while the
main process computes ROUGE and BERTScore: on shared cores, processes time-share far better than OpenMP threads do.
Their work is split by document; sum and mean (and the PMI pair) share one set of log-probs."""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from eval.judgments import doc_groups
from eval.scoring import record_answers

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
    scorer that needs the job. seconds: wall seconds from submission until its last task ended in worker processes
    (tasks run side by side, so their own times would add up to more than the clock saw); cpu_seconds: summed over
    its tasks."""

    def __init__(self, futures, combine):
        self.futures, self.combine, self.done = futures, combine, None
        self.seconds = self.cpu_seconds = 0.0
        self.t_submit, self.t_end = time.time(), 0.0
        for f in futures:
            if hasattr(f, "add_done_callback"):  # a pool's task ends before this process asks for its result
                f.add_done_callback(self._ended)

    def _ended(self, _future) -> None:
        self.t_end = max(self.t_end, time.time())

    def finish(self, label: str):
        from tqdm import tqdm

        if self.done is None:
            try:
                results = [f.result() for f in tqdm(self.futures, desc=label, unit="task", leave=False)]
                if any(hasattr(f, "add_done_callback") for f in self.futures):
                    self.seconds = self.t_end - self.t_submit
                else:  # inline tasks run one after another when asked: their own times are the wall time
                    self.seconds = sum(r[-1][0] for r in results)
                self.cpu_seconds = sum(r[-1][1] for r in results)
                self.done = ("ok", self.combine(results))
            except Exception as e:  # noqa: BLE001 - a dead worker process is not a ValueError
                self.done = ("error", e if isinstance(e, ValueError) else ValueError(f"worker failed: {e!r}"))
        if self.done[0] == "error":
            raise self.done[1]
        return self.done[1]


def submit_model_work(executor, scorers, rows, judge_docs: int | None, seed: int, logprob_cache: dict,
                      docs_per_task: int = 8, summaries_per_task: int = 64) -> dict[str, list[Job]]:
    """Jobs for the model-backed scorers, keyed by scorer label (scorers on one model share jobs): log-probs of
    every summary given its document (and given no document, for PMI), and the pairwise LLM judge's comparisons.
    Finished log-probs land in `logprob_cache` (a reward_sources Context's), so scorers built with that context
    only combine numbers."""
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
                loglik.remember(logprob_cache, model, documents, responses, sums, counts)
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
            for g in groups[:judge_docs]:
                pairs = list(itertools.combinations(g, 2))
                slim = [{"id": rows[i]["id"], "document": rows[i]["document"]} for i, _ in pairs]
                futures.append(executor.submit(_judge_task, reg_name, spec, slim,
                                               [rows[i]["summary"] for i, _ in pairs],
                                               [rows[j]["summary"] for _, j in pairs], seed))
                pair_lists.append(pairs)

            def combine(results, pair_lists=pair_lists):
                outcomes, raw = {}, []
                for pairs, (values, answers, _) in zip(pair_lists, results):
                    record_answers(rows, pairs, values, answers, outcomes, raw)
                return outcomes, raw

            jobs[label] = [Job(futures, combine)]
    return jobs


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(n: int) -> int:
    """On a shared machine, OpenMP threads competing for busy cores are slower than fewer threads
    (measured here: SmolLM2 prefill 2.1 s with 1 thread vs 5-11 s with 2 while the other core was busy)."""
    import torch

    if n <= 0:
        cores = _cores()
        n = max(1, min(cores, cores - round(os.getloadavg()[0])))
    torch.set_num_threads(n)
    return n


def resolve_workers(n: int) -> int:
    """0 = one per CPU core (at most 4): single-threaded processes share even busy cores without the stalls that
    OpenMP threads suffer there."""
    if n > 0:
        return n
    return max(1, min(_cores(), 4))
