"""`python -m pipeline replay RECIPE --pairs METHOD:SEED --start S`: train build S's SFT checkpoint on the pairs
one table run formed in its first iteration, and measure the gain over that SFT checkpoint. `--all online.lr=3e-4`
(any UPDATE_KEYS override): every run on its own build under that update, as a table (replay_table).

Why: when the same method gives very different results on two builds, either its pairs differed or the two
policies responded differently to alike pairs. Crossing them (the pairs of build a's run on build b's policy and
the reverse) tells which. The update is the online loop's own (pipeline.online.update, with the reference
log-probabilities of the starting checkpoint) with the pairs' run's update seed, so replaying a run on its own
build reproduces that run's checkpoint; the command checks it and says so. Pairs are read back from the run's
label store as eval/training_pairs.py reads them (the judge's highest and lowest answer per prompt, in the order
the loop formed them).

Iteration 1 only: a later iteration starts from the run's previous checkpoint, which has no counterpart on another
build. Not for XPO, whose extra sample of the reference policy is not stored.

Overrides of the update's own settings (online.lr=3e-4, online.epochs=1, ...: UPDATE_KEYS) replay the same pairs on
the same policy under another update; they name the folder and the row, so they never read another's results.

Writes runs/<name>/replay/<method>_seed<p>_on_build<s>[_<changed settings>]/ (model, metrics.json, DONE) and one
line per replay in runs/<name>/replay/replay.csv: pairs, utility of the replayed checkpoint and of the starting SFT
checkpoint on the table's draw (table.utility_prompts x table.utility_samples, sampling seed S), the gain; in the
synthetic world also what that gain is made of (BEHAVIOUR below): how far the replay moved each fact rate, invented
names and length from its SFT's, beside how far the pairs' chosen responses differ from their rejected ones. And how
well the replay fits its own pairs (fit_*: the DPO implicit reward's accuracy on them, overall and on the pairs that
teach a fact), which tells a policy that did not learn its pairs from one that learnt them without sampling otherwise;
scored once into fit.json (two no-grad passes over the pairs). And where the place's probability moved (slot_*: the
planted place's probability at the SFT's own place slots and at the slots its pairs taught; slot_contexts), scored
once into slot.json.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from filelock import FileLock

from eval import paired
from eval.training_pairs import chosen_rejected
from eval.world_report import fact_table
from pipeline import world
from pipeline.cli import check_names, run_command
from pipeline.config import ConfigError, Recipe, load_recipe, to_dict
from pipeline.durable import atomic_write_text
from pipeline.labels import LabelStore
from pipeline.models import load_policy
from pipeline.online import Pair, reference_logprobs, update
from pipeline.runner import build_judge, configure_threads, load_split, policy_config
from pipeline.table import (
    SFT_ROW,
    _cache,
    _cached,
    _draw_key,
    all_methods,
    build_recipe,
    draw,
    exact_utilities,
    methods,
    run_dir,
    runs,
    sample_sft,
)
from reward_sources.contracts import knows_utility

# What the samples state (eval.world_report.fact_table, the table's behaviour.md columns), in the synthetic world:
# d_<c> is the replayed checkpoint's rate minus its starting SFT's on the same draw (what the update changed),
# taught_<c> the pairs' chosen minus rejected responses (what the pairs ask it to change): the gain split into parts.
BEHAVIOUR = ("person", "place", "number", "rival_fact", "invented_per_summary", "words")
FIELDS = ["method", "pairs_seed", "start_build", "update", "pairs", "utility", "sft_utility", "gain",
          "reproduces_run", "fit_accuracy", "fit_margin", "fit_person", "fit_place",
          *(f"d_{c}" for c in BEHAVIOUR), *(f"taught_{c}" for c in BEHAVIOUR),
          "slot_place_sft", "slot_place", "slot_taught", "slot_doc_sft", "slot_doc"]
# What the update reads (pipeline.online.update, reference_logprobs): a replay may change these, e.g. online.lr=3e-4,
# to ask how the same pairs train the same policy under another update; the rest of online made the pairs.
UPDATE_KEYS = ("loss", "beta", "xpo_alpha", "nll_alpha", "sft_anchor", "reference", "lr", "warmup", "epochs",
               "batch_size", "max_grad_norm")


def changed_update(recipe: Recipe) -> str:
    """The update settings that differ from the run that made the pairs ('' when none), e.g. 'lr=0.0003': part of
    the replay's folder name and its row, so replays under other settings never read each other's results."""
    saved = (yaml.safe_load((recipe.out / "config.yaml").read_text()) or {}).get("online", {})
    now = to_dict(recipe)["online"]
    return ",".join(f"{k}={now[k]}" for k in UPDATE_KEYS if k in saved and saved[k] != now[k])


def _training_seed(recipe: Recipe, method: str, seed: int) -> int:
    for label, _, s, training_seed in runs(recipe):
        if (label, s) == (method, seed):
            return training_seed
    raise ConfigError(f"--pairs {method}:{seed}: no such run in the table (methods "
                      f"{', '.join(dict.fromkeys(label for label, *_ in runs(recipe)))}; seeds {recipe.table.seeds})")


def check(recipe: Recipe, method: str, pairs_seed: int, start: int) -> None:
    """Every refusal in one line, before any model is loaded."""
    _training_seed(recipe, method, pairs_seed)
    if start not in recipe.table.seeds:
        raise ConfigError(f"--start {start} is not one of table.seeds {recipe.table.seeds}")
    if recipe.online.loss == "xpo":
        raise ConfigError("replay cannot rerun XPO: its extra sample of the reference policy is not stored")
    if not knows_utility(build_judge(recipe, recipe.eval.judge)):
        raise ConfigError("replay reports the exact utility: the eval judge must know it (the synthetic oracle)")
    src = run_dir(recipe, method, pairs_seed) / "online" / "iter_1"
    if not (src / "DONE").exists():
        raise ConfigError(f"'{src}' is not finished: run the table first")
    sft = build_recipe(recipe, start).out / "sft" / "DONE"
    if not sft.exists():
        raise ConfigError(f"'{sft.parent}' is not finished: run the table first")


def replay(recipe: Recipe, method: str, pairs_seed: int, start: int) -> dict:
    """Train build `start`'s SFT checkpoint on the iteration-1 pairs of run (method, pairs_seed); one result row."""
    check(recipe, method, pairs_seed, start)
    what = changed_update(recipe)
    out = recipe.out / "replay" / (f"{method}_seed{pairs_seed}_on_build{start}" + (f"_{what}" if what else ""))
    b = build_recipe(recipe, start)
    start_cfg = policy_config(b, b.out / "sft" / "model")
    train = load_split(recipe.out / "data", "train")
    by_id = {r["id"]: r for r in train}
    found = read_pairs(recipe, method, pairs_seed)
    # explore is XPO's untransferred sample, refused above: DPO and IPO never read it
    pairs = [Pair(by_id[pid], chosen, rejected, "") for pid, chosen, rejected in found]
    if not (out / "DONE").exists():
        cfg = dataclasses.replace(recipe.online, seed=_training_seed(recipe, method, pairs_seed))
        policy = load_policy(start_cfg)
        ref = reference_logprobs(policy, pairs, cfg, start_cfg if cfg.reference == "initial" else None)
        stats = update(policy, pairs, ref, cfg, seed=cfg.seed * 1000 + 1,
                       anchor_rows=train if cfg.sft_anchor else None)
        policy.save(out / "model")
        atomic_write_text(out / "metrics.json", json.dumps(dict(stats, pairs=len(pairs)), indent=2))
        atomic_write_text(out / "DONE", "")
    if not (out / "fit.json").exists():  # the pairs scored by the trained checkpoint and its start (no grad)
        lp = {name: reference_logprobs(load_policy(cfg), pairs, recipe.online, None)
              for name, cfg in (("start", start_cfg), ("replay", policy_config(b, out / "model")))}
        atomic_write_text(out / "fit.json", json.dumps({k: {side: v.tolist() for side, v in d.items()}
                                                        for k, d in lp.items()}))
    tc = recipe.table
    rows = load_split(recipe.out / "data", "test")[: max(tc.n_prompts, tc.utility_prompts)]
    k = max(recipe.eval.samples_per_prompt, tc.utility_samples)
    n = min(tc.utility_prompts, len(rows))
    judge = build_judge(recipe, recipe.eval.judge)
    drawn = draw(recipe, b, out / "model", out / f"test_samples_p{len(rows)}_x{k}.json",
                 _draw_key(recipe, rows, start), rows, k, start)
    sft = sample_sft(recipe, start, len(rows), k)  # the table's own draw when it made one
    utilities = lambda samples: exact_utilities(judge, rows, samples, n, tc.utility_samples)
    u_all, u_sft_all = utilities(drawn), utilities(sft)
    u, u_sft = float(u_all.mean()), float(u_sft_all.mean())
    same = ""
    if start == pairs_seed and not what:  # the run itself, replayed: the same checkpoint, so the same samples
        own = _cached(_cache(recipe, method, pairs_seed, 1, len(rows), k), _draw_key(recipe, rows, start))
        same = "" if own is None else ("yes" if own == drawn else f"no (run {utilities(own).mean():+.3f})")
    row = dict(method=method, pairs_seed=pairs_seed, start_build=start, update=what, pairs=len(pairs), utility=u,
               sft_utility=u_sft, gain=u - u_sft, reproduces_run=same,
               utilities=u_all, sft_utilities=u_sft_all)  # the last two, (prompts, samples) arrays, stay out of the csv
    row.update(fit(json.loads((out / "fit.json").read_text()), found, by_id))
    if "facts" in rows[0] and hasattr(judge, "weights"):
        row.update(behaviour_change(judge, rows[:n], drawn, sft, tc.utility_samples, found, by_id))
        row.update(slots(out, start_cfg, policy_config(b, out / "model"), rows[:n], sft, tc.utility_samples, found,
                         by_id))
    _append(recipe.out / "replay" / "replay.csv", row)
    return row


