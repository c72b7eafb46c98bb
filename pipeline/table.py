"""`make table RECIPE=...`: TPO against its baselines, Table-1 style (docs/algorithms.md §1 step 10).

From one shared data + SFT stage (and its source models), every method (TPO = the ucb selector, no transfer,
pure exploit of each source `exploit:<source>`, or the recipe's own list, which may name any selector, e.g. the
selection stages relevance / dual_active / lowrank / shared) runs I online iterations for each of S training
seeds; with table.aa the baseline runs once more per seed s with training seed s + table.aa_seed_offset
(`aa:<baseline>`), an A/A comparison whose spread is training-seed noise alone. The (method, seed) runs are
independent: table.jobs (or --jobs N) trains up to N of them at once, each in its own process. With
table.vary_build every training seed s has its own build (SFT checkpoint and source models trained with seeds
offset by s, runs/<name>/builds/seed<s>), shared by every row of that seed: the pairs stay within a build and the
interval over seeds covers how much a result depends on the build.

Headline, when the eval judge knows the exact utility (the synthetic world's oracle): every checkpoint samples
table.utility_samples responses on table.utility_prompts held-out test prompts with the sampling seed of its
training seed, so all checkpoints share random numbers; per iteration, each method's utility minus the
baseline's, paired per training seed, with a t-interval over seeds and the Bradley–Terry expected win rate
(eval/paired.py: paired.csv, paired.md, paired.png). table.pairs adds rows [method, baseline] paired the same way
(a selection stage against its own baseline); the plot keeps the rows against table.baseline.

Secondary (the headline for judges without a utility): sampled judge win rates on the first table.n_prompts of
those prompts and the first eval.samples_per_prompt samples (no extra generation). Per iteration and seed, the
first method meets each other one (or, with `table.versus: <label>`, every other method meets that one), and
the A/A run meets the baseline. The win rate per (pair, iteration) is the mean over seeds with a t-interval
over seeds; with a single seed the interval is over test prompts instead (percentile bootstrap), and the table
says so. Each row states the judge labels (and label cost) each method spent in that iteration, so a
comparison is read at equal label budget, and table.md ends with each method's measured costs per iteration.

Diagnostics beside the headline (exact-utility judges): vs_sft.* (every checkpoint's paired gain over the SFT
checkpoint its seed started from, on the same random numbers) and training_pairs.* (the exact utility of the pairs
each run trained on, read back from its label store).

Writes runs/<name>/table/: paired.csv, paired.md, paired.png, vs_sft.*, training_pairs.* (exact-utility judges),
table.csv, table.md, winrate.png, arms_iter<t>.png (arms_<method>_iter<t>.png with versus), and per run
runs/<name>/methods/<method>/seed<s>/ (checkpoints, labels.sqlite, arms.csv, cached test samples).

Longer than most modules (~600 lines): the experiment driver, from training every (method, seed) run in worker
processes to sampling each checkpoint once and writing both tables. Data, SFT and sources come from the
runner; each (method, seed) run resumes through the online stage's own per-iteration DONE markers.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from eval import paired, training_pairs, winrate, world_report
from pipeline import distributed, environment
from pipeline.cli import RunFailed, check_names, run_command, table_methods
from pipeline.config import SEED_MAX, ConfigError, Recipe, SelectorConfig, load_recipe, save_resolved
from pipeline.durable import atomic_write_text
from pipeline.labels import LabelStore
from pipeline.models import load_policy
from pipeline.runner import (
    build_judge,
    build_scorers,
    configure_threads,
    load_split,
    online_finished,
    online_run,
    policy_config,
    run,
    seed_everything,
    setup_logging,
    verify_shared_inputs,
)
from reward_sources.contracts import knows_utility

# The starting checkpoint's reserved row label in the gain-over-SFT table (a method may not take it).
SFT_ROW = "sft"
TABLE_FIELDS = ["method_a", "method_b", "iteration", "mean_win_rate", "ci_low", "ci_high", "seeds", "ci_over",
                "labels_a", "labels_b", "label_cost_a", "label_cost_b"]


def methods(recipe: Recipe) -> list[tuple[str, SelectorConfig]]:
    """The table's rows (cli.table_methods) with the rules a table adds: distinct labels, the baseline present."""
    out = table_methods(recipe)
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"table.methods labels repeat: {labels}")
    bad = [label for label in labels if label.startswith(paired.AA_PREFIX) or "/" in label or label == SFT_ROW]
    if bad:
        raise ConfigError(f"table.methods labels may not contain '/', start with '{paired.AA_PREFIX}' (the A/A "
                          f"row's prefix) or be '{SFT_ROW}' (the starting checkpoint's row): {bad}")
    for pair in recipe.table.pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(labels):
            raise ConfigError(f"table.pairs entry {pair} must be [method, baseline], two different methods of the "
                              f"table ({', '.join(labels)})")
    if recipe.table.versus and recipe.table.versus not in labels:
        raise ConfigError(f"table.versus '{recipe.table.versus}' is not a method of the table ({', '.join(labels)})")
    if recipe.table.aa:
        if recipe.table.baseline not in labels:
            raise ConfigError(f"table.baseline '{recipe.table.baseline}' is not a method of the table "
                              f"({', '.join(labels)}); the A/A row trains it again (or set table.aa=false)")
        clash = sorted({s + recipe.table.aa_seed_offset for s in recipe.table.seeds} & set(recipe.table.seeds))
        if clash:
            raise ConfigError(f"table.aa_seed_offset={recipe.table.aa_seed_offset} makes the A/A run reuse training "
                              f"seed(s) {clash} of table.seeds: its runs would not be independent of the baseline's")
        outside = [s + recipe.table.aa_seed_offset for s in recipe.table.seeds
                   if not 0 <= s + recipe.table.aa_seed_offset <= SEED_MAX]
        if outside:  # a training seed reaches np.random.seed: a traceback mid-table otherwise
            raise ConfigError(f"table.aa_seed_offset={recipe.table.aa_seed_offset} gives the A/A run training seed(s) "
                              f"{outside}, outside 0 .. {SEED_MAX}")
    if recipe.table.vary_build:
        seeds = {"policy.init_seed": recipe.policy.init_seed, "sft.seed": recipe.sft.seed}
        for sm in recipe.source_models:
            seeds.update({f"source_models[{sm.label}].model.init_seed": sm.model.init_seed,
                          f"source_models[{sm.label}].sft.seed": sm.sft.seed})
        over = [k for k, v in seeds.items() if v + max(recipe.table.seeds) > SEED_MAX]
        if over:
            raise ConfigError(f"table.vary_build offsets {', '.join(over)} by up to {max(recipe.table.seeds)}, past "
                              f"{SEED_MAX}")
    return out


