"""The world's go/no-go diagnostic: can transfer matter in this world, and how relevant is each source?

Run it before every table (`python -m eval.world_report RECIPE`; make table prints it too). From the SFT policy's
own samples on held-out prompts, under the recipe's judge (its exact utility, not its noisy labels):

1. Facts: the share of samples that state each planted fact, that state one of the document's OTHER persons,
   places or numbers (a rival's), invent names or numbers, and their words; for the references, SFT greedy, SFT
   samples (held-out and train prompts: far apart means SFT memorized the online prompts), and another article's
   reference (fluent, wrong facts).
2. Coverage: P(a sample states the fact) and P(at least one of the K online samples does) against P(one of the
   K + N samples of the Best-of-N pool does). Transfer can only surface what the pool holds and the K labelled
   samples miss: a fact in 10-30 % of samples is the regime the testbed is built for (docs/testbed.md).
3. Sources: each source's pairwise agreement with the judge's utility on pairs of samples with different utility
   (ties 0.5), the mean utility of its Best-of-N pick against an untransferred sample, and one simulated labelling
   round as the online loop does it (K online samples, the source's top `replace_num` of the pool replacing the
   first ones, the judge's noisy labels picking chosen and rejected): the mean utility of the chosen response
   and the chosen-rejected utility gap, against the same round with no transfer. A perfect source (the judge's
   own utility) and an anti-oracle (its negative) bracket them; they are references, never recipe sources.
"""
from __future__ import annotations

import json
import random
import sys
from itertools import combinations

import numpy as np

from pipeline import world
from pipeline.cli import check_names, run_command
from pipeline.config import Recipe, load_recipe
from pipeline.labels import separates
from pipeline.models import load_policy
from pipeline.runner import build_judge, build_scorers, configure_threads, load_split, policy_config, run
from reward_sources.oracle import PERSONAS, utility

FACTS = ("person", "role", "place", "number", "event")
_GO = (0.10, 0.30)  # fact rates per sample at which Best-of-N has something to surface (docs/testbed.md)
_AGREEMENT_SAMPLES = 8  # pairs grow with the square of the samples: 8 give 28 pairs per prompt


def fact_table(rows: list[dict], responses: list[str], weights: dict | None = None) -> dict:
    weights = weights or PERSONAS["default"]
    hits = [world.fact_hits(r["facts"], y) for r, y in zip(rows, responses)]
    out = {k: float(np.mean([h[k] for h in hits])) for k in FACTS}
    out["rival_fact"] = float(np.mean([bool(world.stated_distractors(r["facts"], y)) for r, y in zip(rows, responses)]))
    out["invented_per_summary"] = float(np.mean([len(world.invented_entities(r["document"], y))
                                                 for r, y in zip(rows, responses)]))
    out["words"] = float(np.mean([len(world.words(y)) for y in responses]))
    out["oracle_utility"] = float(np.mean([utility(r, y, weights) for r, y in zip(rows, responses)]))
    return out


def coverage(rows: list[dict], samples: list[list[str]], k: int) -> dict:
    """Per fact: P(one sample states it), P(one of the first k does), P(one of all the samples does)."""
    hits = [[world.fact_hits(r["facts"], y) for y in ys] for r, ys in zip(rows, samples)]
    out = {}
    for fact in ("person", "place", "number"):
        hit = np.array([[h[fact] for h in hs] for hs in hits])
        out[fact] = {"sample": float(hit.mean()), "online": float(hit[:, :k].any(1).mean()),
                     "pool": float(hit.any(1).mean())}
    return out


def source_agreement(rows, samples: list[list[str]], scorers: dict, weights: dict | None = None) -> dict:
    weights = weights or PERSONAS["default"]
    pairs = []
    for r, ys in zip(rows, samples):
        u = [utility(r, y, weights) for y in ys]
        pairs += [(r, ys[i], ys[j], np.sign(u[i] - u[j])) for i, j in combinations(range(len(ys)), 2) if u[i] != u[j]]
    out = {"n_pairs": len(pairs)}
    for name, score in scorers.items():
        flat_rows = [p[0] for p in pairs for _ in (0, 1)]
        flat = [y for p in pairs for y in (p[1], p[2])]
        s = score([r["document"] for r in flat_rows], flat, [r["summary"] for r in flat_rows])
        agree = [1.0 if np.sign(s[2 * i] - s[2 * i + 1]) == p[3] else 0.5 if s[2 * i] == s[2 * i + 1] else 0.0
                 for i, p in enumerate(pairs)]
        out[name] = float(np.mean(agree))
    return out


