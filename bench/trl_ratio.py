"""Ratio (1): one online DPO iteration of ours vs TRL's experimental OnlineDPOTrainer, pairs per second.

Both sides: the same causal policy weights, the same prompts (the Policy's prompt text), 2 samples per prompt,
temperature 1, no top-k/top-p, the same new-token limit, batch B pairs per update and P/B updates (one epoch), the
same lr and beta, float32, one thread, and the same scalar reward: one random-weight reward model
(reward_sources/reward_model.py), our judge on one side and a TRL reward function calling the very same scorer
on the other. TRL's CPU-hostile defaults are off (bf16=False, gradient_checkpointing=False, asserted).

What differs is each design: TRL generates, scores and runs a live reference forward per update batch; ours
generates for the whole iteration in batches of 64, labels through the label store, computes reference log-probs
once, then updates. Timed: our `run_iteration` vs `trainer.train()`; building models and trainers is not.
Both are instrumented per stage (generate / reward / reference / policy forward+backward), which is the profile
that explains the ratio.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
import time
import warnings
from pathlib import Path

from bench.common import Tally, TimedJudge, World, count_generated, profile_top
from bench.ratios import make_reward_model, ratio_result
from pipeline.config import ModelConfig, OnlineConfig
from pipeline.labels import LabelStore
from pipeline.models import Policy, load_policy
from pipeline.online import run_iteration, validate
from reward_sources import build_judge


@dataclasses.dataclass
class TRLSizes:
    prompts: int
    batch: int
    new_tokens: int


def load_causal(world: World, model: str) -> Policy:
    if model == "smollm2":
        return load_policy(ModelConfig(name="gguf:smollm2", max_input_tokens=128))
    return world.policy(model, max_input_tokens=128)


def _ours(base: Policy, rows, judge, sz: TRLSizes, lr: float, work_dir: Path) -> tuple[float, dict]:
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, False, base.cfg)
    cfg = OnlineConfig(prompts_per_iteration=len(rows), k=2, n_pool=0, temperature=1.0, top_k=0,
                       max_new_tokens=sz.new_tokens, gen_batch_size=64, loss="dpo", beta=0.1, lr=lr, warmup=0,
                       epochs=1, batch_size=sz.batch)
    shutil.rmtree(work_dir, ignore_errors=True)
    store = LabelStore(work_dir / "labels.sqlite")
    jt, gen = Tally(), Tally()
    t0 = time.perf_counter()
    with count_generated(policy, gen):
        m = run_iteration(1, policy, rows, TimedJudge(judge, jt), store, {}, validate(cfg, []), cfg, None,
                          work_dir)["metrics"]
    wall = time.perf_counter() - t0
    store.close()
    stages = {"generate_s": m["generate_s"], "reward_s": jt.seconds, "reference_s": m["reference_s"],
              "update_s": m["update_s"]}
    stages["rest_s"] = max(wall - sum(stages.values()), 0.0)
    return wall, {"pairs": m["pairs"], "updates": m["steps"], "generated_tokens": gen.items,
                  "loss_first": m["loss_first"], "stages_s": stages}


def _trl_trainer(base: Policy, rows, judge, sz: TRLSizes, lr: float, out_dir: Path):
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    tallies = {k: Tally() for k in ("generate", "reward", "reference", "policy_forward", "backward")}

    def reward(prompts, completions, document, **_):  # TRL passes dataset columns (repeated x2) as kwargs
        t0 = time.perf_counter()
        out = judge.scorer(list(document), list(completions))
        tallies["reward"].seconds += time.perf_counter() - t0
        return out

    data = Dataset.from_dict({"prompt": [base.prompt_text(r["document"]) for r in rows],
                              "document": [r["document"] for r in rows]})
    args = OnlineDPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=sz.batch, max_steps=len(rows) // sz.batch,
        max_new_tokens=sz.new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=0.1, loss_type="sigmoid",
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    assert args.bf16 is False and args.gradient_checkpointing is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = OnlineDPOTrainer(model=copy.deepcopy(base.model), reward_funcs=reward, args=args,
                                   train_dataset=data, processing_class=base.tokenizer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with tqdm off, the Trainer prints its log dicts instead
    _instrument(trainer, tallies)
    return trainer, tallies


def _instrument(trainer, tallies: dict) -> None:
    """Instance attributes shadow TRL's methods for this trainer only; each call adds its seconds to a tally."""
    gen, fwd, bwd = trainer._generate, trainer._forward, trainer.accelerator.backward

    def generate(*a, **kw):
        t0 = time.perf_counter()
        out = gen(*a, **kw)
        tallies["generate"].seconds += time.perf_counter() - t0
        tallies["generate"].items += int(out[3].sum())  # completion_mask: generated tokens up to EOS
        return out

    def forward(model, *a, **kw):
        t0 = time.perf_counter()
        out = fwd(model, *a, **kw)
        tallies["reference" if model is trainer.ref_model else "policy_forward"].seconds += time.perf_counter() - t0
        return out

    def backward(*a, **kw):
        t0 = time.perf_counter()
        out = bwd(*a, **kw)
        tallies["backward"].seconds += time.perf_counter() - t0
        return out

    trainer._generate, trainer._forward, trainer.accelerator.backward = generate, forward, backward


