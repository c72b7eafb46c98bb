"""Low-noise checkpoint quality in the synthetic world: the oracle's exact utility, without judge noise.

    python -m eval.utility runs/table base=runs/table/sft/model tpo=runs/table/methods/tpo/seed0/online/iter_3/model

Every checkpoint samples S responses per held-out prompt (the run's test split, then its eval split) with one
shared sampling seed, so checkpoints are compared on common random numbers. Reported per checkpoint: the mean
utility with a 95% interval over prompts. Against the first checkpoint: the mean utility difference, the
noise-free win rate (utility a > b, ties count 0.5, sample j against sample j), and the win rate that a
Bradley–Terry judge of temperature t gives in expectation, mean σ((u_a − u_b)/t). The last one is what
a sampled oracle win rate (t = 0.5) estimates from one draw per prompt, so this tool shows how far such a figure
can be from its expectation (docs/testbed.md §4); `make table` reports it per training seed in paired.md. A second table
says what the utility is made of: planted facts stated, names and numbers invented, words per summary.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from eval.paired import expected_win_rate
from eval.world_report import FACTS, fact_table
from pipeline.cli import run_command
from pipeline.config import ConfigError, load_recipe
from pipeline.models import load_policy
from pipeline.runner import configure_threads, load_split, policy_config
from pipeline.world import words
from reward_sources.oracle import PERSONAS, utility


def draw(policy, rows: list[dict], samples: int, *, temperature: float = 1.0, max_new_tokens: int = 40,
         batch_size: int = 64, seed: int = 777) -> list[list[str]]:
    """`samples` responses per prompt, one shared sampling seed for every checkpoint."""
    return policy.sample([r["document"] for r in rows], samples, temperature=temperature,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)


def utilities(rows: list[dict], drawn: list[list[str]], weights: dict) -> np.ndarray:
    """(prompts, samples) oracle utilities of the drawn responses."""
    return np.array([[utility(r, y, weights) for y in ys] for r, ys in zip(rows, drawn)])


def behaviour(rows: list[dict], drawn: list[list[str]]) -> dict:
    """What a utility change is made of: planted facts stated, invented names/numbers and words per summary."""
    flat_rows = [r for r, ys in zip(rows, drawn) for _ in ys]
    flat = [y for ys in drawn for y in ys]
    return fact_table(flat_rows, flat) | {"words_per_summary": float(np.mean([len(words(y)) for y in flat]))}


def compare(u: dict[str, np.ndarray], bt_temperature: float = 0.5) -> list[dict]:
    """One row per checkpoint: mean utility ± 95% over prompts; against the first checkpoint, the paired
    differences and win rates (in %)."""
    base_label, base = next(iter(u.items()))
    out = []
    for label, a in u.items():
        per_prompt = a.mean(1)
        half = 1.96 * per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)) if len(per_prompt) > 1 else float("nan")
        row = {"checkpoint": label, "mean_utility": float(a.mean()), "ci_half": float(half)}
        if label != base_label:
            row |= {"vs": base_label, "utility_diff": float((a - base).mean()),
                    "noise_free_win": 100 * expected_win_rate(a, base, 0),
                    "bt_expected_win": 100 * expected_win_rate(a, base, bt_temperature)}
        out.append(row)
    return out


def markdown(rows: list[dict], bt_temperature: float) -> str:
    lines = [f"| checkpoint | mean utility ± 95% | vs | utility diff | noise-free win % | BT(t={bt_temperature:g}) "
             "expected win % |", "|---|---|---|---|---|---|"]
    for r in rows:
        rest = (f"{r['vs']} | {r['utility_diff']:+.3f} | {r['noise_free_win']:.1f} | {r['bt_expected_win']:.1f}"
                if "vs" in r else "– | – | – | –")
        lines.append(f"| {r['checkpoint']} | {r['mean_utility']:+.3f} ± {r['ci_half']:.3f} | {rest} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.utility", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory with config.yaml and data/ (a synthetic-world recipe)")
    p.add_argument("checkpoints", nargs="+", help="LABEL=PATH; the first is the baseline of the comparisons")
    p.add_argument("--samples", type=int, default=8, help="responses per prompt and checkpoint")
    p.add_argument("--prompts", type=int, default=400, help="held-out prompts (test split, then eval split)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--bt-temperature", type=float, default=0.5, help="judge temperature of the expected win rate")
    p.add_argument("--persona", default="default", help="oracle persona whose utility is measured")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    run = Path(args.run)
    specs = [c.split("=", 1) for c in args.checkpoints]
    bad = [c for c, s in zip(args.checkpoints, specs) if len(s) != 2 or not Path(s[1]).exists()]
    problem = (f"no config.yaml in {run}" if not (run / "config.yaml").exists() else
               f"checkpoint(s) not LABEL=existing-path: {', '.join(bad)}" if bad else
               "--samples must be >= 1" if args.samples < 1 else
               "--prompts must be >= 1" if args.prompts < 1 else
               # a negative temperature samples or weighs wins in reverse; NaN or inf give no number at all
               "--temperature must be >= 0 (0 = greedy) and finite" if not 0 <= args.temperature < math.inf else
               "--bt-temperature must be >= 0 (0 = noise-free) and finite" if not 0 <= args.bt_temperature < math.inf
               else f"unknown persona '{args.persona}'; known: {', '.join(PERSONAS)}" if args.persona not in PERSONAS
               else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    configure_threads()
    # every command's one error map: a bad config.yaml or a path that holds no model is one line, not a traceback
    return run_command(lambda: report(args, run, specs))


def report(args, run: Path, specs: list[list[str]]) -> None:
    recipe = load_recipe(run / "config.yaml")
    rows = (load_split(run / "data", "test") + load_split(run / "data", "eval"))[: args.prompts]
    if not rows or any(not r.get("facts") for r in rows):
        raise ConfigError(f"{run}: the oracle's utility needs held-out rows with the synthetic world's planted facts "
                          "(data.source=synthetic)")
    u, seen = {}, {}
    for label, path in specs:
        policy = load_policy(policy_config(recipe, path))
        drawn = draw(policy, rows, args.samples, temperature=args.temperature,
                     max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.online.gen_batch_size)
        u[label], seen[label] = utilities(rows, drawn, PERSONAS[args.persona]), behaviour(rows, drawn)
        print(f"{label}: mean utility {u[label].mean():+.3f}", file=sys.stderr, flush=True)
    result = compare(u, args.bt_temperature)
    print(f"{len(rows)} prompts x {args.samples} samples (T={args.temperature:g}), persona {args.persona}\n")
    print(markdown(result, args.bt_temperature))
    print("\nShare of summaries that state each planted fact; invented names/numbers and words per summary:\n")
    print("| checkpoint | " + " | ".join(FACTS) + " | invented / summary | words / summary |")
    print("|---" * (len(FACTS) + 3) + "|")
    for label, b in seen.items():
        print(f"| {label} | " + " | ".join(f"{b[k]:.2f}" for k in FACTS)
              + f" | {b['invented_per_summary']:.2f} | {b['words_per_summary']:.1f} |")
    for row in result:
        row["behaviour"] = seen[row["checkpoint"]]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