def labelling_round(rows, samples, source_scores, utilities, judge, k: int, replace_num: int, seed: int = 0,
                    min_margin: float = 0.0) -> dict:
    """One online labelling round, simulated on fixed samples: the first k samples are the online ones, the rest
    the pool; `source_scores` (None = no transfer) ranks the pool and its top replace_num replace online samples
    0..replace_num-1; the judge's noisy scores pick chosen (highest) and rejected (lowest), ties at random, and a
    prompt is kept as the loop keeps it (its scores not all equal and spanning at least min_margin).
    Returns the share of prompts kept, and over the kept pairs: the mean true utility of chosen and rejected,
    their gap, the share whose chosen and rejected have the same true utility (a pair that teaches nothing), the
    share whose chosen is truly worse (a label error), and the share whose chosen is transferred."""
    rng = random.Random(seed)
    chosen, rejected, from_pool = [], [], 0
    for p, (r, ys, us) in enumerate(zip(rows, samples, utilities)):
        online = list(range(k))
        if source_scores is not None:
            pool = sorted(range(k, len(ys)), key=lambda j: (-source_scores[p][j - k], rng.random()))
            online = pool[:replace_num] + online[replace_num:]
        noisy = judge.score([r] * len(online), [ys[j] for j in online], seed=seed)
        top, low = max(noisy), min(noisy)
        if not separates(noisy, min_margin):
            continue
        w = rng.choice([j for j, s in zip(online, noisy) if s == top])
        lo = rng.choice([j for j, s in zip(online, noisy) if s == low])
        chosen.append(us[w])
        rejected.append(us[lo])
        from_pool += w >= k
    c, rj = np.array(chosen), np.array(rejected)

    def mean(x) -> float:  # nan when the margin kept no pair
        return float(x.mean()) if len(x) else float("nan")
    return {"kept": len(c) / len(rows), "chosen": mean(c), "rejected": mean(rj), "gap": mean(c - rj),
            "flat_pairs": mean(c == rj), "wrong_pairs": mean(c < rj), "chosen_transferred": from_pool / max(len(c), 1)}


def best_of_n(samples, source_scores, utilities, k: int) -> float:
    """Mean utility of the source's top pool pick minus that of an untransferred sample (the last online one)."""
    return float(np.mean([us[k + int(np.argmax(s))] - us[k - 1] for s, us in zip(source_scores, utilities)]))


