"""Online stage: the iterations of docs/algorithms.md §1, readable top to bottom.

Per iteration: a fresh seeded draw of prompts; K + N samples per prompt from the current policy; per block
of prompts the selector picks an arm, Best-of-N transfer replaces online responses, the judge labels all K
(through the label store), and the arm's wins update the selector; pairs = judge's best vs worst (ties
dropped); reference log-probs computed once, before the update; DPO / IPO / XPO epochs; checkpoint.
A selection stage (pipeline/selection/*_selector.py) may label a block its own way (which pairs, which teacher or
annotator) and return its own per-response scores (LCB / PRS / proxy); pairs are then its best vs worst.
Several processes (accelerate launch; pipeline/distributed.py): generation is sharded, the labelling runs on the
main process alone, and the update is DDP; one process runs exactly as it did without them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from pipeline import distributed, tracking
from pipeline.config import ModelConfig, OnlineConfig
from pipeline.durable import atomic_write_text, crash_point
from pipeline.labels import LabelStore, judge_handler, separates
from pipeline.losses import preference_loss
from pipeline.models import Policy, load_policy
from pipeline.selection.base import SELF, LabelContext
from pipeline.selection.registry import build_selector
from pipeline.sft import lr_lambda
from pipeline.transfer import ScoreCache, transfer
from reward_sources.contracts import is_shardable, knows_utility

log = logging.getLogger(__name__)


class OnlineStopped(RuntimeError):
    """The online stage cannot go on (judge failing too often, nothing to learn from): one line for the CLI."""


def _argext(scores: list, rng: random.Random, sign: int) -> int:
    valid = [(s, i) for i, s in enumerate(scores) if s is not None]
    best = max(sign * s for s, _ in valid)
    return rng.choice([i for s, i in valid if sign * s == best])  # ties: at random, never the first sample


class Pair(NamedTuple):
    """One labelled preference pair of a prompt."""

    row: dict        # the prompt's data row (id, document, summary, ...)
    chosen: str      # the judge's highest-scored response
    rejected: str    # its lowest-scored response
    explore: str     # an untransferred sample of the reference policy (XPO's ỹ)


def make_pairs(rows, responses, scores, rng: random.Random, min_margin: float = 0.0) -> tuple[list[Pair], int]:
    """chosen = judge's highest, rejected = its lowest; prompts whose responses all tie, or whose scores span less
    than min_margin, are dropped (counted in the second value)."""
    pairs, dropped = [], 0
    for r, ys, ss in zip(rows, responses, scores):
        valid = [s for s in ss if s is not None]
        if not separates(valid, min_margin):
            dropped += 1
            continue
        # the last response is never replaced by transfer (replace_num < K): a sample of π_ref, for XPO
        pairs.append(Pair(r, ys[_argext(ss, rng, +1)], ys[_argext(ss, rng, -1)], ys[-1]))
    return pairs, dropped


def update(policy: Policy, pairs: list[Pair], ref: dict, cfg: OnlineConfig, seed: int, on_step=None,
           anchor_rows: list[dict] | None = None) -> dict:
    """Epochs of the preference loss over the iteration's pairs; reference log-probs given (precomputed).
    With cfg.sft_anchor, each step adds that weight times the token-mean NLL of batch_size (document, reference)
    rows drawn from anchor_rows. on_step(stats) is called after each optimizer step (the tracker's per-step
    curves)."""
    if cfg.sft_anchor and not anchor_rows:
        raise ValueError("online.sft_anchor > 0 needs rows with reference summaries to anchor to")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    anchor = _anchor(anchor_rows, cfg, seed) if cfg.sft_anchor else None
    total = cfg.epochs * math.ceil(len(pairs) / cfg.batch_size)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_lambda(step, cfg.warmup, total))
    tokens_w = None
    if cfg.nll_alpha:  # the NLL term is per token of the chosen response
        tokens_w = torch.tensor(policy.token_counts([p.chosen for p in pairs]), dtype=torch.float32)
    policy.train()
    history = []
    world = distributed.world_size()
    with distributed.data_parallel(policy), tqdm(total=total, desc="update", leave=False,
                                                 **distributed.bar_kwargs()) as bar:
        _epochs(policy, pairs, ref, tokens_w, cfg, rng, opt, sched, bar, history, world, on_step, anchor)
    policy.eval()
    return {"steps": total, "loss_first": history[0]["loss"] if history else None,
            "loss_last": history[-1]["loss"] if history else None,
            "margin_last": history[-1]["margin"] if history else None, "world_size": world}


def _anchor(rows: list[dict], cfg: OnlineConfig, seed: int):
    """A function of the policy: the token-mean NLL of the references of batch_size random rows. Its own random
    draws, so the pairs' order is the same with or without the anchor."""
    rng = random.Random(f"anchor-{seed}")

    def nll(policy: Policy) -> torch.Tensor:
        batch = rng.sample(rows, min(cfg.batch_size, len(rows)))
        total, _, count = policy.logprobs([r["document"] for r in batch],
                                          [policy.truncate_text(r["summary"], cfg.max_new_tokens) for r in batch],
                                          batch_size=len(batch), grad=True)
        return -total.sum() / count.sum()
    return nll