def build_recipe(recipe: Recipe, seed: int) -> Recipe:
    """The recipe whose data, SFT checkpoint and source models the rows of training seed `seed` start from: the
    recipe itself, or with table.vary_build the build of seed s, whose SFT and source-model seeds (initial weights,
    batch order) are offset by s, in <run_dir>/builds/seed<s>. Offset 0 is the recipe's own build, in its own
    folder. data.seed is kept: every build holds the same articles, so every checkpoint meets the same test prompts.
    The returned recipe does not vary builds itself: its own table would be a table on that one build."""
    if not recipe.table.vary_build or seed == 0:
        return recipe
    shift = lambda model: dataclasses.replace(model, init_seed=model.init_seed + seed)
    return dataclasses.replace(
        recipe, run_dir=str(recipe.out / "builds" / f"seed{seed}"), policy=shift(recipe.policy),
        table=dataclasses.replace(recipe.table, vary_build=False),  # a build is a plain recipe of its own
        sft=dataclasses.replace(recipe.sft, seed=recipe.sft.seed + seed),
        source_models=[dataclasses.replace(sm, model=shift(sm.model), sft=dataclasses.replace(sm.sft, seed=sm.sft.seed
                                                                                              + seed))
                       for sm in recipe.source_models])


def builds(recipe: Recipe) -> list[Recipe]:
    """Every build the table's rows start from: the recipe's own, or one per training seed with table.vary_build."""
    return [build_recipe(recipe, s) for s in dict.fromkeys(recipe.table.seeds if recipe.table.vary_build else [0])]


def aa_label(recipe: Recipe) -> str | None:
    return f"{paired.AA_PREFIX}{recipe.table.baseline}" if recipe.table.aa else None


def all_methods(recipe: Recipe) -> list[tuple[str, SelectorConfig]]:
    """methods(), then the A/A row (the baseline's selector) when table.aa."""
    out = methods(recipe)
    return out + ([(aa_label(recipe), dict(out)[recipe.table.baseline])] if recipe.table.aa else [])