def _trl(base: Policy, rows, judge, sz: TRLSizes, lr: float, work_dir: Path) -> tuple[float, dict]:
    trainer, tallies = _trl_trainer(base, rows, judge, sz, lr, work_dir)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = trainer.train()
    wall = time.perf_counter() - t0
    # TRL's policy forward and backward interleave with generation inside train(): both are timed; its optimizer
    # step and the Trainer's bookkeeping are what is left (rest_s)
    stages = {"generate_s": tallies["generate"].seconds, "reward_s": tallies["reward"].seconds,
              "reference_s": tallies["reference"].seconds,
              "update_s": tallies["policy_forward"].seconds + tallies["backward"].seconds}
    stages["rest_s"] = max(wall - sum(stages.values()), 0.0)
    pairs = trainer.state.global_step * trainer.args.per_device_train_batch_size
    return wall, {"pairs": pairs, "updates": trainer.state.global_step, "generated_tokens": tallies["generate"].items,
                  "loss_first": out.training_loss, "stages_s": stages}


def trl_online_dpo(world: World, model: str, sz: TRLSizes, repeats: int, work_dir: Path, profile: bool) -> dict:
    """Both sides `repeats` times, interleaved; each side's fastest run is kept (its stage split with it)."""
    import trl

    base = load_causal(world, model)
    judge = build_judge("reward_model", {"model": str(make_reward_model(base.tokenizer, work_dir / "rm")),
                                         "batch_size": 16})
    rows = world.rows[: sz.prompts]
    lr = 5e-5
    best = {}
    for _ in range(repeats):
        for name, fn in (("ours", _ours), ("trl", _trl)):
            wall, info = fn(base, rows, judge, sz, lr, work_dir / name)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, info)
    (ow, oi), (tw, ti) = best["ours"], best["trl"]
    res = ratio_result(
        f"online DPO iteration vs TRL {trl.__version__} OnlineDPOTrainer ({model})", "pairs/s",
        {"value": oi["pairs"] / ow, "seconds": ow, **oi}, {"value": ti["pairs"] / tw, "seconds": tw, **ti},
        1.5, False,
        f"{model} policy ({base.n_params / 1e6:.1f}M params), {sz.prompts} prompts x 2 samples, {sz.new_tokens} new "
        f"tokens, batch {sz.batch}, {sz.prompts // sz.batch} updates, same random-weight RM reward on both sides; "
        "TRL bf16=False, gradient_checkpointing=False")
    if profile and not res["met"]:  # cProfile of a one-update run of each side
        one = dataclasses.replace(sz, prompts=sz.batch)
        res["profile"] = {
            "ours": profile_top(lambda: _ours(base, rows[: sz.batch], judge, one, lr, work_dir / "prof_ours")),
            "baseline": profile_top(lambda: _trl(base, rows[: sz.batch], judge, one, lr, work_dir / "prof_trl"))}
    return res
