"""What each selection stage did inside a table's runs: `python -m eval.stage_report RUN_DIR` (make stages-table runs it
after the table) writes RUN_DIR/table/stages.md and stages.png; `--table NAME` reads a table folder copied aside
(RUN_DIR/NAME) instead, by the recipe it was made with (NAME/config.yaml), because every later table command on
the same run directory rewrites RUN_DIR/config.yaml and RUN_DIR/table/.

It reads what the selectors recorded per iteration (`selector` in methods/<label>/seed<s>/online/iter_<t>/
metrics.json), the sources' measured agreement with the judge's utility (world_report.json, or each build's
builds/seed<s>/world_report.json when every seed has its own build) and the paired utility rows (table/paired.csv),
so it needs no model and no torch:
- relevance: ν̂ per source (mean and range over seeds) next to each source's agreement with the oracle, and the
  share of the scoring budget each source got; does ν̂ rank the sources as their agreement does, on average and
  seed by seed?
- dual_active (every variant): queries and cost per teacher, and the final θ̂'s agreement with the judge's exact
  utility on the candidate pairs no teacher was asked ("—" where the records lack it: older runs, real data).
- lowrank (every variant): annotators per persona and labels.
- shared (every variant): the proxy's agreement with the judge on held-out judge pairs (cross-fitted).
- every stage against its own baseline(s): the paired rows of table.pairs.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

STAGES = ("relevance", "dual_active", "lowrank", "shared")


class ReportError(ValueError):
    pass


def table_recipe(run_dir: Path, table: str = "table") -> dict:
    """The recipe the table folder was made with, or the run directory's (a table made before tables saved their
    own)."""
    saved = run_dir / table / "config.yaml"
    try:
        return yaml.safe_load((saved if saved.exists() else run_dir / "config.yaml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{run_dir} has no config.yaml: not a run directory") from None


def table_scope(config: dict) -> tuple[set[int] | None, int | None]:
    """The training seeds and the last iteration the table covers (None: not recorded, read every one): a run that
    went on after the table folder was made must not add to it."""
    seeds = (config.get("table") or {}).get("seeds")
    return (set(seeds) if seeds is not None else None), (config.get("online") or {}).get("iterations")


def stage_methods(config: dict) -> dict[str, list[str]]:
    """Selector name -> the table's method labels that use it (a stage and its baseline variants)."""
    out: dict[str, list[str]] = {}
    for m in (config.get("table") or {}).get("methods") or []:
        name = (m.get("selector") or {}).get("name")
        if name in STAGES:
            out.setdefault(name, []).append(m["label"])
    return out


def selector_records(run_dir: Path, label: str, scope=(None, None)) -> dict[int, dict[int, dict]]:
    """Iteration -> training seed -> the selector's record, for every seed that finished the iteration, within
    `scope` (table_scope's seeds and last iteration)."""
    seeds, last = scope
    out: dict[int, dict[int, dict]] = {}
    for path in sorted((run_dir / "methods" / label).glob("seed*/online/iter_*/metrics.json")):
        t, seed = int(path.parent.name.split("_")[1]), int(path.parents[2].name.removeprefix("seed"))
        if (seeds is None or seed in seeds) and (last is None or t <= last):
            out.setdefault(t, {})[seed] = json.loads(path.read_text(encoding="utf-8")).get("selector") or {}
    return dict(sorted(out.items()))


def selector_info(run_dir: Path, label: str, scope=(None, None)) -> dict[int, list[dict]]:
    """Iteration -> the selector's record of every seed that finished it."""
    return {t: [by_seed[s] for s in sorted(by_seed)]
            for t, by_seed in selector_records(run_dir, label, scope).items()}