def runs(recipe: Recipe) -> list[tuple[str, SelectorConfig, int, int]]:
    """Every online run as (label, selector, seed, training seed): the A/A run of seed s trains with seed
    s + aa_seed_offset and is paired with the baseline's seed s (same sampling seed, same directory name)."""
    offset = {aa_label(recipe): recipe.table.aa_seed_offset}
    return [(label, sel, s, s + offset.get(label, 0)) for label, sel in all_methods(recipe) for s in recipe.table.seeds]


def run_dir(recipe: Recipe, method: str, seed: int) -> Path:
    return recipe.out / "methods" / method / f"seed{seed}"


def train_one(recipe: Recipe, label: str, selector: SelectorConfig, seed: int, training_seed: int,
              judge=None, scorers: dict | None = None) -> None:
    """One (method, seed) online run: the runner's online stage in the row's own folder (resumed, verified,
    sealed like any run's), from the seed's build. A worker process builds its own judge and sources; seeding is
    the same either way, so a run's results do not depend on table.jobs."""
    print(f"\n== {label}, seed {seed}" + (f" (training seed {training_seed})" if training_seed != seed else "")
          + " ==", flush=True)
    cfg = dataclasses.replace(recipe.online, seed=training_seed, selector=selector)
    online_run(build_recipe(recipe, seed), run_dir(recipe, label, seed), cfg, judge,
               {} if selector.name == "none" else scorers)


def train_all(recipe: Recipe, judge, scorers: dict | None, jobs: int = 1) -> None:
    """Every (method, seed) run not yet finished. `scorers` serve the recipe's own build; with table.vary_build
    each run builds its build's own (a loglik source reads that build's model)."""
    scorers = None if recipe.table.vary_build else scorers
    here = (judge, scorers) if jobs <= 1 else ()  # a worker process builds its own
    execute([(f"online run {label} seed {seed}", train_one, (recipe, label, sel, seed, training_seed, *here))
             for label, sel, seed, training_seed in runs(recipe)
             if not online_finished(run_dir(recipe, label, seed) / "online", recipe.online.iterations)],
            jobs, recipe.out)


def _exit_with(parent: int) -> None:
    # A killed table process would otherwise leave its workers training on, holding their runs' locks (a rerun is
    # refused as "in use") with nobody to collect their results. Exiting hard loses no more than a crash would:
    # what a run saves is written atomically and resumed by the rerun.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker(fn, args: tuple, log_dir: Path, parent: int) -> str | None:
    """A job in a spawned process: one torch thread (TRLHF_THREADS), run.log, and its error as one line (a
    string always crosses the process boundary; some exceptions do not unpickle). It ends when the table process
    that started it dies."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    configure_threads()
    setup_logging(log_dir)
    try:
        fn(*args)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None


def execute(tasks: list[tuple[str, object, tuple]], jobs: int, log_dir: Path) -> None:
    """(description, function, args) tasks: here, in order, when jobs <= 1 (errors propagate as they are); else
    in up to `jobs` spawned processes, a fresh one per task. There a failure cancels the queued tasks, lets those
    running finish (what they save is resumed by a rerun), and raises RunFailed saying which failed and why."""
    import multiprocessing
    if jobs <= 1 or not tasks:
        for _, fn, args in tasks:
            fn(*args)
        return
    if distributed.world_size() > 1:
        raise ConfigError("table.jobs > 1 runs its own processes; do not combine it with accelerate launch / torchrun")
    errors = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(_worker, fn, args, log_dir, os.getpid()): desc for desc, fn, args in tasks}
        for fut in as_completed(futures):
            try:
                err = fut.result()
            except CancelledError:
                continue
            except BrokenProcessPool:
                err = "its worker process died (killed, or out of memory)"
            if err:
                errors.append(f"{futures[fut]} failed: {err}")
                print(f"error: {errors[-1]}; waiting for the jobs already running", file=sys.stderr, flush=True)
                for f in futures:
                    f.cancel()
    if errors:
        raise RunFailed("; ".join(errors) + " (finished runs and iterations are kept: rerun to resume)")


def _cache(recipe: Recipe, label: str, seed: int, t: int, prompts: int, samples: int) -> Path:
    # named by the draw's size, so a changed setting never reads another size's samples
    return run_dir(recipe, label, seed) / "online" / f"iter_{t}" / f"test_samples_p{prompts}_x{samples}.json"


def _draw_key(recipe: Recipe, rows: list[dict], seed: int) -> dict:
    """What the samples depend on besides the checkpoint: a cache that differs is drawn again."""
    return {"prompt_ids": [r["id"] for r in rows], "eval_seed": seed, "temperature": recipe.eval.temperature,
            "max_new_tokens": recipe.eval.max_new_tokens}


def _cached(path: Path, key: dict):
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["samples"] if saved.get("key") == key else None


def sample_run(recipe: Recipe, label: str, seed: int, prompts: int, samples: int) -> None:
    """Draw and cache `samples` responses per test prompt for every iteration of one run that lacks them. The
    sampling seed is the eval seed's (winrate.sample_test), whatever the method: common random numbers."""
    rows = load_split(recipe.out / "data", "test")[:prompts]
    for t in range(1, recipe.online.iterations + 1):
        path = _cache(recipe, label, seed, t, len(rows), samples)
        draw(recipe, recipe, path.parent / "model", path, _draw_key(recipe, rows, seed), rows, samples, seed)


