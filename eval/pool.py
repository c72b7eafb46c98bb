"""Pool the paired rows of several tables over their training seeds: one interval from every build run so far.

A table (or a replay) writes `paired_per_seed.csv`: one paired difference per (method, baseline, iteration, training
seed). Tables run in different sessions on the same world — more fresh builds of a recipe, say — are independent
replications of the same experiment, so their per-seed differences can be pooled into one Student-t interval over
all the seeds. This command does that from the files, so a pooled row is a command rather than numbers copied by hand:

    python -m eval.pool runs/table_6144_e6_fresh/table runs/table_6144_e6_fresh78/table --out runs/pooled_e6_fresh

Refused in one line, before anything is written: a training seed that appears in two tables for the same row (with
one build per seed, the same seed is the same build: counting it twice is not an independent observation), and
tables whose evaluation differs (judge, test prompts, samples per checkpoint, temperature: the first line of each
`paired.md` from "Exact utility under", the seed list aside). A replay's table (python -m pipeline replay --all) pools
with a real one: what comes before that phrase, how the checkpoints were made, may differ. It cannot see whether two
tables share a world and an update; pool only tables of one recipe family (a recipe and the recipes that inherit from
it with other seeds).

numpy/scipy (through eval.paired) only.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from eval.paired import markdown, paired_interval, write

# what a table's seed list changes in eval.paired.header; the rest of it is the evaluation, which must match
_SEEDS = re.compile(r" \(seeds \[[^\]]*\]\)| \(one seed: no interval\)")
_EVALUATION = "Exact utility under"


class PoolError(ValueError):
    """Tables that cannot be pooled; the message is one line."""


def _evaluation(table_dir: Path, stem: str) -> str:
    md = table_dir / f"{stem}.md"
    if not md.is_file():
        raise PoolError(f"{md} is missing: not a table's output folder")
    first = md.read_text(encoding="utf-8").splitlines()[0]
    if _EVALUATION not in first:
        raise PoolError(f"{md}: its first line does not say how the table was evaluated ('{_EVALUATION} ...')")
    # what precedes it says how the checkpoints were made (a table's runs, or a replay of their pairs): poolable
    return _SEEDS.sub("", first[first.index(_EVALUATION):])


def read_per_seed(table_dir: Path, stem: str = "paired") -> list[dict]:
    path = table_dir / f"{stem}_per_seed.csv"
    if not path.is_file():
        raise PoolError(f"{path} is missing: not a table's output folder (or one written before per-seed files)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["iteration"], r["seed"] = int(r["iteration"]), int(r["seed"])
        for k in ("diff", "utility", "baseline_utility", "expected_win_rate"):
            r[k] = float(r[k])
    return rows


def pool(table_dirs: list[Path], stem: str = "paired") -> tuple[list[dict], str]:
    """(rows in eval.paired's format, the evaluation's header line with the pooled seeds)."""
    if len(table_dirs) < 2:
        raise PoolError("pooling needs at least two table folders")
    evaluations = {d: _evaluation(d, stem) for d in table_dirs}
    first = table_dirs[0]
    for d, e in evaluations.items():
        if e != evaluations[first]:
            raise PoolError(f"{d} and {first} were evaluated differently (first line of {stem}.md): "
                            f"{e!r} vs {evaluations[first]!r}")
    grouped: dict[tuple, dict[int, tuple[Path, dict]]] = {}
    for d in table_dirs:
        for r in read_per_seed(d, stem):
            key = (r["method"], r["baseline"], r["iteration"])
            seen = grouped.setdefault(key, {})
            if r["seed"] in seen:
                raise PoolError(f"training seed {r['seed']} of {key[0]} vs {key[1]} at iteration {key[2]} is in both "
                                f"{seen[r['seed']][0]} and {d}: the same seed twice is not an independent observation")
            seen[r["seed"]] = (d, r)
    rows = []
    for (method, baseline, t), by_seed in grouped.items():
        per_seed = [dict(seed=s, diff=r["diff"], utility=r["utility"], baseline_utility=r["baseline_utility"],
                         expected_win_rate=r["expected_win_rate"]) for s, (_, r) in sorted(by_seed.items())]
        m, lo, hi = paired_interval([p["diff"] for p in per_seed])
        rows.append(dict(method=method, baseline=baseline, iteration=t, seeds=len(per_seed), mean_diff=m, ci_low=lo,
                         ci_high=hi, expected_win_rate=sum(p["expected_win_rate"] for p in per_seed) / len(per_seed),
                         per_seed=per_seed))
    seeds = sorted({s for by_seed in grouped.values() for s in by_seed})
    head = (f"Pooled from {', '.join(str(d) for d in table_dirs)} (python -m eval.pool); each row over the seeds it "
            "has. " + evaluations[first].replace("paired per training seed",
                                                  f"paired per training seed (seeds {seeds})", 1))
    return rows, head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.pool", description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", type=Path, help="table output folders, e.g. runs/NAME/table")
    ap.add_argument("--out", type=Path, default=None,
                    help="write paired.csv, paired_per_seed.csv and paired.md here (default: print the table only)")
    ap.add_argument("--stem", default="paired", choices=["paired", "vs_sft"],
                    help="which of a table's files to pool: paired (vs the baseline) or vs_sft (vs each method's SFT)")
    args = ap.parse_args(argv)
    try:
        rows, head = pool(args.tables, args.stem)
    except (PoolError, OSError, KeyError) as e:  # KeyError: a per-seed file without the columns eval.paired writes
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(write(args.out, rows, head, stem=args.stem) if args.out else f"{head}\n\n{markdown(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