def report(recipe: Recipe, scorers: dict, n_prompts: int = 200, k: int | None = None, n_pool: int | None = None) -> str:
    rows = load_split(recipe.out / "data", "eval")[:n_prompts]
    if not rows or "facts" not in rows[0]:
        return "(no planted facts: the world report needs data.source=synthetic)"
    judge = build_judge(recipe)
    if not hasattr(judge, "weights"):
        return f"(the world report needs the oracle judge; this recipe's judge is {judge.name})"
    weights = judge.weights
    k = k or recipe.online.k
    n_pool = n_pool or max(recipe.online.n_pool, 1)
    replace_num = max(1, min(recipe.online.replace_num, k - 1))
    gen = dict(max_new_tokens=recipe.online.max_new_tokens, batch_size=recipe.online.gen_batch_size)
    policy = load_policy(policy_config(recipe, recipe.out / "sft" / "model"))
    docs = [r["document"] for r in rows]
    greedy = [s[0] for s in policy.sample(docs, 1, temperature=0.0, **gen)]
    samples = policy.sample(docs, k + n_pool, temperature=recipe.online.temperature, top_k=recipe.online.top_k,
                            seed=123, **gen)
    train = load_split(recipe.out / "data", "train")[:n_prompts]
    train_samples = policy.sample([r["document"] for r in train], 1, temperature=recipe.online.temperature,
                                  top_k=recipe.online.top_k, seed=123, **gen)
    others = [r["summary"] for r in rows]
    random.Random(0).shuffle(others)
    table = {"reference": fact_table(rows, [r["summary"] for r in rows], weights),
             "sft_greedy": fact_table(rows, greedy, weights),
             "sft_sample": fact_table([r for r in rows for _ in range(k + n_pool)], [y for ys in samples for y in ys],
                                      weights),
             "sft_sample_train_prompts": fact_table(train, [s[0] for s in train_samples], weights),
             "random_other_reference": fact_table(rows, others, weights)}
    cover = coverage(rows, samples, k)
    agreement = source_agreement(rows, [ys[:_AGREEMENT_SAMPLES] for ys in samples], scorers, weights)
    utilities = [[utility(r, y, weights) for y in ys] for r, ys in zip(rows, samples)]
    pools = [ys[k:] for ys in samples]
    pool_scores = {name: _scores(fn, rows, pools) for name, fn in scorers.items()}
    pool_scores["(perfect: the judge's utility)"] = [us[k:] for us in utilities]
    pool_scores["(anti-oracle: minus the utility)"] = [[-u for u in us[k:]] for us in utilities]
    margin = recipe.online.min_margin
    rounds = {"no transfer": labelling_round(rows, samples, None, utilities, judge, k, replace_num, min_margin=margin)}
    bon = {}
    for name, s in pool_scores.items():
        rounds[name] = labelling_round(rows, samples, s, utilities, judge, k, replace_num, min_margin=margin)
        bon[name] = best_of_n(samples, s, utilities, k)

    lines = [f"# World report: {recipe.name}", "",
             f"Judge {judge.name}. SFT samples at T={recipe.online.temperature:g} on {len(rows)} held-out prompts "
             f"(K={k} online + N={n_pool} pool each); the train-prompt row: {len(train)} train prompts.", "",
             "## 1. Facts stated (share of summaries), rival facts, invented entities, words, mean utility", "",
             "| summaries | " + " | ".join(FACTS) + " | rival fact | invented/summary | words | utility |",
             "|---" * (len(FACTS) + 5) + "|"]
    for name, t in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[f]:.2f}" for f in FACTS) + f" | {t['rival_fact']:.2f} | "
                     f"{t['invented_per_summary']:.2f} | {t['words']:.1f} | {t['oracle_utility']:+.2f} |")
    lines += ["", f"## 2. Coverage: P(stated) per sample, in one of the K={k} online samples, in one of all "
                  f"K+N={k + n_pool}", "",
              "| fact | per sample | in K online | in K+N pool | go (per sample in 10-30 %) |", "|---|---|---|---|---|"]
    for fact, c in cover.items():
        go = "yes" if _GO[0] <= c["sample"] <= _GO[1] else "no"
        lines.append(f"| {fact} | {c['sample']:.3f} | {c['online']:.3f} | {c['pool']:.3f} | {go} |")
    lines += ["", f"## 3. Sources: agreement with the judge's utility ({agreement['n_pairs']} pairs of samples with "
              "different utility; 0.5 = chance), Best-of-N gain, one simulated labelling round "
              f"(K={k}, replace_num={replace_num}, N={n_pool}, pairs kept if the judge's scores span >= "
              f"{margin:g}; the last four columns are over kept pairs)", "",
              "| source | agreement | BoN pick − sample (utility) | pairs kept | chosen utility | "
              "chosen − rejected gap | pairs with no utility gap | chosen truly worse | chosen is transferred |",
              "|---" * 9 + "|"]
    for name, rd in rounds.items():
        agree = f"{agreement[name]:.3f}" if name in agreement else "—"
        gain = f"{bon[name]:+.3f}" if name in bon else "—"
        lines.append(f"| {name} | {agree} | {gain} | {rd['kept']:.2f} | {rd['chosen']:+.3f} | {rd['gap']:.3f} | "
                     f"{rd['flat_pairs']:.2f} | {rd['wrong_pairs']:.2f} | {rd['chosen_transferred']:.2f} |")
    text = "\n".join(lines) + "\n"
    (recipe.out / "world_report.md").write_text(text)
    (recipe.out / "world_report.json").write_text(json.dumps(
        {"facts": table, "coverage": cover, "agreement": agreement, "best_of_n": bon, "rounds": rounds}, indent=1))
    return text


def _scores(fn, rows, pools) -> list[list[float]]:
    flat_rows = [r for r, ys in zip(rows, pools) for _ in ys]
    flat = fn([r["document"] for r in flat_rows], [y for ys in pools for y in ys], [r["summary"] for r in flat_rows])
    out, i = [], 0
    for ys in pools:
        out.append([float(v) for v in flat[i:i + len(ys)]])
        i += len(ys)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    force = "--force" in argv
    argv = [a for a in argv if a != "--force"]
    if not argv:
        print("error: a recipe is required; usage: python -m eval.world_report RECIPE [--force] [key=value ...]",
              file=sys.stderr)  # the one-line form of every command's errors
        return 2
    configure_threads()

    def body():
        recipe = load_recipe(argv[0], argv[1:])
        check_names(recipe, "sources")
        run(recipe, until="sources", force=force)
        print(report(recipe, build_scorers(recipe)))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
