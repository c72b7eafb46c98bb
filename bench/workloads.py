"""Section 1: one real online iteration (pipeline.online.run_iteration, unchanged) per workload, instrumented.

Sources, the judge and `generate` are wrapped with tallies, so the iteration's wall time splits into generation,
each source's scoring, judge labels, the reference pass and the update, and every stage gets a throughput.
- demo: recipes/demo.yaml's shapes and settings (t5-micro policy; ROUGE, BERTScore, SmolLM2 and t5-micro-l4
  log-prob sources; UCB; oracle judge) with fewer prompts: prompts = (sources + 1) x block, so UCB's
  untried-arms-first rule has every source score exactly one block.
- paper: the reference experiment's model shapes with random weights: a T5-small policy and a T5-large log-prob
  source, both with T5's 32,128-row vocabulary; fixed transfer from T5-large (the paper's RM judge is an 8B model,
  out of reach on a CPU: the oracle judges); prompts, K and the new-token limit reduced to fit.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch

from bench.common import Tally, TimedJudge, World, count_generated, timed_source
from pipeline.config import OnlineConfig, SelectorConfig
from pipeline.labels import LabelStore
from pipeline.online import run_iteration, validate
from reward_sources import Context, build_judge, build_source

T5_VOCAB = 32128  # the paper T5 vocabulary (rows of the embedding and LM head)


@dataclasses.dataclass
class Workload:
    name: str
    policy_shape: str
    policy_fields: dict
    sources: dict  # label -> source spec (registry form)
    online: OnlineConfig
    note: str


def demo_workload(world: World, prompts_per_block: int, new_tokens: int, quick: bool) -> Workload:
    t5_big = {"name": "loglik", "model": world.model_spec("t5-micro-l4", max_input_tokens=128), "reduce": "sum"}
    # quick mode: a random llama-tiny stands in for SmolLM2 (same code path, no 540 MB load)
    smol = world.model_spec("llama-tiny", max_input_tokens=128) if quick else "gguf:smollm2"
    sources = {"rouge": {"name": "rouge"}, "bertscore": {"name": "bertscore"},
               "smollm2": {"name": "loglik", "model": smol, "reduce": "sum"}, "t5_big": t5_big}
    online = OnlineConfig(prompts_per_iteration=prompts_per_block * (len(sources) + 1), k=4, n_pool=4, replace_num=2,
                          temperature=1.0, max_new_tokens=new_tokens, loss="dpo", beta=0.1, lr=1e-4, epochs=2,
                          batch_size=16,
                          selector=SelectorConfig("ucb", {"c": 1.0, "block_size": prompts_per_block, "self_win": 0.55,
                                                          "carry": False}))
    return Workload("demo", "t5-micro", {"max_input_tokens": 128}, sources, online,
                    f"recipes/demo.yaml settings; {online.prompts_per_iteration} prompts instead of 256, UCB block "
                    f"{prompts_per_block} (demo 16) so that every source is tried once; random weights, so samples "
                    f"run to the {new_tokens}-token limit (the demo's 40 is about twice a trained policy's length)"
                    + ("; quick: a random llama-tiny stands in for SmolLM2" if quick else ""))


def paper_workload(world: World, prompts: int, new_tokens: int, quick: bool) -> Workload:
    policy, source = ("t5-tiny", "t5-micro") if quick else ("t5-small", "t5-large")
    fields = {"max_input_tokens": 512, "vocab_size": T5_VOCAB}
    sources = {source.replace("-", "_"): {"name": "loglik", "model": world.model_spec(source, **fields),
                                          "reduce": "sum"}}
    online = OnlineConfig(prompts_per_iteration=prompts, k=4, n_pool=4, replace_num=2, temperature=1.0,
                          max_new_tokens=new_tokens, loss="dpo", beta=0.1, lr=5e-5, epochs=1, batch_size=8,
                          selector=SelectorConfig("fixed", {"arm": source.replace("-", "_")}))
    return Workload("paper", policy, fields, sources, online,
                    f"{policy} policy, {source} log-prob source (random weights, {T5_VOCAB}-row vocabulary, the ids "
                    f"the world tokenizer lacks masked); {prompts} prompts (paper 10,000), K=4+N=4 (paper K=8), "
                    f"{new_tokens} new tokens (paper 256), batch 8 (paper 64), 1 epoch (paper 3); fixed transfer "
                    "from the source; oracle judge instead of the paper's 8B reward model")


def mask_missing_vocab(policy) -> None:
    """The world tokenizer has ~2k tokens; a T5-vocabulary head has 32,128 rows. Ids past the tokenizer would decode
    to nothing, so their logits are pushed to -1e9: the head keeps the paper's cost, samples stay decodable."""
    n = len(policy.tokenizer)
    head = policy.model.get_output_embeddings()
    if head.out_features <= n:
        return
    keep = torch.arange(head.out_features) >= n

    def hook(_module, _inputs, out):
        return out.masked_fill(keep.to(out.device), -1e9)

    head.register_forward_hook(hook)


