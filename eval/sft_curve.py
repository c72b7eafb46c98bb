"""Fact rates along the SFT budget: pick the policy's training budget from a diagnostic, before any table.

`python -m eval.sft_curve RECIPE --steps 0,50,100,200,400,900 [--prompts 200] [key=value ...]`

The testbed needs a policy that states each planted fact in a minority of its samples (docs/testbed.md: the
regime in which Best-of-N has something the K labelled samples miss). How often it does depends on how long it
was trained, so this command measures it: it copy-pretrains the recipe's policy once (sft.copy_steps, as the SFT
stage does), then for each budget restarts from that checkpoint and runs that many SFT steps with their own
warm-up and cosine decay, exactly as `sft.steps = budget` would (the same seeds, batches and random state: at
the recipe's own budget the policy is the SFT stage's, tests/test_sft_curve.py), and samples the held-out prompts
at the online temperature. Per budget: the fact rates of eval/world_report.py section 1 and its coverage
(P(stated) per sample, in the K online samples, in the K + N pool). Nothing in it compares methods.

Writes runs/<name>/sft_curve/curve.{md,json} after every budget (a crash keeps the budgets done).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from eval.world_report import coverage, fact_table
from pipeline import tracking
from pipeline.cli import int_list, run_command
from pipeline.config import Recipe, TrackingConfig, load_recipe
from pipeline.durable import atomic_write_text
from pipeline.models import load_policy
from pipeline.runner import build_judge, configure_threads, load_split, run, seed_everything, tokenizer_dir
from pipeline.sft import copy_pretrain, fine_tune

_SAMPLE_SEED = 123  # the world report's, so the recipe's own budget reproduces its section 1 and 2


def trained(recipe: Recipe, budgets: list[int], log_file):
    """Yield (budget, policy) for each SFT budget: copy pretraining once, then each budget from that checkpoint,
    with the SFT stage's order of seeding, so that each policy is the one `sft.steps = budget` would make. The
    policy object is reused: use it before asking for the next."""
    cfg = recipe.sft
    train = load_split(recipe.out / "data", "train")
    inert = tracking.Tracker(None, recipe.out / "sft_curve", TrackingConfig(report_to=["none"], sample_prompts=0))
    seed_everything(cfg.seed)
    policy = load_policy(recipe.policy, tokenizer_dir=tokenizer_dir(recipe))
    torch.manual_seed(cfg.seed)
    start = time.time()
    copy_pretrain(policy, cfg, train, log_file, start, inert)
    pretrained, rng = copy.deepcopy(policy.model.state_dict()), torch.get_rng_state()
    for budget in budgets:
        policy.model.load_state_dict(pretrained)
        torch.set_rng_state(rng)  # dropout draws continue from where copy pretraining left them, as in one run
        fine_tune(policy, cfg, train, budget, log_file, start, inert)
        policy.eval()
        yield budget, policy


def curve(recipe: Recipe, budgets: list[int], n_prompts: int = 200) -> list[dict]:
    """One row per SFT budget: the budget, fact rates of samples (world_report.fact_table) and coverage."""
    weights = build_judge(recipe).weights
    rows = load_split(recipe.out / "data", "eval")[:n_prompts]
    k, n_pool = recipe.online.k, max(recipe.online.n_pool, 1)
    out = recipe.out / "sft_curve"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = []
    with open(out / "log.jsonl", "w", encoding="utf-8") as log_file:
        for budget, policy in trained(recipe, budgets, log_file):
            samples = policy.sample([r["document"] for r in rows], k + n_pool, temperature=recipe.online.temperature,
                                    top_k=recipe.online.top_k, seed=_SAMPLE_SEED,
                                    max_new_tokens=recipe.online.max_new_tokens,
                                    batch_size=recipe.online.gen_batch_size)
            flat_rows = [r for r in rows for _ in range(k + n_pool)]
            results.append({"sft_steps": budget, "facts": fact_table(flat_rows, [y for ys in samples for y in ys],
                                                                     weights),
                            "coverage": coverage(rows, samples, k), "elapsed_s": round(time.time() - start, 1)})
            _write(recipe, results, k, n_pool, len(rows))
    return results


def _write(recipe: Recipe, results: list[dict], k: int, n_pool: int, n_prompts: int) -> None:
    out = recipe.out / "sft_curve"
    lines = [f"# Fact rates along the SFT budget: {recipe.name}", "",
             f"Copy pretraining {recipe.sft.copy_steps} steps, then each budget of SFT steps from that checkpoint; "
             f"samples at T={recipe.online.temperature:g} on {n_prompts} held-out prompts (K={k} online + N={n_pool} "
             "pool each). Per sample, in one of the K online samples, in one of all K + N.", "",
             "| SFT steps | person (sample / K / K+N) | place | number | rival fact | invented/summary | words | "
             "utility |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, f = r["coverage"], r["facts"]
        cells = [" / ".join(f"{c[x][w]:.2f}" for w in ("sample", "online", "pool"))
                 for x in ("person", "place", "number")]
        lines.append(f"| {r['sft_steps']} | " + " | ".join(cells) + f" | {f['rival_fact']:.2f} | "
                     f"{f['invented_per_summary']:.2f} | {f['words']:.1f} | {f['oracle_utility']:+.2f} |")
    atomic_write_text(out / "curve.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "curve.json", json.dumps(results, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.sft_curve", description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int_list("--steps", 0), default=[0, 50, 100, 200, 400, 900],
                        help="SFT budgets to measure, comma-separated (each restarts from the copy-pretrained policy)")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts sampled per budget")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.prompts < 1:
        parser.error("--prompts must be >= 1")
    configure_threads()

    def body():
        recipe = load_recipe(args.recipe, overrides)
        if not hasattr(build_judge(recipe), "weights"):
            raise ValueError(f"the SFT curve needs the oracle judge; {args.recipe}'s judge is {recipe.judge.name}")
        run(recipe, until="data")
        curve(recipe, args.steps, args.prompts)
        print((recipe.out / "sft_curve" / "curve.md").read_text())

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
