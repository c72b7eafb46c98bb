"""Supervised fine-tuning: teach the initial policy to write the reference summary of a document.

A plain PyTorch loop rather than HF Trainer: the loss is exactly `Policy.logprobs` (the same tokenisation and
response convention that the online stage's DPO update differentiates), it works unchanged for seq2seq and
causal models with or without LoRA, and it reads top to bottom. Under several processes each takes its share
of every batch (DDP through accelerate, pipeline/distributed.py); the main process evaluates and saves.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline import distributed, tracking
from pipeline.config import SFTConfig
from pipeline.durable import atomic_write_text
from pipeline.models import Policy
from reward_sources.rouge import build as build_rouge

log = logging.getLogger(__name__)
# More passes than this over the train split and a small policy starts to recite the references of the very
# rows that the online stage later draws its prompts from (docs/testbed.md: transfer then taught recall that did not
# carry over to held-out prompts).
MEMORIZATION_EPOCHS = 3.0


def rouge_lsum(preds: list[str], refs: list[str]) -> list[float]:
    """ROUGE-Lsum F1 per pair: the `rouge` source reward, so SFT metrics and transfer use one implementation."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    return build_rouge({"name": "rouge"})([""] * len(preds), preds, refs)


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(rows: list[dict], batch_size: int, seed: int):
    """Endless stream of batches: each epoch a fresh seeded shuffle, batches may span epoch boundaries."""
    rng = random.Random(seed)
    pool: list[dict] = []
    while True:
        while len(pool) < batch_size:
            epoch = list(rows)
            rng.shuffle(epoch)
            pool += epoch
        yield pool[:batch_size]
        pool = pool[batch_size:]


def copy_targets(rows: list[dict], batch_size: int, seed: int):
    """Endless batches of (row, target) for copy pretraining: each row's target is one of its document's
    sentences, drawn afresh every time the row comes round (a small T5 trained from scratch on summaries alone
    never learns to copy names; the real T5 learned it in pretraining on text before it was fine-tuned)."""
    rng = random.Random(f"copy-{seed}")
    sentences = {id(r): [s for s in r["document"].split("\n") if s.strip()] or [r["document"]] for r in rows}
    for batch in _batches(rows, batch_size, seed):
        yield [(r, rng.choice(sentences[id(r)])) for r in batch]


def run_sft(policy: Policy, cfg: SFTConfig, train_rows: list[dict], eval_rows: list[dict], out_dir: Path) -> dict:
    """Train `policy` in place (copy pretraining for cfg.copy_steps, then cfg.steps of SFT); save it to
    out_dir/model; return (and write) the metrics."""
    if not train_rows and cfg.steps + cfg.copy_steps > 0:
        raise ValueError("SFT needs at least one training row")
    epochs = cfg.steps * cfg.batch_size / max(len(train_rows), 1)
    if epochs > MEMORIZATION_EPOCHS:
        log.warning("SFT makes %.1f passes over the %d train rows, and online prompts are drawn from the same rows: "
                    "the policy may memorize them, so that online gains do not carry over to held-out prompts "
                    "(more data.n_examples or fewer sft.steps)", epochs, len(train_rows))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    start = time.time()
    main = distributed.is_main()
    tracker = tracking.for_stage(out_dir)
    tracker.begin()
    with open(out_dir / "log.jsonl" if main else os.devnull, "w", encoding="utf-8") as log_file:
        copy_losses = copy_pretrain(policy, cfg, train_rows, log_file, start, tracker)
        losses = fine_tune(policy, cfg, train_rows, cfg.steps, log_file, start, tracker)
    policy.eval()
    # the main process evaluates and saves; the others wait and get its metrics
    return distributed.on_main(_finish, policy, cfg, eval_rows, out_dir, losses, start, epochs, copy_losses, tracker)


def copy_pretrain(policy: Policy, cfg: SFTConfig, train_rows: list[dict], log_file, start: float,
                  tracker: tracking.Tracker) -> list[float]:
    """cfg.copy_steps of copy pretraining (none when 0); returns the losses."""
    if cfg.copy_steps <= 0:
        return []
    return _train(policy, cfg, cfg.copy_steps, cfg.copy_lr, copy_targets(train_rows, cfg.batch_size, cfg.seed),
                  log_file, "copy", start, tracker)