def _model_name(spec: dict) -> str:
    model = spec.get("model", spec["name"])
    return model["name"] if isinstance(model, dict) else model


def run_workload(wl: Workload, world: World, work_dir: Path) -> dict:
    """Build everything (timed as load_s), then run one online iteration and split its wall time."""
    t0 = time.perf_counter()
    policy = world.policy(wl.policy_shape, **wl.policy_fields)
    mask_missing_vocab(policy)
    tallies = {label: Tally() for label in wl.sources}
    ctx = Context(run_dir=work_dir)
    scorers = {label: timed_source(build_source(dict(spec), ctx), tallies[label]) for label, spec in wl.sources.items()}
    judge_tally = Tally()
    judge = TimedJudge(build_judge("oracle", {"persona": "default", "teacher": "default"}), judge_tally)
    shutil.rmtree(work_dir, ignore_errors=True)  # a fresh label store: every label is really asked
    store = LabelStore(work_dir / "labels.sqlite")
    selector = validate(wl.online, list(scorers))
    load_s = time.perf_counter() - t0

    gen = Tally()
    t0 = time.perf_counter()
    with count_generated(policy, gen):
        res = run_iteration(1, policy, world.rows, judge, store, scorers, selector, wl.online, None, work_dir)
    wall = time.perf_counter() - t0
    store.close()
    m = res["metrics"]
    scoring_s = sum(t.seconds for t in tallies.values())
    breakdown = {
        "generate_s": m["generate_s"],
        "source_scoring_s": scoring_s,
        "judge_s": judge_tally.seconds,
        "transfer_and_label_other_s": max(m["transfer_and_label_s"] - scoring_s - judge_tally.seconds, 0.0),
        "reference_s": m["reference_s"],
        "update_s": m["update_s"],
    }
    breakdown["rest_s"] = max(wall - sum(breakdown.values()), 0.0)  # pair making, the oracle's utility metric
    breakdown["total_s"] = wall
    updates = m["pairs"] * wl.online.epochs
    throughput = {
        "generation_tokens_per_s": gen.rate(),
        "generation_sequences_per_s": gen.extra["sequences"] / gen.seconds,
        **{f"scoring_{label}_sequences_per_s": t.rate() for label, t in tallies.items() if t.items},
        "judge_labels_per_s": judge_tally.rate(),
        "reference_sequences_per_s": 2 * m["pairs"] / m["reference_s"],
        "update_pairs_per_s": updates / m["update_s"],
        "iteration_prompts_per_s": m["prompts"] / wall,
    }
    return {
        "note": wl.note,
        "policy": f"shape:{wl.policy_shape}", "policy_params_m": policy.n_params / 1e6,
        "sources": {label: {"model": _model_name(spec), "sequences": tallies[label].items,
                            "seconds": tallies[label].seconds} for label, spec in wl.sources.items()},
        "unused_sources": [label for label, t in tallies.items() if not t.items],
        "counts": {"prompts": m["prompts"], "samples_per_prompt": wl.online.k + wl.online.n_pool,
                   "generated_sequences": gen.extra["sequences"], "generated_tokens": gen.items,
                   "labels": judge_tally.items, "pairs": m["pairs"], "update_steps": m["steps"],
                   "arms": m["arms"]},
        "load_s": load_s,
        "breakdown_s": breakdown,
        "throughput": throughput,
    }