def _epochs(policy, pairs, ref, tokens_w, cfg, rng, opt, sched, bar, history, world, on_step, anchor=None) -> None:
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    for epoch in range(cfg.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if world > 1:  # this process's share of the batch (at least one pair, weighted 0 if it had none)
                batch = len(idx)
                mine = distributed.shard(idx)
                share, idx = (len(mine), mine) if mine else (0, idx[:1])
            m = 3 if cfg.loss == "xpo" else 2  # chosen, rejected (and XPO's own sample), one prompt encoding
            lp = policy.shared_logprobs([pairs[i].row["document"] for i in idx],
                                        [[pairs[i].chosen, pairs[i].rejected, pairs[i].explore][:m] for i in idx],
                                        batch_size=len(idx), grad=True)
            ref_w, ref_l = ref["w"][idx].to(lp.device), ref["l"][idx].to(lp.device)
            loss, stats = preference_loss(cfg.loss, lp[:, 0], lp[:, 1], ref_w, ref_l, cfg.beta, cfg.xpo_alpha,
                                          lp[:, 2] if cfg.loss == "xpo" else None, cfg.nll_alpha,
                                          None if tokens_w is None else tokens_w[idx].to(lp.device))
            stats |= _logratio_stats(lp[:, 0], lp[:, 1], ref_w, ref_l)
            if world > 1:  # DDP averages gradients over processes: scaled so the average is the batch mean
                loss = loss * (share * world / batch)
                whole = distributed.all_sum(torch.tensor([loss.item()] + [v * share for v in stats.values()],
                                                         dtype=torch.float64))
                loss_value = whole[0].item() / world  # the batch's loss, the same on every process
                stats = {k: whole[i].item() / batch for i, k in enumerate(stats, 1)}
            else:
                loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()  # so the one-line error does not land after the progress bar
                raise FloatingPointError(f"non-finite {cfg.loss} loss at epoch {epoch} step {b}; "
                                         "the last good checkpoint is kept (lower online.lr?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if anchor is not None:
                # a second forward and backward (under DDP, one forward per backward); every process takes the
                # same rows, so the averaged gradient is this batch's
                nll = anchor(policy)
                (cfg.sft_anchor * nll).backward()
                stats["anchor_nll"] = nll.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            step_lr = opt.param_groups[0]["lr"]
            sched.step()
            crash_point("update")
            history.append({"epoch": epoch, "loss": loss_value, **stats})
            if on_step is not None:
                on_step({"loss": loss_value, **stats, "lr": step_lr, "grad_norm": grad_norm.item()})
            bar.set_postfix(loss=f"{loss_value:.3f}", margin=f"{stats['margin']:.2f}")
            bar.update()


def _logratio_stats(pi_w, pi_l, ref_w, ref_l) -> dict:
    """Batch means of log π/π_ref for the chosen and the rejected responses, and k1 = −mean log π/π_ref over both,
    the plain estimate of KL(π_ref‖π) from draws of π_ref. Here the draws were picked by the judge (its best and
    worst of K, some transferred from the pool; under online.reference=initial, draws of the current iterate), so it
    tracks how far the update has moved rather than measuring the KL exactly, and it can dip below 0."""
    chosen, rejected = (pi_w - ref_w).detach(), (pi_l - ref_l).detach()
    # one device-to-host copy per optimizer step, not three
    values = torch.stack([chosen.mean(), rejected.mean(), -torch.cat([chosen, rejected]).mean()]).tolist()
    return dict(zip(("chosen_logratio", "rejected_logratio", "kl_ref"), values))


def reference_logprobs(policy: Policy, pairs, cfg: OnlineConfig, initial: ModelConfig | None) -> dict:
    """Once per iteration, before the update, so no reference model is held in memory during it."""
    ref_model = policy if initial is None else load_policy(initial)
    # each process scores its share of the pairs; everyone gets all
    mine = distributed.shard(list(range(len(pairs))))
    lp = ref_model.shared_logprobs([pairs[i].row["document"] for i in mine],
                                   [[pairs[i].chosen, pairs[i].rejected] for i in mine])
    if ref_model is not policy:
        del ref_model
    lp = torch.tensor(distributed.unshard(distributed.gather(lp.tolist()), len(pairs)), dtype=torch.float32)
    return {"w": lp[:, 0], "l": lp[:, 1]} if pairs else {"w": torch.zeros(0), "l": torch.zeros(0)}


def run_iteration(t: int, policy: Policy, train_rows: list[dict], judge, store: LabelStore, scorers: dict,
                  selector, cfg: OnlineConfig, initial: ModelConfig | None, out_dir: Path, on_step=None) -> dict:
    timings, t0 = {}, time.time()
    rng = random.Random(f"{cfg.seed}-{t}")
    rows = rng.sample(train_rows, min(cfg.prompts_per_iteration, len(train_rows)))
    n_pool = cfg.n_pool if scorers and selector.uses_pool else 0
    # Keyed by prompt id, seeded by (online seed, iteration) only: sample j of a prompt is the same draw whether
    # or not a pool is drawn after it, so at iteration 1 every method (no transfer, TPO, pure exploit) labels the
    # same online samples 0..K-1 before transfer; the pool is samples K..K+N-1 (one call: the encoder runs once).
    samples = policy.sample([r["document"] for r in rows], cfg.k + n_pool, temperature=cfg.temperature,
                            top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size,
                            seed=cfg.seed * 1000 + t, shard=True, keys=[r["id"] for r in rows], first=0)
    timings["generate_s"] = time.time() - t0
    crash_point("generate")
    # judge, label store and selector: the main process only, the others scoring their share of what it asks;
    # every process gets the pairs
    cache = ScoreCache(scorers)
    serve = cache.handlers() | ({"judge": judge_handler(judge)} if is_shardable(judge) else {})
    responses, scores, arm_rows, judge_stats, pairs, dropped = distributed.on_main(
        _label, t, rows, samples, judge, store, cache, selector, cfg, rng, timings, serve=serve)
    t2 = time.time()
    ref = reference_logprobs(policy, pairs, cfg, initial if cfg.reference == "initial" else None)
    timings["reference_s"] = time.time() - t2
    t3 = time.time()
    try:
        upd = update(policy, pairs, ref, cfg, seed=cfg.seed * 1000 + t, on_step=on_step,
                     anchor_rows=train_rows if cfg.sft_anchor else None)
    except FloatingPointError as e:
        raise FloatingPointError(f"iteration {t}: {e}") from None
    timings["update_s"] = time.time() - t3
    return distributed.on_main(_result, t, rows, responses, scores, arm_rows, judge_stats, pairs, dropped, upd,
                               timings, judge, store, selector, cfg, n_pool)


def _label(t, rows, samples, judge, store, cache, selector, cfg, rng, timings):
    """Transfer and judge labels block by block (selector chooses the arm), then the iteration's pairs."""
    selector.new_iteration(t)
    block = selector.block_size or len(rows)
    responses, scores, arm_rows = [], [], []
    judge_stats = {"labels": 0, "failed": 0}  # selectors that pay per teacher add "cost"
    t1 = time.time()
    store.judged_per_process = []  # this iteration's
    for b, start in enumerate(tqdm(range(0, len(rows), block), desc=f"iter {t} label", leave=False)):
        brows, bsamples = rows[start : start + block], samples[start : start + block]
        arm, value = selector.choose()
        online = [s[: cfg.k] for s in bsamples]
        pool = [s[cfg.k :] for s in bsamples]
        if arm != SELF:
            online = transfer(online, pool, selector.pool_scores(arm, cache, brows, pool), cfg.replace_num, rng)
        ctx = LabelContext(rows=brows, online=online, pool=pool, cache=cache, store=store, judge=judge, iteration=t,
                           seed=cfg.seed, k=cfg.k, judge_stats=judge_stats, rng=rng)
        bscores = selector.label(ctx)
        if arm == SELF:
            wins = [selector.self_win] * len(brows)
        else:
            wins = [float(_argext(ss, rng, +1) < cfg.replace_num) if any(s is not None for s in ss) else 0.0
                    for ss in bscores]
        selector.update(arm, wins)
        arm_rows.append({"iteration": t, "block": b, "arm": arm, "prompts": len(brows), "wins": sum(wins),
                         "ucb_value": value})
        responses += online
        scores += bscores
        crash_point("judge")
    timings["transfer_and_label_s"] = time.time() - t1
    if cache.items_per_process:
        timings["source_items_per_process"] = cache.items_per_process
    if store.judged_per_process:
        timings["judge_items_per_process"] = store.judged_per_process
    failure_rate = judge_stats["failed"] / max(judge_stats["labels"], 1)
    if judge_stats["failed"]:
        log.warning("iteration %d: %d of %d judge answers failed (recorded as NULL in labels.sqlite)", t,
                    judge_stats["failed"], judge_stats["labels"])
    if failure_rate > cfg.max_judge_failure_rate:
        raise OnlineStopped(f"iteration {t}: the judge failed on {judge_stats['failed']} of {judge_stats['labels']} "
                            f"labels ({failure_rate:.0%} > online.max_judge_failure_rate="
                            f"{cfg.max_judge_failure_rate:g}); "
                            "failures are stored as NULL and asked again when you rerun")

    pairs, dropped = make_pairs(rows, responses, scores, rng, cfg.min_margin)
    if not pairs:
        margin = f" or spanned less than online.min_margin={cfg.min_margin:g}" if cfg.min_margin else ""
        raise OnlineStopped(f"iteration {t}: every prompt's responses tied under the judge{margin} (or had fewer "
                            "than two valid scores); no pairs to learn from")
    return responses, scores, arm_rows, judge_stats, pairs, dropped


def _result(t, rows, responses, scores, arm_rows, judge_stats, pairs, dropped, upd, timings, judge, store,
            selector, cfg, n_pool) -> dict:
    # Noiseless quality of an untransferred sample (the oracle knows it; other judges do not).
    utilities = judge.utility(rows, [ys[-1] for ys in responses]) if knows_utility(judge) else []
    metrics = {"iteration": t, "prompts": len(rows), "pairs": len(pairs), "tied_prompts_dropped": dropped,
               "labels_spent_total": store.count(), "labels_asked_this_process": store.asked,
               "labels_this_iteration": judge_stats["labels"],
               "label_cost_this_iteration": judge_stats.get("cost", judge_stats["labels"]),
               "generated_responses": len(rows) * (cfg.k + n_pool),
               "judge_failures": judge_stats["failed"],
               "mean_judge_score": _mean([s for ss in scores for s in ss if s is not None]),
               "mean_true_utility": _mean(utilities), **upd, **timings,
               "arms": _prompts_per_arm(arm_rows), "selector": selector.info()}
    return {"metrics": metrics, "arms": arm_rows, "selector_state": selector.state()}


def _prompts_per_arm(arm_rows: list[dict]) -> dict:
    """This iteration's prompts per arm (selector.n may carry over iterations: ucb carry=true, fixed, none)."""
    out: dict = {}
    for r in arm_rows:
        out[r["arm"]] = out.get(r["arm"], 0) + r["prompts"]
    return out


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def validate(cfg: OnlineConfig, arms: list[str]):
    """Config mistakes surface before any sampling (one-line ValueErrors); returns the selector."""
    if cfg.k < 2:
        raise ValueError(f"online.k must be at least 2 to form preference pairs, got {cfg.k}")
    selector = build_selector(cfg.selector.name, cfg.selector.params, arms, seed=cfg.seed, k=cfg.k,
                              replace_num=cfg.replace_num)
    if not (arms and selector.uses_pool):
        return selector
    name = cfg.selector.name
    # Without a pool nothing is transferred, yet a source arm would still be credited whenever the judge's best
    # response sits at an index below replace_num: wins for responses the policy drew itself.
    if cfg.n_pool <= 0:
        raise ValueError(f"selector '{name}' transfers from online.sources but online.n_pool is {cfg.n_pool}: "
                         f"set online.n_pool to at least online.replace_num ({cfg.replace_num}; the paper uses 32), "
                         "or use selector 'none' or drop online.sources")
    if not 0 < cfg.replace_num < cfg.k:
        raise ValueError(f"online.replace_num must be between 1 and k-1 (k={cfg.k}), got {cfg.replace_num}: "
                         "at least one online response must stay an untransferred sample of the policy")
    if cfg.n_pool < cfg.replace_num:
        raise ValueError(f"online.n_pool ({cfg.n_pool}) is smaller than online.replace_num ({cfg.replace_num}): "
                         f"Best-of-N cannot transfer {cfg.replace_num} responses from a pool of {cfg.n_pool}; "
                         f"raise online.n_pool to at least {cfg.replace_num} or lower online.replace_num")
    return selector


def run_online(policy_cfg: ModelConfig, start_dir: Path, cfg: OnlineConfig, train_rows: list[dict], judge,
               store: LabelStore, scorers: dict, out_dir: Path) -> list[dict]:
    """All iterations; a finished iteration (its DONE marker) is loaded instead of redone."""
    selector = validate(cfg, list(scorers))
    out_dir.mkdir(parents=True, exist_ok=True)
    start_cfg = dataclasses.replace(policy_cfg, name=str(start_dir), tokenizer="auto")
    tracker = tracking.for_stage(out_dir)
    policy, results = None, []
    for t in range(1, cfg.iterations + 1):
        it_dir = out_dir / f"iter_{t}"
        if (it_dir / "DONE").exists():
            results.append(json.loads((it_dir / "metrics.json").read_text()))
            selector.load_state(json.loads((it_dir / "selector.json").read_text()))
            policy = None
            continue
        if policy is None:
            prev = out_dir / f"iter_{t - 1}" / "model" if t > 1 else start_dir
            policy = load_policy(dataclasses.replace(start_cfg, name=str(prev)))
        log.info("online iteration %d/%d", t, cfg.iterations)
        tracker.begin(t)
        res = run_iteration(t, policy, train_rows, judge, store, scorers, selector, cfg, start_cfg, out_dir,
                            on_step=tracker.train_step)
        results.append(res["metrics"])
        if not distributed.is_main():
            distributed.barrier()  # the main process writes the iteration's checkpoint and files
            continue
        it_dir.mkdir(parents=True, exist_ok=True)
        policy.save(it_dir / "model")
        atomic_write_text(it_dir / "metrics.json", json.dumps(res["metrics"], indent=2))
        atomic_write_text(it_dir / "selector.json", json.dumps(res["selector_state"]))
        _write_arms(it_dir / "arms.csv", res["arms"])
        tracker.iteration(t, res["metrics"], res["arms"], [SELF, *scorers])
        tracker.samples(t, policy, judge, cfg, start_cfg, it_dir)
        tracker.end()  # the iteration's points are on disk before its DONE marker
        crash_point("iteration_end")
        atomic_write_text(it_dir / "DONE", "")
        distributed.barrier()
        m = res["metrics"]
        print(f"iteration {t}: pairs {m['pairs']}, labels {m['labels_spent_total']}, "
              f"mean judge score {m['mean_judge_score']:.3f}, loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}, "
              f"gen {m['generate_s']:.0f}s update {m['update_s']:.0f}s", flush=True)
    # After the loop, so a run killed between an iteration's DONE and this line still gets it on resume.
    if distributed.is_main():
        _write_arms(out_dir.parent / "arms.csv", [r for t in range(1, cfg.iterations + 1)
                                                  for r in _read_arms(out_dir / f"iter_{t}")])
    return results


_ARM_FIELDS = ["iteration", "block", "arm", "prompts", "wins", "ucb_value"]


def _write_arms(path: Path, rows: list[dict]) -> None:
    """Per-iteration arms.csv files are the truth; the run-level one is rebuilt from them (no duplicates)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_ARM_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_arms(it_dir: Path) -> list[dict]:
    with open(it_dir / "arms.csv", newline="") as fh:
        return list(csv.DictReader(fh))
