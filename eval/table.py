"""`make table RECIPE=...`: TPO against its baselines, Table-1 style (ALGORITHMS.md §1 step 10).

From one shared data + SFT stage (and its source models), every method (TPO = the ucb selector, no transfer,
pure exploit of each source, or the recipe's own list, which may name any selector, e.g. the selection stages
relevance / dual_active / lowrank / shared) runs I online iterations for each of S seeds. Then, per iteration
and seed, the first method's checkpoint meets each other method's on held-out test prompts under the judge
(or, with `table.versus: <label>`, every other method meets that one, e.g. no_transfer).
The win rate per (pair, iteration) is the mean over seeds with a t-interval over seeds (training seeds are
the independent unit here, unlike a single run's eval where prompts are); with a single seed the interval is
over test prompts instead (normal approximation), and the table says so.
Each row also states the judge labels (and label cost) each method spent in that iteration, so a comparison
is read at equal label budget, and table.md ends with each method's measured costs per iteration.

Writes runs/<name>/table/: table.csv, table.md, winrate.png, arms_iter<t>.png (arms_<method>_iter<t>.png with
versus), and per run runs/<name>/methods/<method>/seed<s>/ (checkpoints, labels.sqlite, arms.csv).
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
from pipeline import distributed
from pipeline.config import ConfigError, Recipe, SelectorConfig, load_recipe
from pipeline.labels import LabelStore
from pipeline.runner import build_judge, build_scorers, configure_threads, policy_config, run, seed_everything
from pipeline.transfer import arm_names, check_selector

TABLE_FIELDS = ["method_a", "method_b", "iteration", "mean_win_rate", "ci_low", "ci_high", "seeds", "ci_over",
                "labels_a", "labels_b", "label_cost_a", "label_cost_b"]


def methods(recipe: Recipe) -> list[tuple[str, SelectorConfig]]:
    """The table's rows: the recipe's list, or TPO + no transfer + pure exploit of each source."""
    if recipe.table.methods:
        out = []
        for i, m in enumerate(recipe.table.methods):
            if not isinstance(m, dict) or "label" not in m or not isinstance(m.get("selector"), dict):
                raise ConfigError(f"each table.methods entry needs 'label' and 'selector: {{name, params}}', got {m}")
            sel = m["selector"]
            cfg = SelectorConfig(name=sel.get("name", "none"), params=sel.get("params") or {})
            try:
                check_selector(cfg.name, cfg.params)
            except ValueError as e:
                raise ConfigError(f"table.methods[{i}] ({m['label']}): {e}") from None
            out.append((str(m["label"]), cfg))
    else:
        ucb_params = recipe.online.selector.params if recipe.online.selector.name == "ucb" else {}
        out = ([("tpo", SelectorConfig("ucb", dict(ucb_params))), ("no_transfer", SelectorConfig("none", {}))]
               + [(f"exploit_{a}", SelectorConfig("fixed", {"arm": a})) for a in arm_names(recipe.online.sources)])
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"table.methods labels repeat: {labels}")
    if recipe.table.versus and recipe.table.versus not in labels:
        raise ConfigError(f"table.versus '{recipe.table.versus}' is not a method of the table ({', '.join(labels)})")
    return out


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
    """eval.samples_per_prompt samples per test prompt for every (method, seed, iteration), cached on disk."""
    from pipeline.models import load_policy

    out = {}
    name = "test_samples.json" if recipe.eval.samples_per_prompt == 1 else \
        f"test_samples_x{recipe.eval.samples_per_prompt}.json"
    for label in labels:
        for seed in recipe.table.seeds:
            for t in range(1, recipe.online.iterations + 1):
                cache = run_dir(recipe, label, seed) / "online" / f"iter_{t}" / name
                if cache.exists():  # an older run's cache holds one string per prompt
                    out[(label, seed, t)] = [[y] if isinstance(y, str) else y for y in json.loads(cache.read_text())]
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


def pairings(recipe: Recipe) -> list[tuple[str, str]]:
    """(method_a, method_b) rows: the first method vs each other one, or each other method vs table.versus."""
    labels = [m for m, _ in methods(recipe)]
    if recipe.table.versus:
        return [(a, recipe.table.versus) for a in labels if a != recipe.table.versus]
    return [(labels[0], b) for b in labels[1:]]


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
                m, lo, hi = t_interval(rates)
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
    for label, sel in methods(recipe):
        ms = []
        for seed in recipe.table.seeds:
            for t in range(1, recipe.online.iterations + 1):
                path = run_dir(recipe, label, seed) / "online" / f"iter_{t}" / "metrics.json"
                if path.exists():
                    ms.append(json.loads(path.read_text()))
        if not ms:
            continue
        mean = lambda k: float(np.mean([m[k] for m in ms if m.get(k) is not None])) if any(m.get(k) is not None for m in ms) else None
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


def make_table(recipe: Recipe, force: bool = False) -> list[dict]:
    t0 = time.time()
    methods(recipe)  # a wrong method name or option fails before any stage runs
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
    ci = ("mean ± 95% t-interval over seeds" if table[0]["ci_over"] == "seeds" else
          "one training seed: win rate over test prompts ± 95% normal interval over prompts (ties count 0.5)")
    cost_md = costs_markdown(costs(recipe))
    per = recipe.eval.samples_per_prompt
    per = f" x {per} paired samples each" if per > 1 else ""
    (out / "table.md").write_text(f"Judge: {eval_judge.name}; seeds {recipe.table.seeds}; {len(test_rows)} test "
                                  f"prompts{per}; win rate of method vs the other in %, {ci}\n\n{md}\n\n"
                                  f"Measured costs (means over seeds and iterations):\n\n{cost_md}\n")
    title = f"vs {recipe.table.versus}" if recipe.table.versus else f"{table[0]['method_a']} vs baselines"
    winrate.plot([dict(r, policy_a=r["method_a"], policy_b=r["method_b"], win_rate=r["mean_win_rate"])
                  for r in table], out / "winrate.png", f"{recipe.name}: {title}")
    if recipe.table.versus:
        for a in dict.fromkeys(r["method_a"] for r in table):
            plot_arms(recipe, a, out, prefix=f"arms_{a}_iter")
    else:
        plot_arms(recipe, table[0]["method_a"], out)
    print(f"\n{md}\n\n{cost_md}\n\ntable done in {time.time() - t0:.0f}s; outputs in {out}", flush=True)
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
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