def fine_tune(policy: Policy, cfg: SFTConfig, train_rows: list[dict], steps: int, log_file, start: float,
              tracker: tracking.Tracker) -> list[float]:
    """`steps` of SFT on the references (its own warm-up and cosine decay over `steps`); returns the losses."""
    # truncate each reference once, with the policy's own tokenizer (same code path as prompts)
    targets = {id(r): policy.truncate_text(r["summary"], cfg.max_target_tokens) for r in train_rows}
    stream = ([(r, targets[id(r)]) for r in batch] for batch in _batches(train_rows, cfg.batch_size, cfg.seed))
    return _train(policy, cfg, steps, cfg.lr, stream, log_file, "sft", start, tracker)


def _train(policy: Policy, cfg: SFTConfig, steps: int, lr: float, stream, log_file, phase: str, start: float,
           tracker: tracking.Tracker):
    """`steps` AdamW steps of token-mean cross-entropy on (row, target) batches from `stream`; returns the losses."""
    params = [p for p in policy.parameters() if p.requires_grad]  # LoRA: only the adapters
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg.warmup, steps))
    losses: list[float] = []
    policy.train()
    world = distributed.world_size()
    with tqdm(range(1, steps + 1), desc=phase, dynamic_ncols=True, **distributed.bar_kwargs()) as bar, \
            distributed.data_parallel(policy):
        for step in bar:
            batch = next(stream)
            if world > 1:  # this process's share of the batch (at least one row, weighted 0 if it had none)
                mine = distributed.shard(batch)
                real, batch = (1.0, mine) if mine else (0.0, batch[:1])
            total, _, count = policy.logprobs([r["document"] for r, _ in batch], [y for _, y in batch],
                                              batch_size=cfg.batch_size, grad=True)
            if world == 1:
                loss = -total.sum() / count.sum()  # token-mean cross-entropy over the whole batch
            else:  # DDP averages gradients over processes: scaled so the average is the whole batch's token mean
                n_tokens = distributed.all_sum(count.sum() * int(real))
                loss = -total.sum() * real * world / n_tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                loss = distributed.all_sum(loss.detach()) / world  # the whole batch's loss, for the log
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            losses.append(loss.item())
            tracker.sft_step(phase, step, losses[-1], step_lr)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % cfg.log_every == 0 or step == steps:
                row = {"step": step, "loss": round(losses[-1], 5), "lr": optimizer.param_groups[0]["lr"],
                       "elapsed_s": round(time.time() - start, 2)}
                log_file.write(json.dumps(row if phase == "sft" else {"phase": phase, **row}) + "\n")
                log_file.flush()
    return losses


def _finish(policy: Policy, cfg: SFTConfig, eval_rows: list[dict], out_dir: Path, losses: list[float],
            start: float, epochs: float, copy_losses: list[float], tracker: tracking.Tracker) -> dict:
    metrics: dict = {"rouge_lsum": None}
    if cfg.eval_examples > 0 and eval_rows:
        rows = eval_rows[: cfg.eval_examples]
        preds = [s[0] for s in policy.sample([r["document"] for r in rows], 1, temperature=0.0,
                                             max_new_tokens=cfg.eval_max_new_tokens)]
        metrics["rouge_lsum"] = sum(rouge_lsum(preds, [r["summary"] for r in rows])) / len(rows)
        tracker.scalars({"sft/eval_rouge_lsum": metrics["rouge_lsum"]}, cfg.steps)
    tracker.end()
    policy.save(out_dir / "model")
    window = max(1, min(10, len(losses) // 2))  # single-step losses are noisy: average a few at each end
    if copy_losses:
        w = max(1, min(10, len(copy_losses) // 2))
        metrics |= {"copy_steps": cfg.copy_steps, "copy_loss_first": sum(copy_losses[:w]) / w,
                    "copy_loss_last": sum(copy_losses[-w:]) / w}
    metrics |= {
        "train_loss_first": sum(losses[:window]) / window if losses else None,
        "train_loss_last": sum(losses[-window:]) / window if losses else None,
        "steps": cfg.steps,
        "epochs": round(epochs, 3),
        "wall_s": round(time.time() - start, 2),
        "n_params": policy.n_params,
        "n_trainable": policy.n_trainable,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    return metrics
