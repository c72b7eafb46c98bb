"""Run the four selection stages' synthetic-truth suites and write runs/stages/stages.{md,json}.

    python -m pipeline.selection.report [--out runs/stages] [--seeds 5] [--quick]

Prints the Markdown to stdout (progress goes to stderr) and exits 1 if any comparison fails.
BLAS and torch are limited to one thread: these are tiny problems, and on a shared 2-core machine
multithreaded OpenBLAS made a 200×200 solve ~100× slower than single-threaded.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import SUITES


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def to_markdown(result: dict) -> str:
    lines = ["# Selection stages — synthetic-truth checks", ""]
    n_pass = sum(c["pass"] for s in result["suites"] for c in s["comparisons"])
    n_all = sum(len(s["comparisons"]) for s in result["suites"])
    lines += [f"- Result: **{n_pass}/{n_all} comparisons pass** ({'PASS' if n_pass == n_all else 'FAIL'})",
              f"- Seeds: {result['seeds']} (every figure is the mean over these seeds)"
              + (" — quick mode (reduced sizes)" if result["quick"] else ""),
              f"- Wall time: {result['wall_seconds']:.1f} s on {result['machine']} (BLAS/torch threads = 1)", ""]
    for i, s in enumerate(result["suites"], 1):
        lines += [f"## {i}. {s['title']} — {s['seconds']:.1f} s", "", f"Setup: {s['setup']}", "",
                  "| comparison | value | baseline | baseline value | result |", "|---|---|---|---|---|"]
        for c in s["comparisons"]:
            lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['baseline_name']} | {_fmt(c['baseline'])} | "
                         f"{'PASS' if c['pass'] else 'FAIL'} |")
        for c in s.get("informational", []):
            lines.append(f"| {c['name']} | {_fmt(c['value'])} | — | {_fmt(c['baseline'])} | info: {c['note']} |")
        for t in s.get("tables", []):
            lines += ["", f"{t['title']}:", "", "| " + " | ".join(t["columns"]) + " |",
                      "|" + "---|" * len(t["columns"])]
            lines += ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in t["rows"]]
        lines += ["", "Measured: `" + json.dumps(_jsonable(_short(s["metrics"])), ensure_ascii=False) + "`", ""]
    lines += ["## Selection cost per 10,000 candidate pairs", "",
              "| method | what is timed | select (s) | fit (s) |", "|---|---|---|---|"]
    for c in result["selection_cost"]:
        fit = f"{c['fit_seconds']:.4f}" if "fit_seconds" in c else "—"
        lines.append(f"| {c['method']} | {c['what']} | {c['select_seconds']:.4f} | {fit} |")
    return "\n".join(lines) + "\n"


def _short(metrics: dict) -> dict:
    """Round floats for the Markdown (the JSON keeps full precision)."""
    if isinstance(metrics, dict):
        return {k: _short(v) for k, v in metrics.items() if not k.endswith("_per_seed")}
    if isinstance(metrics, (list, tuple)):
        return [_short(v) for v in metrics]
    if isinstance(metrics, (float, np.floating)):
        return round(float(metrics), 4)
    return metrics


def run(seeds: list[int], quick: bool = False, out: str | None = "runs/stages") -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    suites, costs = [], []
    for i, name in enumerate(SUITES, 1):
        mod = importlib.import_module(f"pipeline.selection.{name}")
        print(f"[{i}/{len(SUITES)}] {name} …", file=sys.stderr, flush=True)
        s = mod.run_suite(seeds, quick=quick)
        costs.append(mod.selection_cost())
        ok = sum(c["pass"] for c in s["comparisons"])
        print(f"      {ok}/{len(s['comparisons'])} pass in {s['seconds']:.1f} s; "
              f"10k-pair selection {costs[-1]['select_seconds']:.3f} s", file=sys.stderr, flush=True)
        suites.append(s)
    result = dict(seeds=seeds, quick=quick, wall_seconds=time.perf_counter() - t0,
                  machine=f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
                  suites=suites, selection_cost=costs)
    result = _jsonable(result)
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "stages.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        (path / "stages.md").write_text(to_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/stages", help="output directory for stages.md and stages.json")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..seeds-1)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (a smoke run, not the reported figures)")
    args = ap.parse_args(argv)
    result = run(list(range(args.seeds)), args.quick, args.out)
    print(to_markdown(result))
    return 0 if all(c["pass"] for s in result["suites"] for c in s["comparisons"]) else 1


if __name__ == "__main__":
    sys.exit(main())