def draw(recipe: Recipe, build: Recipe, model: Path, path: Path, key: dict, rows: list[dict], samples: int,
         seed: int) -> list[list[str]]:
    """The draw cached at path under key; else `samples` responses per prompt of rows from the checkpoint at model
    (a checkpoint of build), with training seed `seed`'s sampling seed (winrate.sample_test), cached atomically."""
    got = _cached(path, key)
    if got is None:
        policy = load_policy(policy_config(build, model))
        got = winrate.sample_test(policy, rows, dataclasses.replace(recipe.eval, samples_per_prompt=samples),
                                  recipe.online.gen_batch_size, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "samples": got}))
    return got


def _sft_cache(recipe: Recipe, seed: int, prompts: int, samples: int) -> Path:
    return recipe.out / "table" / "sft_samples" / f"seed{seed}_p{prompts}_x{samples}.json"


def _sft_key(recipe: Recipe, rows: list[dict], seed: int) -> dict:
    # the checkpoint relative to the run folder: the cache stays valid however the folder is addressed
    where = build_recipe(recipe, seed).out.relative_to(recipe.out) / "sft"
    return dict(_draw_key(recipe, rows, seed), checkpoint=where.as_posix())


def sample_sft(recipe: Recipe, seed: int, prompts: int, samples: int) -> list[list[str]]:
    """The starting checkpoint of training seed `seed` (its build's SFT) drawn on the test prompts with that seed's
    sampling seed: the same random numbers as every checkpoint the seed's runs trained from it. Cached."""
    rows = load_split(recipe.out / "data", "test")[:prompts]
    b = build_recipe(recipe, seed)
    return draw(recipe, b, b.out / "sft" / "model", _sft_cache(recipe, seed, len(rows), samples),
                _sft_key(recipe, rows, seed), rows, samples, seed)


def exact_utilities(judge, rows: list[dict], responses: list[list[str]], n: int, k: int) -> np.ndarray:
    """(n, k): the exact utility of the first k responses to each of the first n prompts."""
    flat = [y for ys in responses[:n] for y in ys[:k]]
    return np.array(judge.utility([r for r in rows[:n] for _ in range(k)], flat)).reshape(n, k)


def sample_all(recipe: Recipe, rows: list[dict], samples: int, jobs: int = 1, sft: bool = False) -> dict:
    """(label, seed, iteration) -> `samples` responses per prompt of rows (a prefix of the test split); with sft,
    also (SFT_ROW, seed, 0): the checkpoint each seed's runs started from."""
    keys = [(label, seed, t) for label, _ in all_methods(recipe) for seed in recipe.table.seeds
            for t in range(1, recipe.online.iterations + 1)]
    keys += [(SFT_ROW, seed, 0) for seed in recipe.table.seeds] if sft else []

    def get(k):
        label, seed, _ = k
        if label == SFT_ROW:  # a reserved label: no method row has it
            return _cached(_sft_cache(recipe, seed, len(rows), samples), _sft_key(recipe, rows, seed))
        return _cached(_cache(recipe, *k, len(rows), samples), _draw_key(recipe, rows, seed))

    drawn = {k: get(k) for k in keys}
    missing = [k for k, v in drawn.items() if v is None]
    tasks = [(f"sampling the SFT checkpoint of seed {seed}", sample_sft, (recipe, seed, len(rows), samples))
             for label, seed, _ in missing if label == SFT_ROW]
    tasks += [(f"sampling {label} seed {seed}", sample_run, (recipe, label, seed, len(rows), samples))
              for label, seed in dict.fromkeys((label, seed) for label, seed, _ in missing if label != SFT_ROW)]
    execute(tasks, jobs, recipe.out)
    # only the caches just drawn are read again: the others were read above (large files, one per checkpoint)
    return {k: get(k) if v is None else v for k, v in drawn.items()}