def replay_table(recipe: Recipe) -> str:
    """Every run of the table replayed on its own build under the recipe's changed update settings, summarised as
    the table summarises its runs: paired differences against the baseline and against each build's SFT, with a
    t-interval over training seeds. At iteration 1 the pairs do not depend on the update (they come from the SFT's
    samples, the sources and the judge), so this is the iteration-1 table a recipe with those settings would give,
    for the cost of the updates alone. Writes runs/<name>/replay/table_<changed settings>/{paired,vs_sft}.*"""
    what = changed_update(recipe)
    if not what:
        raise ConfigError("--all replays the table under another update: give one, e.g. online.lr=3e-4 (without "
                          "one it would only reproduce the table's own runs)")
    todo = [(label, s) for label, _, s, _ in runs(recipe)]
    for label, s in todo:  # every refusal before the first update
        check(recipe, label, s, s)
    u = {}
    for i, (label, s) in enumerate(todo, 1):
        r = replay(recipe, label, s, s)
        print(f"[{i}/{len(todo)}] {label} seed {s} ({what}): gain over its SFT {r['gain']:+.3f}", flush=True)
        u[(label, s, 1)], u[(SFT_ROW, s, 1)] = r["utilities"], r["sft_utilities"]
    judge = build_judge(recipe, recipe.eval.judge)
    temperature = getattr(judge, "temperature", 0.0)
    labels = [label for label, _ in all_methods(recipe)]
    n, k = next(iter(u.values())).shape
    head = (f"Every run's iteration-1 pairs replayed on its own build with {what} (python -m pipeline replay --all). "
            + paired.header(judge.name, recipe.table.seeds, n, k, temperature))
    out = recipe.out / "replay" / f"table_{what}"
    out.mkdir(parents=True, exist_ok=True)
    md = paired.write(out, paired.paired_rows(u, recipe.table.baseline, temperature, labels), head)
    return md + "\n\n" + paired.write(out, paired.paired_rows(u, SFT_ROW, temperature, labels),
                                       f"Gain over each build's SFT. {head}", stem="vs_sft")


