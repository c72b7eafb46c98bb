"""`make table RECIPE=...`: TPO against its baselines, Table-1 style (ALGORITHMS.md §1 step 10).

From one shared data + SFT stage (and its source models), every method (TPO = the ucb selector, no transfer,
pure exploit of each source, or the recipe's own list) runs I online iterations for each of S seeds. Then,
per iteration and seed, TPO's checkpoint meets each baseline's on held-out test prompts under the judge.
The win rate per (baseline, iteration) is the mean over seeds with a t-interval over seeds (training seeds
are the independent unit here, unlike a single run's eval where prompts are).

Writes runs/<name>/table/: table.csv, table.md, winrate.png, arms_iter<t>.png, and per run
runs/<name>/methods/<method>/seed<s>/ (checkpoints, labels.sqlite, arms.csv).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from eval import winrate, world_report
from pipeline import data as data_stage
from pipeline.config import ConfigError, Recipe, SelectorConfig, load_recipe
from pipeline.labels import LabelStore
from pipeline.runner import build_judge, build_scorers, configure_threads, policy_config, run, seed_everything
from pipeline.transfer import arm_names

TABLE_FIELDS = ["method_a", "method_b", "iteration", "mean_win_rate", "ci_low", "ci_high", "seeds"]


def methods(recipe: Recipe) -> list[tuple[str, SelectorConfig]]:
    """The table's rows: the recipe's list, or TPO + no transfer + pure exploit of each source."""
    if recipe.table.methods:
        out = []
        for m in recipe.table.methods:
            if "label" not in m or "selector" not in m:
                raise ConfigError(f"each table.methods entry needs 'label' and 'selector', got {m}")
            sel = m["selector"]
            out.append((m["label"], SelectorConfig(name=sel.get("name", "none"), params=sel.get("params", {}))))
        return out
    ucb_params = recipe.online.selector.params if recipe.online.selector.name == "ucb" else {}
    arms = arm_names(recipe.online.sources)
    return ([("tpo", SelectorConfig("ucb", dict(ucb_params))), ("no_transfer", SelectorConfig("none", {}))]
            + [(f"exploit_{a}", SelectorConfig("fixed", {"arm": a})) for a in arms])


def run_dir(recipe: Recipe, method: str, seed: int) -> Path:
    return recipe.out / "methods" / method / f"seed{seed}"


def train_all(recipe: Recipe, rows: list[dict], judge, scorers: dict) -> None:
    from pipeline.online import run_online

    for label, selector in methods(recipe):
        for seed in recipe.table.seeds:
            out = run_dir(recipe, label, seed)
            if (out / "online" / "DONE").exists():
                continue
            print(f"\n== {label}, seed {seed} ==", flush=True)
            seed_everything(seed)
            cfg = dataclasses.replace(recipe.online, seed=seed, selector=selector)
            used = scorers if selector.name != "none" else {}
            store = LabelStore(out / "labels.sqlite")
            try:
                run_online(recipe.policy, recipe.out / "sft" / "model", cfg, rows, judge, store, used, out / "online")
            finally:
                store.close()
            (out / "online" / "DONE").touch()


def sample_all(recipe: Recipe, labels: list[str], rows: list[dict]) -> dict:
    """One sample per test prompt for every (method, seed, iteration), cached on disk."""
    from pipeline.models import load_policy

    out = {}
    for label in labels:
        for seed in recipe.table.seeds:
            for t in range(1, recipe.online.iterations + 1):
                cache = run_dir(recipe, label, seed) / "online" / f"iter_{t}" / "test_samples.json"
                if cache.exists():
                    out[(label, seed, t)] = json.loads(cache.read_text())
                    continue
                policy = load_policy(policy_config(recipe, cache.parent / "model"))
                resp = winrate.sample_test(policy, rows, recipe.eval, recipe.online.gen_batch_size, seed)
                cache.write_text(json.dumps(resp))
                out[(label, seed, t)] = resp
    return out


def t_interval(x: list[float]) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


def compare(recipe: Recipe, rows, samples, judge, store) -> list[dict]:
    labels = [m for m, _ in methods(recipe)]
    a, baselines = labels[0], labels[1:]
    table = []
    for b in baselines:
        for t in range(1, recipe.online.iterations + 1):
            rates = []
            for seed in recipe.table.seeds:
                out = winrate.outcomes(store, judge, rows, samples[(a, seed, t)], samples[(b, seed, t)], seed,
                                       tag=f"table:{a}-vs-{b}")
                valid = [o for o in out if o is not None]
                rates.append(sum(valid) / len(valid))
            m, lo, hi = t_interval(rates)
            table.append(dict(method_a=a, method_b=b, iteration=t, mean_win_rate=m, ci_low=lo, ci_high=hi,
                              seeds=len(rates), per_seed=rates))
    return table


def markdown(table: list[dict], iterations: int) -> str:
    head = "| " + table[0]["method_a"] + " vs | " + " | ".join(f"iteration {t}" for t in range(1, iterations + 1)) + " |"
    lines = [head, "|---" * (iterations + 1) + "|"]
    for b in dict.fromkeys(r["method_b"] for r in table):
        cells = []
        for r in (r for r in table if r["method_b"] == b):
            half = (r["ci_high"] - r["ci_low"]) / 2
            cells.append(f"{100 * r['mean_win_rate']:.1f} ± {100 * half:.1f}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_arms(recipe: Recipe, method: str, out: Path) -> list[Path]:
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
        p = out / f"arms_iter{t}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def make_table(recipe: Recipe, force: bool = False) -> list[dict]:
    t0 = time.time()
    run(recipe, until="sources", force=force)
    seed_everything(recipe.seed)
    judge = build_judge(recipe)
    scorers = build_scorers(recipe)
    print(world_report.report(recipe, scorers), flush=True)
    train_rows = data_stage.load_split(recipe.out / "data", "train")
    train_all(recipe, train_rows, judge, scorers)
    test_rows = data_stage.load_split(recipe.out / "data", "test")[: recipe.table.n_prompts]
    eval_judge = build_judge(recipe, recipe.eval.judge)
    samples = sample_all(recipe, [m for m, _ in methods(recipe)], test_rows)
    out = recipe.out / "table"
    out.mkdir(parents=True, exist_ok=True)
    store = LabelStore(out / "labels.sqlite")
    table = compare(recipe, test_rows, samples, eval_judge, store)
    store.close()
    winrate.write_csv(out / "table.csv", table, TABLE_FIELDS)
    md = markdown(table, recipe.online.iterations)
    (out / "table.md").write_text(f"Judge: {eval_judge.name}; seeds {recipe.table.seeds}; "
                                  f"{len(test_rows)} test prompts; win rate of {table[0]['method_a']} in %, "
                                  f"mean ± 95% t-interval over seeds\n\n{md}\n")
    winrate.plot([dict(r, policy_a=r["method_a"], policy_b=r["method_b"], win_rate=r["mean_win_rate"])
                  for r in table], out / "winrate.png", f"{recipe.name}: {table[0]['method_a']} vs baselines")
    plot_arms(recipe, table[0]["method_a"], out)
    print(f"\n{md}\n\ntable done in {time.time() - t0:.0f}s; outputs in {out}", flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--force", action="store_true", help="accept a recipe that changed since the run started")
    args, overrides = parser.parse_known_args(argv)
    configure_threads()
    from pipeline.__main__ import check_names
    from pipeline.data import DataError
    from pipeline.models import ModelError
    from pipeline.online import OnlineStopped
    from reward_sources import RegistryError

    try:
        recipe = load_recipe(args.recipe, overrides)
        check_names(recipe)
        make_table(recipe, force=args.force)
    except (ConfigError, DataError, ModelError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OnlineStopped, FloatingPointError) as e:  # finished runs and iterations are kept for a rerun
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