def pairings(recipe: Recipe) -> list[tuple[str, str]]:
    """(method_a, method_b) rows: the first method vs each other one, or each other method vs table.versus; then
    the A/A run vs the baseline."""
    labels = [m for m, _ in methods(recipe)]
    if recipe.table.versus:
        out = [(a, recipe.table.versus) for a in labels if a != recipe.table.versus]
    else:
        out = [(labels[0], b) for b in labels[1:]]
    return out + ([(aa_label(recipe), recipe.table.baseline)] if recipe.table.aa else [])


def spent(recipe: Recipe, method: str, t: int) -> tuple[float | None, float | None]:
    """Mean over seeds of the judge labels (and label cost) the method spent in iteration t (None if not recorded)."""
    labels, cost = [], []
    for seed in recipe.table.seeds:
        path = run_dir(recipe, method, seed) / "online" / f"iter_{t}" / "metrics.json"
        m = json.loads(path.read_text()) if path.exists() else {}
        if "labels_this_iteration" in m:
            labels.append(m["labels_this_iteration"])
            cost.append(m.get("label_cost_this_iteration", m["labels_this_iteration"]))
    return (float(np.mean(labels)) if labels else None), (float(np.mean(cost)) if cost else None)


def compare(recipe: Recipe, rows, samples, judge, store) -> list[dict]:
    table = []
    for a, b in pairings(recipe):
        for t in range(1, recipe.online.iterations + 1):
            rates, outs = [], []
            for seed in recipe.table.seeds:
                out = winrate.outcomes(store, judge, rows, samples[(a, seed, t)], samples[(b, seed, t)], seed,
                                       tag=f"table:{a}-vs-{b}")
                valid = [o for o in out if o is not None]
                rates.append(sum(valid) / len(valid))
                outs += valid
            if len(rates) > 1:
                m, lo, hi = paired.paired_interval(rates)
                over = "seeds"
            else:  # one training seed: the only replication left is the test prompts
                m, lo, hi = winrate.mean_ci(outs)
                over = "prompts"
            (la, ca), (lb, cb) = spent(recipe, a, t), spent(recipe, b, t)
            table.append(dict(method_a=a, method_b=b, iteration=t, mean_win_rate=m, ci_low=lo, ci_high=hi,
                              seeds=len(rates), ci_over=over, labels_a=la, labels_b=lb, label_cost_a=ca,
                              label_cost_b=cb, per_seed=rates))
    return table


def markdown(table: list[dict], iterations: int) -> str:
    """One row per (method_a, method_b): win rate ± CI half-width per iteration, then the judge labels each spent
    in the last iteration (label cost in parentheses where it differs from the count)."""
    head = ("| method | vs | " + " | ".join(f"iteration {t}" for t in range(1, iterations + 1))
            + " | judge labels / iteration (method, vs) |")
    lines = [head, "|---" * (iterations + 3) + "|"]

    def fmt(n, c):
        if n is None:
            return "?"
        return f"{n:.0f}" + (f" (cost {c:.0f})" if c is not None and abs(c - n) > 1e-9 else "")

    for a, b in dict.fromkeys((r["method_a"], r["method_b"]) for r in table):
        rows = [r for r in table if (r["method_a"], r["method_b"]) == (a, b)]
        cells = [f"{100 * r['mean_win_rate']:.1f} ± {100 * (r['ci_high'] - r['ci_low']) / 2:.1f}" for r in rows]
        last = rows[-1]
        lines.append(f"| {a} | {b} | " + " | ".join(cells) + f" | {fmt(last['labels_a'], last['label_cost_a'])}, "
                     f"{fmt(last['labels_b'], last['label_cost_b'])} |")
    return "\n".join(lines)