def read_pairs(recipe: Recipe, method: str, seed: int) -> list[tuple[str, str, str]]:
    """(prompt id, chosen, rejected) of the run's first iteration, in the order the loop formed them."""
    store = LabelStore(run_dir(recipe, method, seed) / "labels.sqlite")
    try:
        return chosen_rejected(store.scalar_answers(1))
    finally:
        store.close()


def fit(lp: dict, found: list, train: dict) -> dict:
    """How well the replayed checkpoint fits the pairs it trained on: the share whose chosen response gained more
    log-probability from the start than the rejected one (the DPO implicit reward ranks them right), its mean
    margin, and in the synthetic world the share among the pairs whose chosen response states the person / place
    and whose rejected one does not (NaN when there are none)."""
    margin = (np.array(lp["replay"]["w"]) - np.array(lp["start"]["w"])
              - (np.array(lp["replay"]["l"]) - np.array(lp["start"]["l"])))
    share = lambda m: float(np.mean(m > 0)) if len(m) else float("nan")
    out = {"fit_accuracy": share(margin), "fit_margin": float(np.mean(margin)) if len(margin) else float("nan")}
    for fact in ("person", "place"):
        out[f"fit_{fact}"] = share(margin[np.array([_teaches(train[pid], c, r, fact) for pid, c, r in found],
                                                   dtype=bool)])
    return out