def source_agreement(run_dir: Path) -> dict[int | None, dict[str, float]]:
    """Each source's agreement with the oracle, as the world report measured it: per training seed when the table
    gave each seed its own build (builds/seed<s>/world_report.json, table.vary_build), else one report for every
    seed (key None). Empty when no report was written."""
    def read(path: Path) -> dict[str, float]:
        agreement = json.loads(path.read_text(encoding="utf-8")).get("agreement", {})
        return {k: float(v) for k, v in agreement.items() if k != "n_pairs"}

    per_build = {int(p.parent.name.removeprefix("seed")): read(p)
                 for p in sorted((run_dir / "builds").glob("seed*/world_report.json"))}
    if per_build:
        return per_build
    path = run_dir / "world_report.json"
    return {None: read(path)} if path.exists() else {}


def _mean_range(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():+.3f} [{v.min():+.3f}, {v.max():+.3f}]" if len(v) else "n/a"


def _per_key(records: list[dict], field: str) -> dict[str, list[float]]:
    keys: dict[str, list[float]] = {}
    for r in records:
        for k, v in (r.get(field) or {}).items():
            keys.setdefault(k, []).append(float(v))
    return keys


def relevance_section(run_dir: Path, labels: list[str], agreement: dict, scope=(None, None)
                      ) -> tuple[list[str], dict]:
    """`agreement` is `source_agreement`'s: per training seed (one build per seed), or one dict for every seed."""
    lines, plot = [], {}
    for label in labels:
        for t, by_seed in selector_records(run_dir, label, scope).items():
            records = [by_seed[s] for s in sorted(by_seed)]
            nu, alloc = _per_key(records, "nu"), _per_key(records, "allocation")
            if not nu:
                continue
            # the agreement each seed's policy met: its own build's report, or the run's one report
            seen = {s: agreement.get(s, agreement.get(None)) for s in by_seed}
            seen = {s: a for s, a in seen.items() if a}
            agree = {m: [a[m] for a in seen.values() if m in a] for m in nu}
            lines += [f"**{label}, iteration {t}** ({len(records)} seeds)", "",
                      "| source | ν̂ mean [min, max over seeds] | scoring-budget share | agreement with the oracle |",
                      "|---|---|---|---|"]
            for m in nu:
                a = agree.get(m) or []
                shown = "n/a" if not a else f"{a[0]:.3f}" if len(set(a)) == 1 else (
                    f"{np.mean(a):.3f} [{min(a):.3f}, {max(a):.3f}] over builds")
                lines.append(f"| {m} | {_mean_range(nu[m])} | {np.mean(alloc.get(m, [np.nan])):.2f} | {shown} |")
            mean_agree = {m: float(np.mean(a)) for m, a in agree.items() if a}
            by_nu = sorted(nu, key=lambda m: -np.mean(nu[m]))
            by_agree = sorted(mean_agree, key=lambda m: -mean_agree[m])
            lines += ["", f"ν̂ ranks {' > '.join(by_nu)}; agreement ranks {' > '.join(by_agree)}"
                      + (" (the same order)." if by_nu == by_agree else " (a different order).")]
            if len(seen) > 1:  # ranked seed by seed, each against the agreement its own policy met
                same, orders = 0, []
                for s, a in sorted(seen.items()):
                    own_nu = by_seed[s].get("nu") or {}
                    order_nu = sorted(own_nu, key=lambda m: -own_nu[m])
                    same += order_nu == sorted([m for m in own_nu if m in a], key=lambda m: -a[m])
                    orders.append(f"seed {s}: {' > '.join(order_nu)}")
                lines.append(f"Seed by seed, ν̂ ranks the sources as that seed's agreement does in {same} of "
                             f"{len(seen)} ({'; '.join(orders)}).")
            lines.append("")
            plot[(label, t)] = {m: float(np.mean(v)) for m, v in nu.items()}
    return lines, plot


