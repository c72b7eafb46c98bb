"""The table's headline when the judge knows each summary's exact utility: paired utility differences.

Every checkpoint of every (method, training seed, iteration) is sampled on the same held-out prompts with the
same sampling seed, so a method and the baseline are compared on common random numbers. Per training seed s:
Δu_s = mean utility of the method's samples − the baseline's (same seed s), and the Bradley–Terry expected win
rate mean σ((u_method − u_baseline)/T) over paired (prompt, sample) items. The interval is a Student-t one over
training seeds (n − 1 df): the seeds are the independent replications of training; prompts and samples are
shared by every checkpoint and only shrink the noise within a seed.

The A/A row `aa:<baseline>` is the baseline trained again with other training seeds, paired with the baseline:
its interval is what training-seed noise alone produces, the yardstick for every other row.

numpy/scipy only, so the maths is testable without torch or the pipeline.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import special, stats

FIELDS = ["method", "baseline", "iteration", "seeds", "mean_diff", "ci_low", "ci_high", "expected_win_rate"]
# paired_per_seed.csv: what each row's interval is computed from, so a later run with more seeds can be pooled with
# this one (python -m eval.pool), and a reader can see which seed (or build) moved a mean
SEED_FIELDS = ["method", "baseline", "iteration", "seed", "diff", "utility", "baseline_utility", "expected_win_rate"]
AA_PREFIX = "aa:"


def paired_interval(diffs) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of per-seed differences with a 95% Student-t interval (nan bounds for one seed)."""
    x = np.asarray(diffs, dtype=float)
    if x.size == 0:
        raise ValueError("paired_interval needs at least one difference")
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def expected_win_rate(u_a, u_b, temperature: float) -> float:
    """Bradley–Terry expected win rate of a over b, mean σ((u_a − u_b)/T) over paired items; T = 0 is the
    noiseless judge (a > b wins, ties count 0.5)."""
    d = np.asarray(u_a, dtype=float) - np.asarray(u_b, dtype=float)
    if d.size == 0:
        raise ValueError("expected_win_rate needs at least one paired item")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return float(np.mean((d > 0) + 0.5 * (d == 0)))
    return float(np.mean(special.expit(d / temperature)))


def paired_rows(utilities: dict, baseline: str, temperature: float, methods: list[str] | None = None) -> list[dict]:
    """utilities: (method, seed, iteration) -> (prompts, samples) exact utilities, the same prompts and sampling
    seeds for every checkpoint. One row per (method, iteration) for every method but the baseline, in the order of
    `methods` (default: first appearance in utilities). Seeds missing on either side are left out of that row."""
    order = methods or list(dict.fromkeys(m for m, _, _ in utilities))
    iterations = sorted({t for _, _, t in utilities})
    rows = []
    for method in order:
        if method == baseline:
            continue
        for t in iterations:
            diffs, wins, per_seed = [], [], []
            for seed in sorted({s for m, s, i in utilities if m == method and i == t}):
                base = utilities.get((baseline, seed, t))
                if base is None:
                    continue
                a, b = np.asarray(utilities[(method, seed, t)], float), np.asarray(base, float)
                if a.shape != b.shape:
                    raise ValueError(f"{method} seed {seed} iteration {t}: utilities of shape {a.shape} cannot "
                                     f"be paired with {baseline}'s {b.shape}")
                diffs.append(float(a.mean() - b.mean()))
                wins.append(expected_win_rate(a, b, temperature))
                per_seed.append(dict(seed=seed, diff=diffs[-1], utility=float(a.mean()),
                                     baseline_utility=float(b.mean()), expected_win_rate=wins[-1]))
            if not diffs:
                continue
            m, lo, hi = paired_interval(diffs)
            rows.append(dict(method=method, baseline=baseline, iteration=t, seeds=len(diffs), mean_diff=m,
                             ci_low=lo, ci_high=hi, expected_win_rate=float(np.mean(wins)), per_seed=per_seed))
    return rows


def write_csv(path: Path, rows: list[dict], fields: list[str] = FIELDS) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _signed(x: float) -> str:
    # a typographic minus, so "+0.12" and "−0.03" line up in the rendered table
    return "–" if math.isnan(x) else f"{x:+.2f}".replace("-", "−")


def cell(r: dict) -> str:
    return (f"Δu {_signed(r['mean_diff'])} [{_signed(r['ci_low'])}, {_signed(r['ci_high'])}] · "
            f"{100 * r['expected_win_rate']:.1f}%")


def header(judge: str, seeds: list[int], prompts: int, samples: int, temperature: float) -> str:
    one = " (one seed: no interval)" if len(seeds) < 2 else ""
    return (f"Exact utility under {judge}: Δu = mean utility of method − baseline, paired per training seed "
            f"(seeds {list(seeds)}); {prompts} test prompts × {samples} samples per checkpoint, the same sampling "
            f"seeds for every checkpoint; [95% t-interval over training seeds{one}] · Bradley–Terry expected win "
            f"rate mean σ(Δu/T), T = {temperature:g}, mean over seeds.")


def markdown(rows: list[dict]) -> str:
    """Table 1 layout: one line per (method, baseline), one column per iteration."""
    iterations = sorted({r["iteration"] for r in rows})
    lines = ["| method | vs | " + " | ".join(f"iteration {t}" for t in iterations) + " |",
             "|---" * (len(iterations) + 2) + "|"]
    for method, base in dict.fromkeys((r["method"], r["baseline"]) for r in rows):
        by_t = {r["iteration"]: r for r in rows if (r["method"], r["baseline"]) == (method, base)}
        lines.append(f"| {method} | {base} | " + " | ".join(cell(by_t[t]) if t in by_t else "?" for t in iterations)
                     + " |")
    return "\n".join(lines)


def write(out: Path, rows: list[dict], head: str, stem: str = "paired") -> str:
    """<stem>.csv, <stem>_per_seed.csv and <stem>.md under out; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", rows)
    write_csv(out / f"{stem}_per_seed.csv", [dict(s, method=r["method"], baseline=r["baseline"],
                                                  iteration=r["iteration"]) for r in rows for s in r["per_seed"]],
              SEED_FIELDS)
    md = f"{head}\n\n{markdown(rows)}"
    (out / f"{stem}.md").write_text(md + "\n")
    return md


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["iteration"])
        x = np.array([r["iteration"] for r in rs], float) + 0.06 * (i - (len(methods) - 1) / 2)  # unstack bars
        y = np.array([r["mean_diff"] for r in rs])
        err = np.nan_to_num([[m - r["ci_low"] for m, r in zip(y, rs)], [r["ci_high"] - m for m, r in zip(y, rs)]])
        ls = ":" if method.startswith(AA_PREFIX) else "-"  # the noise floor, not a method
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method, ls=ls)
    ax.axhline(0, color="grey", ls="--", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"Δ utility vs {rows[0]['baseline']}" if rows else "Δ utility")
    ax.set_xticks(sorted({r["iteration"] for r in rows}))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