def _teaches(row: dict, chosen: str, rejected: str, fact: str) -> bool:
    """The pair's chosen response states the planted fact and its rejected one does not."""
    return ("facts" in row and world.fact_hits(row["facts"], chosen)[fact]
            and not world.fact_hits(row["facts"], rejected)[fact])


def slot_contexts(rows: list[dict], samples: list, k: int, found: list, train: dict) -> dict[str, list]:
    """(document, prefix, planted place, the document's other places) at each slot (docs/testbed.md, the slot
    diagnostic). own: every one of the first k samples per row that names a place-like word, cut before the first
    one. taught: every place-teaching pair's chosen response, cut before the planted place."""
    at = lambda row, prefix: (row["document"], prefix.rstrip(), row["facts"]["place"],
                              list(row["facts"].get("distractors", {}).get("place", [])))
    own = [at(r, y[:o]) for r, ys in zip(rows, samples) for y in ys[:k] if (o := world.place_slot(y)) is not None]
    taught = [at(train[pid], c[: world.name_offset(c, train[pid]["facts"]["place"])]) for pid, c, r in found
              if _teaches(train[pid], c, r, "place")]
    return {"own": own, "taught": taught}


def slots(out: Path, start_cfg, replay_cfg, rows: list[dict], sft: list, k: int, found: list, train: dict) -> dict:
    """The slot columns: the probability of the planted place's tokens at the own and the taught slots under the
    starting SFT and the replayed checkpoint, and at the own slots that of any place the document names (the planted
    one or another: how much of the slot goes to copying a place at all). Log-probs scored once into slot.json (no
    grad)."""
    path = out / "slot.json"
    if not path.exists():
        contexts = slot_contexts(rows, sft, k, found, train)
        # own_doc: every place of the document at every own slot, summed per slot below
        contexts["own_doc"] = [(d, p, x, []) for d, p, planted, others in contexts["own"] for x in [planted, *others]]
        sizes = [1 + len(others) for *_, others in contexts["own"]]
        lp = {}
        for name, cfg in (("start", start_cfg), ("replay", replay_cfg)):
            policy = load_policy(cfg)
            for kind, ctx in contexts.items():
                got = policy.continuation_logprobs([c[0] for c in ctx], [c[1] for c in ctx],
                                                   [(" " if c[1] else "") + c[2] for c in ctx]).double()
                if kind == "own_doc" and sizes:
                    got = torch.stack([g.logsumexp(0) for g in got.split(sizes)])
                lp.setdefault(name, {})[kind] = got.tolist()
        atomic_write_text(path, json.dumps(lp))
    lp = json.loads(path.read_text())
    prob = lambda name, kind: np.exp(np.array(lp[name][kind], dtype=float))
    mean = lambda a: float(a.mean()) if len(a) else float("nan")
    return {"slot_place_sft": mean(prob("start", "own")),
            "slot_place": mean(prob("replay", "own") - prob("start", "own")),
            "slot_taught": mean(prob("replay", "taught") - prob("start", "taught")),
            "slot_doc_sft": mean(prob("start", "own_doc")),
            "slot_doc": mean(prob("replay", "own_doc") - prob("start", "own_doc"))}