def teacher_section(run_dir: Path, labels: list[str], scope=(None, None)) -> tuple[list[str], dict, dict]:
    lines = ["| method | iteration | seeds | queries per teacher (mean over seeds) | cost per teacher "
             "| cost / budget | held-out pairs | held-out agreement, mean [min, max] |", "|" + "---|" * 8]
    plot, agreement = {}, {}
    for label in labels:
        for t, records in sorted(selector_info(run_dir, label, scope).items()):
            q, c = _per_key(records, "queries"), _per_key(records, "cost_per_teacher")
            spent = np.mean([r.get("cost", np.nan) for r in records])
            budget = np.mean([r.get("budget", np.nan) for r in records])
            # None: no planted facts, or every pair asked; absent: a run from before it was measured
            agree = [r["heldout_agreement"] for r in records if r.get("heldout_agreement") is not None]
            pairs = [r["heldout_pairs"] for r in records if r.get("heldout_agreement") is not None]
            heldout = "— | —"
            if agree:
                some = f" ({len(agree)} of {len(records)} seeds)" if len(agree) < len(records) else ""
                heldout = f"{np.mean(pairs):.0f} | {_mean_range(agree)}{some}"
            lines.append(f"| {label} | {t} | {len(records)} | "
                         + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in q.items()) + " | "
                         + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in c.items())
                         + f" | {spent:.1f} / {budget:.1f} | {heldout} |")
            plot[(label, t)] = {k: float(np.mean(v)) for k, v in q.items()}
            agreement[(label, t)] = float(np.mean(agree)) if agree else None
    return lines, plot, agreement


def persona_section(run_dir: Path, labels: list[str], scope=(None, None)) -> list[str]:
    lines = ["| method | iteration | seeds | annotators per persona (mean over seeds) | labels | pooled |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        for t, records in sorted(selector_info(run_dir, label, scope).items()):
            p = _per_key(records, "personas")
            lines.append(f"| {label} | {t} | {len(records)} | "
                         + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in p.items())
                         + f" | {np.mean([r.get('labels', np.nan) for r in records]):.0f} | "
                         + f"{records[0].get('pooled', False)} |")
    return lines


def shared_section(run_dir: Path, labels: list[str], scope=(None, None)) -> tuple[list[str], dict]:
    lines = ["| method | iteration | seeds | judge pairs | held-out proxy–judge agreement, mean [min, max] |",
             "|---|---|---|---|---|"]
    plot = {}
    for label in labels:
        for t, records in sorted(selector_info(run_dir, label, scope).items()):
            agree = [r["heldout_proxy_judge_agreement"] for r in records if "heldout_proxy_judge_agreement" in r]
            pairs = np.mean([r.get("judge_pairs", np.nan) for r in records])
            lines.append(f"| {label} | {t} | {len(records)} | {pairs:.0f} | {_mean_range(agree)} |")
            plot[(label, t)] = agree
    return lines, plot


def paired_rows(run_dir: Path, stage_labels: set[str], table: str = "table") -> list[dict]:
    path = run_dir / table / "paired.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["method"] in stage_labels or r["baseline"] in stage_labels]


def report(run_dir: Path, table: str = "table") -> str:
    run_dir = Path(run_dir)
    if not (run_dir / table).is_dir() and table != "table":
        raise ReportError(f"{run_dir / table} does not exist: --table names a folder inside the run directory")
    config = table_recipe(run_dir, table)
    stages, scope = stage_methods(config), table_scope(config)
    if not stages:
        raise ReportError(f"{run_dir}: the table has no selection-stage methods ({', '.join(STAGES)})")
    agreement = source_agreement(run_dir)
    md = [f"# Selection stages in {run_dir}", ""]
    plots = {}
    if "relevance" in stages:
        lines, plots["relevance"] = relevance_section(run_dir, stages["relevance"], agreement, scope)
        md += ["## relevance: ν̂ per source against each source's agreement with the oracle", ""] + lines
    if "dual_active" in stages:
        lines, plots["dual_active"], plots["dual_active_agreement"] = teacher_section(run_dir, stages["dual_active"],
                                                                                     scope)
        md += ["## dual_active: teacher shares at equal cost, and θ̂'s agreement with the exact utility on the pairs "
               "never asked", ""] + lines + [""]
    if "lowrank" in stages:
        md += ["## lowrank: who labelled", ""] + persona_section(run_dir, stages["lowrank"], scope) + [""]
    if "shared" in stages:
        lines, plots["shared"] = shared_section(run_dir, stages["shared"], scope)
        md += ["## shared: the proxy's accuracy on held-out judge pairs", ""] + lines + [""]
    rows = paired_rows(run_dir, {lab for labs in stages.values() for lab in labs}, table)
    if rows:
        md += [f"## Each stage against its baselines (exact utility, paired per training seed; {table}/paired.csv)", "",
               "| method | vs | iteration | seeds | Δu [95 % t-interval over seeds] |", "|---|---|---|---|---|"]
        md += [f"| {r['method']} | {r['baseline']} | {r['iteration']} | {r['seeds']} | "
               f"{float(r['mean_diff']):+.3f} [{float(r['ci_low']):+.3f}, {float(r['ci_high']):+.3f}] |" for r in rows]
        plots["paired"] = rows
    out = run_dir / table
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(md).rstrip() + "\n"
    (out / "stages.md").write_text(text, encoding="utf-8")
    plot(plots, out / "stages.png")
    return text


