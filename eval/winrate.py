"""Head-to-head win rates between policies on held-out prompts, under a judge, over several seeds.

Per seed each policy samples `eval.samples_per_prompt` responses per test prompt (default one); a scalar judge
scores both (a > b wins, equal scores count 0.5), a pairwise judge is asked both orders (disagreement = 0.5,
failures dropped and counted). With several samples, the j-th of a meets the j-th of b and the prompt's outcome
is their mean: the per-seed noise of sampling shrinks while prompts stay the independent unit. Per-seed rows
carry a 95% percentile-bootstrap CI over prompts; the summary pools seeds by first averaging each prompt's outcomes
over seeds (seeds share prompts, so prompts are the independent unit).

The interval is a percentile bootstrap (BOOTSTRAP resamples of the prompts, a fixed seed so that a rerun prints
the same table) rather than mean ± 1.96 s/√n: that normal approximation leaves [0, 1] near the edges (an oracle
run printed [-8.0, 24.7] %), while a bootstrap interval lies between the smallest and largest outcome. Wilson's
interval would need 0/1 outcomes, and a prompt's outcome here is a mean (ties are 0.5).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.labels import LabelStore

FIELDS = ["policy_a", "policy_b", "iteration", "seed", "n_prompts", "win_rate", "ci_low", "ci_high"]
BOOTSTRAP = 4000


def mean_ci(x) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of outcomes in [0, 1] (NaN bounds below two outcomes)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    means = x[np.random.default_rng(0).integers(0, len(x), (BOOTSTRAP, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return m, float(lo), float(hi)


def sample_test(policy, rows: list[dict], ev, batch_size: int, seed: int) -> list[list[str]]:
    """ev.samples_per_prompt responses per test prompt. The sampling seed depends on the eval seed alone, so every
    policy shares random numbers: a paired comparison in which identical policies give identical samples (ties)."""
    if ev.samples_per_prompt < 1:
        raise ValueError(f"eval.samples_per_prompt must be >= 1, got {ev.samples_per_prompt}")
    return policy.sample([r["document"] for r in rows], ev.samples_per_prompt, temperature=ev.temperature,
                         max_new_tokens=ev.max_new_tokens, batch_size=batch_size, seed=10_000 + seed)


def outcomes(store: LabelStore, judge, rows, a: list[list[str]], b: list[list[str]], seed: int,
             tag: str = "eval") -> list:
    """Per-prompt outcome of a vs b in [0, 1] (the mean over paired samples whose judging succeeded), or None
    where the judge failed on every pair of that prompt."""
    pairs = [(i, x, y) for i, (xs, ys) in enumerate(zip(a, b)) for x, y in zip(xs, ys)]
    flat_rows, xa, yb = [rows[i] for i, _, _ in pairs], [x for _, x, _ in pairs], [y for _, _, y in pairs]
    if judge.kind == "scalar":
        sa = store.scalar(judge, flat_rows, xa, tag, seed)
        sb = store.scalar(judge, flat_rows, yb, tag, seed)
        flat = [None if x is None or y is None else (1.0 if x > y else 0.5 if x == y else 0.0) for x, y in zip(sa, sb)]
    else:
        flat = store.pairwise(judge, flat_rows, xa, yb, tag, seed)
    per_prompt: list[list[float]] = [[] for _ in rows]
    for (i, _, _), o in zip(pairs, flat):
        if o is not None:
            per_prompt[i].append(o)
    return [sum(v) / len(v) if v else None for v in per_prompt]


def head_to_head(name_a: str, name_b: str, iteration, per_seed: dict[int, list]) -> tuple[list[dict], dict]:
    """per_seed: seed -> per-prompt outcomes (same prompts for every seed)."""
    rows = []
    for seed, out in per_seed.items():
        valid = [o for o in out if o is not None]
        m, lo, hi = mean_ci(valid)
        rows.append(dict(policy_a=name_a, policy_b=name_b, iteration=iteration, seed=seed, n_prompts=len(valid),
                         win_rate=m, ci_low=lo, ci_high=hi))
    per_prompt = []
    for i in range(len(next(iter(per_seed.values())))):
        vals = [out[i] for out in per_seed.values() if out[i] is not None]
        if vals:
            per_prompt.append(sum(vals) / len(vals))
    m, lo, hi = mean_ci(per_prompt)
    failures = sum(o is None for out in per_seed.values() for o in out)
    summary = dict(policy_a=name_a, policy_b=name_b, iteration=iteration, seeds=len(per_seed),
                   n_prompts=len(per_prompt), win_rate=m, ci_low=lo, ci_high=hi, judge_failures=failures)
    return rows, summary


def write_csv(path: Path, rows: list[dict], fields=FIELDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def markdown(summaries: list[dict]) -> str:
    lines = ["| policy A | policy B | iteration | win rate A vs B (%) | 95% CI | prompts | seeds |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['policy_a']} | {s['policy_b']} | {s['iteration']} | {100 * s['win_rate']:.1f} | "
                     f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] | {s['n_prompts']} | {s['seeds']} |")
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups: dict[tuple, list] = {}
    for s in summaries:
        groups.setdefault((s["policy_a"].split("@")[0], s["policy_b"]), []).append(s)
    for (a, b), ss in groups.items():
        ss = sorted(ss, key=lambda s: int(s["iteration"]))
        x = [int(s["iteration"]) for s in ss]
        y = [100 * s["win_rate"] for s in ss]
        err = [[100 * (s["win_rate"] - s["ci_low"]) for s in ss], [100 * (s["ci_high"] - s["win_rate"]) for s in ss]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{a} vs {b}")
    ax.axhline(50, color="grey", ls="--", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("win rate (%)")
    ax.set_xticks(sorted({int(s["iteration"]) for s in summaries}))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