def behaviour_change(judge, rows: list[dict], drawn: list, sft: list, k: int, found: list, train: dict) -> dict:
    """The d_* and taught_* columns (BEHAVIOUR): the replay's first k samples per prompt against its SFT's, and the
    pairs' chosen against their rejected responses."""
    flat_rows = [r for r in rows for _ in range(k)]
    table = lambda samples: fact_table(flat_rows, [y for ys in samples[: len(rows)] for y in ys[:k]], judge.weights)
    now, start = table(drawn), table(sft)
    on = [train[pid] for pid, _, _ in found]
    chosen = fact_table(on, [c for _, c, _ in found], judge.weights)
    rejected = fact_table(on, [r for _, _, r in found], judge.weights)
    return {**{f"d_{c}": now[c] - start[c] for c in BEHAVIOUR},
            **{f"taught_{c}": chosen[c] - rejected[c] for c in BEHAVIOUR}}


def _append(path: Path, row: dict) -> None:
    """replay.csv with this row replacing an earlier replay of the same (method, pairs seed, build). Replays run
    side by side (two at a time on two cores), so the read-modify-write holds a lock: without it two finishing at
    once each rewrite the file from what they read and one row is lost."""
    key = lambda r: (str(r["method"]), str(r["pairs_seed"]), str(r["start_build"]), str(r.get("update") or ""))
    with FileLock(path.with_name(path.name + ".lock")):
        old = []
        if path.exists():
            with open(path, newline="") as fh:
                old = [r for r in csv.DictReader(fh) if key(r) != key(row)]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(old + [row])
        atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline replay", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="the table's recipe (its runs must be finished)")
    parser.add_argument("--pairs", metavar="METHOD:SEED",
                        help="the table run whose iteration-1 pairs are replayed, e.g. tpo:0")
    parser.add_argument("--start", type=int, metavar="S",
                        help="the training seed whose build's SFT checkpoint is trained on them")
    parser.add_argument("--all", action="store_true",
                        help="replay every run on its own build under the update settings given as overrides "
                             "(e.g. online.lr=3e-4) and write their table (replay/table_<settings>/)")
    args, overrides = parser.parse_known_args(argv)
    configure_threads()

    def body():
        one = args.pairs is not None and args.start is not None
        if not (one and not args.all or args.all and args.pairs is None and args.start is None):
            raise ConfigError("give either --pairs METHOD:SEED and --start S, or --all")
        method, _, seed = (args.pairs or "").rpartition(":")
        if one and (not method or not seed.lstrip("-").isdigit()):
            raise ConfigError(f"--pairs must be METHOD:SEED, e.g. tpo:0, got '{args.pairs}'")
        recipe = load_recipe(args.recipe, overrides)
        check_names(recipe, table=True)
        methods(recipe)
        if args.all:
            print(f"\n{replay_table(recipe)}")
            return
        r = replay(recipe, method, int(seed), args.start)
        how = f" ({r['update']})" if r["update"] else ""
        print(f"{method} seed {seed}'s {r['pairs']} pairs on build {args.start}{how}: utility {r['utility']:+.3f}, SFT "
              f"{r['sft_utility']:+.3f}, gain {r['gain']:+.3f}" + (f"; reproduces the run: {r['reproduces_run']}"
                                                                    if r["reproduces_run"] else ""))
        if "d_person" in r:
            print("change over the SFT (the pairs' chosen - rejected): " + ", ".join(
                f"{c} {r[f'd_{c}']:+.2f} ({r[f'taught_{c}']:+.2f})" for c in BEHAVIOUR))
            print(f"the planted place's probability: at the SFT's own place slots {r['slot_place_sft']:.3f} "
                  f"{r['slot_place']:+.3f}, where the pairs taught it {r['slot_taught']:+.3f}; any of the "
                  f"document's places at the own slots {r['slot_doc_sft']:.3f} {r['slot_doc']:+.3f}")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
