"""How many ideal preference pairs does the update need to move the facts? Its capacity, measured before any table.

`python -m eval.pair_budget RECIPE --pairs 384,1536,6144 [--pool 8] [--prompts 300] [key=value ...]`

The lr check asks whether a perfect source beats no transfer in one iteration. When it does not, this says whether
the update could learn the facts at all from more and cleaner pairs than any method gets: for each budget B, the
first B prompts of one seeded draw from the train split (so budgets nest), `pool` samples of the SFT policy each,
chosen = the sample of highest exact utility and rejected = the lowest (prompts whose samples all tie are dropped):
a noiseless judge that labels the whole pool. Each budget's update starts from the SFT checkpoint, with the
recipe's online settings (loss, beta, lr, epochs, batch size, NLL term, SFT anchor), and is measured on held-out
test prompts: the fact rates and the exact utility of eval/world_report.py section 1. No method is compared.

Writes runs/<name>/pair_budget/budget.{md,json} after every budget (a crash keeps the budgets done).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from eval.world_report import FACTS, fact_table
from pipeline.cli import int_list, run_command
from pipeline.config import Recipe, load_recipe
from pipeline.durable import atomic_write_text
from pipeline.models import load_policy
from pipeline.online import Pair, reference_logprobs, update
from pipeline.runner import build_judge, configure_threads, load_split, policy_config, run
from reward_sources.oracle import utility

_POOL_SEED, _EVAL_SEED = 7, 123


def ideal_pairs(rows: list[dict], samples: list[list[str]], weights: dict) -> list[Pair | None]:
    """Per prompt: (highest-utility sample, lowest-utility sample), or None when every sample has the same utility."""
    out = []
    for r, ys in zip(rows, samples):
        us = [utility(r, y, weights) for y in ys]
        best, worst = max(range(len(ys)), key=us.__getitem__), min(range(len(ys)), key=us.__getitem__)
        out.append(None if us[best] == us[worst] else Pair(r, ys[best], ys[worst], ys[-1]))
    return out


def measure(policy, rows: list[dict], n_samples: int, cfg, weights: dict) -> dict:
    samples = policy.sample([r["document"] for r in rows], n_samples, temperature=cfg.temperature, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, seed=_EVAL_SEED,
                            keys=[r["id"] for r in rows])
    return fact_table([r for r in rows for _ in range(n_samples)], [y for ys in samples for y in ys], weights)


def probe(recipe: Recipe, budgets: list[int], pool: int = 8, n_prompts: int = 300, n_samples: int = 4) -> list[dict]:
    cfg = recipe.online
    weights = build_judge(recipe).weights
    train = load_split(recipe.out / "data", "train")
    test = load_split(recipe.out / "data", "test")[:n_prompts]
    if max(budgets) > len(train):
        raise ValueError(f"--pairs asks for {max(budgets)} prompts; the train split has {len(train)}")
    prompts = random.Random("pair-budget").sample(train, max(budgets))
    sft = policy_config(recipe, recipe.out / "sft" / "model")
    policy = load_policy(sft)
    start = time.time()
    pool_samples = policy.sample([r["document"] for r in prompts], pool, temperature=cfg.temperature, top_k=cfg.top_k,
                                 max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, seed=_POOL_SEED,
                                 keys=[r["id"] for r in prompts])
    pairs = ideal_pairs(prompts, pool_samples, weights)
    results = [{"prompts": 0, "pairs": 0, "chosen_utility": None, "rejected_utility": None,
                **measure(policy, test, n_samples, cfg, weights), "elapsed_s": round(time.time() - start, 1)}]
    _write(recipe, results, pool, len(test), n_samples)
    for budget in budgets:
        policy = load_policy(sft)
        batch = [p for p in pairs[:budget] if p is not None]
        ref = reference_logprobs(policy, batch, cfg, None)
        update(policy, batch, ref, cfg, seed=cfg.seed * 1000 + 1, anchor_rows=train if cfg.sft_anchor else None)
        results.append({"prompts": budget, "pairs": len(batch),
                        "chosen_utility": sum(utility(p.row, p.chosen, weights) for p in batch) / max(len(batch), 1),
                        "rejected_utility": sum(utility(p.row, p.rejected, weights) for p in batch)
                        / max(len(batch), 1),
                        **measure(policy, test, n_samples, cfg, weights), "elapsed_s": round(time.time() - start, 1)})
        _write(recipe, results, pool, len(test), n_samples)
    return results


def _write(recipe: Recipe, results: list[dict], pool: int, n_test: int, n_samples: int) -> None:
    out = recipe.out / "pair_budget"
    out.mkdir(parents=True, exist_ok=True)
    cfg = recipe.online
    lines = [f"# Ideal pairs per update: {recipe.name}", "",
             f"Each row: one update from the SFT checkpoint ({cfg.loss}, beta {cfg.beta:g}, lr {cfg.lr:g} x "
             f"{cfg.epochs} epochs, batch {cfg.batch_size}, NLL {cfg.nll_alpha:g}, SFT anchor {cfg.sft_anchor:g}) on "
             f"pairs of the highest- and lowest-utility of {pool} SFT samples per train prompt; then {n_samples} "
             f"samples on each of {n_test} test prompts. Row 0 is the SFT policy.", "",
             "| prompts | pairs | chosen / rejected utility | " + " | ".join(FACTS) +
             " | rival fact | invented/summary | words | utility |", "|---" * (len(FACTS) + 7) + "|"]
    for r in results:
        pair_u = "—" if r["chosen_utility"] is None else f"{r['chosen_utility']:+.2f} / {r['rejected_utility']:+.2f}"
        lines.append(f"| {r['prompts']} | {r['pairs']} | {pair_u} | " + " | ".join(f"{r[f]:.2f}" for f in FACTS) +
                     f" | {r['rival_fact']:.2f} | {r['invented_per_summary']:.2f} | {r['words']:.1f} | "
                     f"{r['oracle_utility']:+.2f} |")
    atomic_write_text(out / "budget.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "budget.json", json.dumps(results, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.pair_budget", description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--pairs", type=int_list("--pairs", 1), default=[384, 1536, 6144],
                        help="prompts per update, comma-separated (each update starts from the SFT checkpoint)")
    parser.add_argument("--pool", type=int, default=8, help="SFT samples per prompt, from which the pair is taken")
    parser.add_argument("--prompts", type=int, default=300, help="held-out test prompts measured per budget")
    parser.add_argument("--samples", type=int, default=4, help="samples per test prompt")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    for name in ("pool", "prompts", "samples"):
        if getattr(args, name) < 1 + (name == "pool"):
            parser.error(f"--{name} must be >= {1 + (name == 'pool')}")
    configure_threads()

    def body():
        recipe = load_recipe(args.recipe, overrides)
        if not hasattr(build_judge(recipe), "weights"):
            raise ValueError(f"the pair budget needs the oracle judge; {args.recipe}'s judge is {recipe.judge.name}")
        run(recipe, until="sft")
        probe(recipe, args.pairs, args.pool, args.prompts, args.samples)
        print((recipe.out / "pair_budget" / "budget.md").read_text())

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