def plot(plots: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    ax = axes[0]
    fits = sorted(plots.get("relevance", {}).items())
    for i, ((label, t), nu) in enumerate(fits):
        ax.bar(np.arange(len(nu)) + 0.8 * i / len(fits), list(nu.values()), width=0.8 / len(fits),
               label=f"{label} it{t}")
    if fits:
        ax.set_xticks(np.arange(len(fits[0][1])) + 0.3, list(fits[0][1]))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("relevance: ν̂ per source (mean over seeds)")
    ax = axes[1]
    teachers = plots.get("dual_active", {})
    names = list(dict.fromkeys(k for q in teachers.values() for k in q))  # one colour per teacher in every bar
    agreement = plots.get("dual_active_agreement", {})
    for i, (key, q) in enumerate(sorted(teachers.items())):
        bottom = 0.0
        for k, v in q.items():
            ax.bar(i, v, bottom=bottom, color=f"C{names.index(k)}")
            bottom += v
        if agreement.get(key) is not None:
            ax.text(i, bottom, f"{agreement[key]:.2f}", ha="center", va="bottom", fontsize=7)
    for k in names:
        ax.bar(0, 0, color=f"C{names.index(k)}", label=k)
    ax.set_xticks(range(len(teachers)), [f"{lab} it{t}" for lab, t in sorted(teachers)], fontsize=7, rotation=30,
                  ha="right")
    ax.set_title("dual_active: queries per teacher" + (" (above: held-out agreement)" if any(
        a is not None for a in agreement.values()) else ""))
    ax = axes[2]
    for label in sorted({lab for lab, _ in plots.get("shared", {})}):
        pts = sorted((t, np.mean(v)) for (lab, t), v in plots["shared"].items() if lab == label and v)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_title("shared: held-out proxy–judge agreement")
    ax.set_xlabel("iteration")
    ax = axes[3]
    rows = plots.get("paired", [])
    names = [f"{r['method']} − {r['baseline']} it{r['iteration']}" for r in rows]
    mid = np.array([float(r["mean_diff"]) for r in rows])
    lo = np.array([float(r["ci_low"]) for r in rows])
    hi = np.array([float(r["ci_high"]) for r in rows])
    if rows:
        ax.errorbar(mid, range(len(rows)), xerr=[np.nan_to_num(mid - lo), np.nan_to_num(hi - mid)], fmt="o")
        ax.set_yticks(range(len(rows)), names, fontsize=6)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_title("Δ exact utility [95 % CI over seeds]")
    for ax in axes[:3]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.stage_report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a table's run directory, e.g. runs/stage_table")
    ap.add_argument("--table", default="table",
                    help="the table folder inside RUN_DIR to read and write (one copied aside, e.g. table_iter1)")
    args = ap.parse_args(argv)
    try:
        print(report(Path(args.run_dir), args.table))
    except (ReportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