def costs(recipe: Recipe) -> list[dict]:
    """Measured per method (means over seeds and iterations): generation seconds per 10,000 responses, seconds
    of Best-of-N + labelling + selection per iteration, update seconds, judge labels and label cost."""
    out = []
    for label, sel in all_methods(recipe):
        ms = []
        for seed in recipe.table.seeds:
            for t in range(1, recipe.online.iterations + 1):
                path = run_dir(recipe, label, seed) / "online" / f"iter_{t}" / "metrics.json"
                if path.exists():
                    ms.append(json.loads(path.read_text()))
        if not ms:
            continue
        def mean(key, ms=ms):
            vals = [m[key] for m in ms if m.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        gen = [m["generate_s"] / m["generated_responses"] * 10_000 for m in ms if m.get("generated_responses")]
        out.append(dict(method=label, selector=sel.name, generated_per_iteration=mean("generated_responses"),
                        generate_s_per_10k=float(np.mean(gen)) if gen else None,
                        label_and_select_s=mean("transfer_and_label_s"), update_s=mean("update_s"),
                        labels=mean("labels_this_iteration"), label_cost=mean("label_cost_this_iteration")))
    return out


def costs_markdown(rows: list[dict]) -> str:
    f = lambda x, d=1: "?" if x is None else f"{x:.{d}f}"
    lines = ["| method | selector | responses generated / iteration | generation s per 10k responses | "
             "transfer + labels + selection s / iteration | update s / iteration | judge labels / iteration | "
             "label cost / iteration |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['selector']} | {f(r['generated_per_iteration'], 0)} | "
                     f"{f(r['generate_s_per_10k'], 0)} | {f(r['label_and_select_s'])} | {f(r['update_s'])} | "
                     f"{f(r['labels'], 0)} | {f(r['label_cost'], 0)} |")
    return "\n".join(lines)


def plot_arms(recipe: Recipe, method: str, out: Path, prefix: str = "arms_iter") -> list[Path]:
    """Arm usage per block per iteration (the paper's Figure 2): share of seeds that chose each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for seed in recipe.table.seeds:
        path = run_dir(recipe, method, seed) / "arms.csv"
        if path.exists():
            with open(path, newline="") as fh:
                rows += list(csv.DictReader(fh))
    paths = []
    arms = sorted({r["arm"] for r in rows})
    for t in sorted({int(r["iteration"]) for r in rows}):
        it = [r for r in rows if int(r["iteration"]) == t]
        blocks = sorted({int(r["block"]) for r in it})
        fig, ax = plt.subplots(figsize=(7, 3))
        bottom = np.zeros(len(blocks))
        for arm in arms:
            share = np.array([sum(r["arm"] == arm for r in it if int(r["block"]) == b) /
                              max(1, sum(1 for r in it if int(r["block"]) == b)) for b in blocks])
            ax.bar(blocks, share, bottom=bottom, label=arm)
            bottom += share
        ax.set_xlabel("block")
        ax.set_ylabel("share of seeds")
        ax.set_title(f"{method}: arm choice per block, iteration {t}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        p = out / f"{prefix}{t}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def utility_headline(recipe: Recipe, judge, rows: list[dict], samples: dict, out: Path) -> str:
    """paired.csv / .md / .png from the exact utilities of every checkpoint's samples; returns the markdown."""
    n, k = min(recipe.table.utility_prompts, len(rows)), recipe.table.utility_samples
    u = {key: exact_utilities(judge, rows, resp, n, k) for key, resp in samples.items()}
    labels = [label for label, _ in all_methods(recipe)]
    temperature = getattr(judge, "temperature", 0.0)  # none: a noiseless judge
    rows_out = paired.paired_rows(u, recipe.table.baseline, temperature, labels)
    extra = [r for method, base in recipe.table.pairs for r in paired.paired_rows(u, base, temperature, [method])]
    head = paired.header(judge.name, recipe.table.seeds, n, k, temperature)
    md = paired.write(out, rows_out + extra, head)
    paired.plot(rows_out, out / "paired.png", f"{recipe.name}: Δ exact utility vs {recipe.table.baseline}")
    start = {s: v for (label, s, _), v in u.items() if label == SFT_ROW}
    if start:  # how far each checkpoint moved from where its seed started: a method − baseline gap can hide both
        iterations = range(1, recipe.online.iterations + 1)
        u_start = {**u, **{(SFT_ROW, s, t): v for s, v in start.items() for t in iterations}}
        gain = paired.paired_rows(u_start, SFT_ROW, temperature, labels)
        what = (f"Gain over the starting checkpoint ('{SFT_ROW}': the SFT checkpoint each training seed's runs "
                f"started from{', its own build' if recipe.table.vary_build else ''}), sampled with the same seeds.")
        md += "\n\n" + paired.write(out, gain, f"{what} {head}", stem="vs_sft")
    if "facts" in rows[0] and hasattr(judge, "weights"):  # what the utilities are made of, from the same samples
        md += "\n\n" + behaviour(recipe, judge, rows[:n], {key: [ys[:k] for ys in resp[:n]]
                                                              for key, resp in samples.items()}, out)
    return md


def behaviour(recipe: Recipe, judge, rows: list[dict], samples: dict, out: Path) -> str:
    """behaviour.md: per method and iteration, the mean over training seeds of what its samples state (planted
    facts, a rival's fact, invented entities, words; eval.world_report.fact_table under the judge's weights)."""
    cols = ("person", "place", "number", "rival_fact", "invented_per_summary", "words", "oracle_utility")
    lines = [f"What the samples state ({len(rows)} test prompts x {len(next(iter(samples.values()))[0])} samples, "
             f"mean over training seeds {recipe.table.seeds}):", "",
             "| method | iteration | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    start = [(SFT_ROW, 0)] if (SFT_ROW, recipe.table.seeds[0], 0) in samples else []
    for label, t in start + [(label, t) for label, _ in all_methods(recipe)
                             for t in range(1, recipe.online.iterations + 1)]:
        tabs = [world_report.fact_table([r for r, ys in zip(rows, samples[(label, s, t)]) for _ in ys],
                                        [y for ys in samples[(label, s, t)] for y in ys], judge.weights)
                for s in recipe.table.seeds]
        lines.append(f"| {label} | {t} | " + " | ".join(f"{np.mean([x[c] for x in tabs]):.2f}" for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "behaviour.md", text)
    return text


def pairs_report(recipe: Recipe, judge, out: Path) -> str:
    """training_pairs.csv / .md: per (method, seed, iteration), the exact utility of the chosen and rejected
    responses of the pairs the run trained on, read back from its label store (eval/training_pairs.py)."""
    by_id = {r["id"]: r for r in load_split(recipe.out / "data", "train")}  # the online prompts' split
    rows = []
    for label, _ in all_methods(recipe):
        for seed in recipe.table.seeds:
            store = LabelStore(run_dir(recipe, label, seed) / "labels.sqlite")
            try:
                rows += [dict(method=label, seed=seed, iteration=t,
                              **training_pairs.pair_stats(store.scalar_answers(t), by_id, judge.utility))
                         for t in range(1, recipe.online.iterations + 1)]
            finally:
                store.close()
    return training_pairs.write(out, rows, f"What each run trained on, under {judge.name}: per pair (the judge's "
                                           "highest- and lowest-scored labelled response of a prompt), the mean "
                                           "exact utility of the chosen and the rejected response, their gap, and "
                                           "the shares of pairs whose chosen response is truly worse or equal.")


def headline_baseline(recipe: Recipe) -> None:
    """The exact-utility headline pairs every method with table.baseline: it must be one of them."""
    labels = [m for m, _ in methods(recipe)]
    if recipe.table.baseline not in labels:
        raise ConfigError(f"table.baseline '{recipe.table.baseline}' is not a method of the table: the exact-utility "
                          f"headline pairs every method with it ({', '.join(labels)})")


def make_table(recipe: Recipe, force: bool = False, jobs: int | None = None) -> list[dict]:
    t0 = time.time()
    jobs = recipe.table.jobs if jobs is None else jobs
    methods(recipe)  # a wrong method name or option fails before any stage runs
    tc = recipe.table  # its sizes' ranges (>= 1) were checked when the recipe was loaded
    if (recipe.eval.judge or recipe.judge).name == "oracle":  # it knows the utility: before any stage, not after
        headline_baseline(recipe)
    if recipe.table.vary_build:
        run(recipe, until="data", force=force)  # the test prompts every checkpoint is sampled on
        execute([(f"build {b.out}", run, (b, "sources", force)) for b in builds(recipe)],
                min(jobs, len(builds(recipe))), recipe.out)
    else:
        run(recipe, until="sources", force=force)
    for b in builds(recipe):
        verify_shared_inputs(b)  # once: every row starts from them (a row checks only its own iterations)
    seed_everything(recipe.seed)
    judge = build_judge(recipe)
    for b in builds(recipe):  # the go/no-go diagnostic of each build, in its own folder
        scorers = build_scorers(b)
        print(world_report.report(b, scorers), flush=True)
    if jobs > 1:  # the workers build their own; the parent's would only hold (GPU) memory meanwhile
        judge = scorers = None
    eval_judge = build_judge(recipe, recipe.eval.judge)
    exact = knows_utility(eval_judge)  # the synthetic world's oracle knows each summary's utility
    if exact:
        headline_baseline(recipe)
    train_all(recipe, judge, scorers, jobs)
    # one draw serves both tables: the win rates read a prefix of its prompts and of each prompt's samples
    n_draw, k_draw = ((max(tc.n_prompts, tc.utility_prompts), max(recipe.eval.samples_per_prompt, tc.utility_samples))
                      if exact else (tc.n_prompts, recipe.eval.samples_per_prompt))
    drawn_rows = load_split(recipe.out / "data", "test")[:n_draw]
    drawn = sample_all(recipe, drawn_rows, k_draw, jobs, sft=exact)
    out = recipe.out / "table"
    out.mkdir(parents=True, exist_ok=True)
    # the run directory's config.yaml is the last command's recipe; a table folder copied aside keeps its own
    save_resolved(recipe, out / "config.yaml")
    atomic_write_text(out / environment.FILE, json.dumps(environment.current(), indent=1, sort_keys=True))
    headline = utility_headline(recipe, eval_judge, drawn_rows, drawn, out) if exact else None
    if exact:
        headline += "\n\n" + pairs_report(recipe, eval_judge, out)
    test_rows = drawn_rows[: tc.n_prompts]
    per = recipe.eval.samples_per_prompt
    samples = {key: [ys[:per] for ys in resp[: tc.n_prompts]] for key, resp in drawn.items()}
    store = LabelStore(out / "labels.sqlite")
    table = compare(recipe, test_rows, samples, eval_judge, store)
    store.close()
    winrate.write_csv(out / "table.csv", table, TABLE_FIELDS)
    md = markdown(table, recipe.online.iterations)
    ci = ("mean ± 95% t-interval over seeds" if table[0]["ci_over"] == "seeds" else
          "one training seed: win rate over test prompts ± half the 95% percentile-bootstrap interval over prompts "
          "(ties count 0.5)")
    cost_md = costs_markdown(costs(recipe))
    per = f" x {per} paired samples each" if per > 1 else ""
    (out / "table.md").write_text(f"Judge: {eval_judge.name}; seeds {recipe.table.seeds}; {len(test_rows)} test "
                                  f"prompts{per}; win rate of method vs the other in %, {ci}\n\n{md}\n\n"
                                  f"Measured costs (means over seeds and iterations):\n\n{cost_md}\n")
    title = f"vs {recipe.table.versus}" if recipe.table.versus else f"{table[0]['method_a']} vs baselines"
    winrate.plot([dict(r, policy_a=r["method_a"], policy_b=r["method_b"], win_rate=r["mean_win_rate"])
                  for r in table], out / "winrate.png", f"{recipe.name}: {title}")
    if recipe.table.versus:
        for a in dict.fromkeys(r["method_a"] for r in table if r["method_a"] != aa_label(recipe)):
            plot_arms(recipe, a, out, prefix=f"arms_{a}_iter")
    else:
        plot_arms(recipe, table[0]["method_a"], out)
    print(f"\nSampled judge win rates ({eval_judge.name}):\n\n{md}\n\n{cost_md}", flush=True)
    if headline:
        print(f"\n{headline}\n\nheadline: {out / 'paired.md'} ({out / 'paired.csv'}, {out / 'paired.png'}; what the "
              f"samples state: {out / 'behaviour.md'})")
    print(f"\ntable done in {time.time() - t0:.0f}s; outputs in {out}", flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline table", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--force", action="store_true", help="accept a recipe that changed since the run started")
    parser.add_argument("--jobs", type=int, default=None,
                        help="online runs trained (and checkpoints sampled) at once, each in its own process; "
                             "overrides table.jobs")
    args, overrides = parser.parse_known_args(argv)
    configure_threads()

    def body():
        if args.jobs is not None and args.jobs < 1:  # table.jobs' own range; 0 would silently mean 1
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        recipe = load_recipe(args.recipe, overrides)
        check_names(recipe, table=True)
        make_table(recipe, force=args.force, jobs=args.jobs)

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
