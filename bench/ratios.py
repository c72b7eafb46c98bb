"""Ratios (2)-(5): batched judge scoring, precomputed reference log-probs, batched Best-of-N sampling, bfloat16
mixed precision (SFT steps and sampling).

Each ratio runs both sides in this process on the same model, inputs and settings, interleaved `repeats` times,
and keeps each side's fastest run (load from other processes on the shared cores only ever slows a run down).
When a side misses its target the result carries cProfile's top entries of one more run of each side.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from bench.common import Tally, World, best_of, count_generated, profile_top
from pipeline.config import OnlineConfig
from pipeline.online import Pair, reference_logprobs, update
from reward_sources import build_judge


def ratio_result(name: str, unit: str, ours: dict, base: dict, target: float, strict: bool, setup: str) -> dict:
    """ours/base = {"value": rate in `unit`, "seconds": ..., ...}; the ratio is ours / baseline rate."""
    ratio = ours["value"] / base["value"]
    met = ratio > target if strict else ratio >= target
    return {"name": name, "unit": unit, "ours": ours, "baseline": base, "ratio": ratio,
            "target": f"{'>' if strict else '>='} {target:g}x", "met": met, "setup": setup}


# ---------------------------------------------------------------------- (2) batched judge


def make_reward_model(tokenizer, out_dir: Path, hidden: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight Llama sequence-classification RM (1 logit) saved with `tokenizer`, as a hub RM would be."""
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                      max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(cfg).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def long_documents(world: World, tok, n: int, min_tokens: int) -> list[dict]:
    """n rows whose documents join consecutive world documents until each has >= min_tokens tokens: the length of
    an XSum article (the world's own are ~45 tokens), so that the document's share of the judge's work is real."""
    out, j = [], 0
    for i in range(n):
        parts, count = [], 0
        while count < min_tokens:
            doc = world.rows[j % len(world.rows)]["document"]
            parts.append(doc)
            count += len(tok(doc)["input_ids"])
            j += 1
        out.append({**world.rows[i], "document": " ".join(parts)})
    return out


def judge_batching(world: World, n_labels: int, batch_size: int, case: tuple[int, int, int], repeats: int,
                   work_dir: Path, profile: bool, k: int = 8) -> dict:
    """One RM of case = (hidden size, layers, minimum document tokens; 0 = the world's short documents), judging
    the online loop's shape: n_labels / k prompts with k responses each (the paper's K = 8), all in one judge call
    as a block of the loop makes it. A third timing runs the same judge with packing off (plain right-padded
    batches), to show what each of the two speed-ups adds."""
    hidden, layers, min_doc = case
    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    rm_dir = make_reward_model(tok, work_dir / f"rm{hidden}x{layers}", hidden, layers)
    judge = build_judge("reward_model", {"model": str(rm_dir), "batch_size": batch_size})
    n_prompts = max(1, n_labels // k)
    docs = long_documents(world, tok, n_prompts, min_doc) if min_doc else world.rows[:n_prompts]
    rows = [docs[i] for i in range(n_prompts) for _ in range(k)]
    # k different summaries per document (lengths vary as sampled responses do); the RM's weights are random, so
    # what they say does not matter, only their token counts
    responses = [world.rows[(i + j) % len(world.rows)]["summary"] for i in range(n_prompts) for j in range(k)]
    n_labels = len(rows)

    def batched():
        return judge.score(rows, responses)

    def unpacked():
        return judge.scorer._batched([r["document"] for r in rows], responses)

    def one_at_a_time():  # the reference experiment's loop: one RM call per response
        return [s for r, y in zip(rows, responses) for s in judge.score([r], [y])]

    diff = max(abs(a - b) for a, b in zip(batched(), one_at_a_time()))  # also a warm-up of both paths
    best = best_of({"batched": batched, "single": one_at_a_time, "unpacked": unpacked}, repeats)
    n_params = sum(p.numel() for p in judge.scorer.net.parameters())
    doc_tokens = sum(len(tok(r["document"])["input_ids"]) for r in rows[::k]) / n_prompts
    resp_tokens = sum(len(tok(y)["input_ids"]) for y in responses) / n_labels
    res = ratio_result(
        f"batched reward-model judge vs one-at-a-time (RM {hidden}x{layers}, "
        f"{'article-length' if min_doc else 'world'} documents)", "labels/s",
        {"value": n_labels / best["batched"], "seconds": best["batched"], "labels": n_labels, "batch_size": batch_size,
         "packed": bool(judge.scorer.packed_ok), "unpacked_labels_per_s": n_labels / best["unpacked"]},
        {"value": n_labels / best["single"], "seconds": best["single"], "labels": n_labels, "batch_size": 1},
        5.0, False,
        f"reward_sources/reward_model.py judge, random-weight Llama RM (hidden {hidden}, {layers} layer(s), "
        f"{n_params / 1e6:.2f}M params, world tokenizer), {n_prompts} documents x {k} responses (mean "
        f"{doc_tokens:.0f} + {resp_tokens:.0f} tokens), batch {batch_size}, responses packed after their document "
        f"(packing {'on' if judge.scorer.packed_ok else 'OFF'}); scores agree to {diff:.1e}; plain padded batches "
        f"without packing: {n_labels / best['unpacked']:.0f} labels/s")
    if profile and not res["met"]:
        res["profile"] = {"ours": profile_top(batched), "baseline": profile_top(one_at_a_time)}
    return res


# ---------------------------------------------------------------------- (3) reference log-probs


class LiveReference:
    """Stands in for the precomputed {"w", "l"} dict that pipeline.online.update indexes as ref["w"][idx]: each
    lookup runs the frozen reference model on that step's pairs (chosen and rejected in one forward), i.e. the
    usual live-reference DPO step, with update() itself unchanged."""

    def __init__(self, ref_policy, pairs):
        self.ref, self.pairs, self.key, self.cache = ref_policy, pairs, None, None

    def __getitem__(self, side: str):
        return _Side(self, side)

    def lookup(self, side: str, idx) -> torch.Tensor:
        if self.key != tuple(idx):
            lp = self.ref.shared_logprobs([self.pairs[i].row["document"] for i in idx],
                                          [[self.pairs[i].chosen, self.pairs[i].rejected] for i in idx],
                                          batch_size=len(idx))
            self.key, self.cache = tuple(idx), {"w": lp[:, 0], "l": lp[:, 1]}
        return self.cache[side]


class _Side:
    def __init__(self, live: LiveReference, side: str):
        self.live, self.side = live, side

    def __getitem__(self, idx):
        return self.live.lookup(self.side, idx)


def reference_precompute(world: World, n_prompts: int, new_tokens: int, repeats: int, profile: bool) -> dict:
    policy0 = world.policy("t5-micro", max_input_tokens=128)
    rows = world.rows[:n_prompts]
    samples = policy0.sample([r["document"] for r in rows], 2, max_new_tokens=new_tokens, seed=0)
    pairs = [Pair(r, ys[0], ys[1], ys[1]) for r, ys in zip(rows, samples)]
    cfg = OnlineConfig(loss="dpo", beta=0.1, lr=1e-4, warmup=10, epochs=2, batch_size=16)  # recipes/demo.yaml

    def precomputed(p, _r):
        return update(p, pairs, reference_logprobs(p, pairs, cfg, None), cfg, seed=0)

    def live(p, r):
        return update(p, pairs, LiveReference(r, pairs), cfg, seed=0)

    fns = {"precomputed": precomputed, "live": live}
    best, out = {k: float("inf") for k in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            p, r = copy.deepcopy(policy0), copy.deepcopy(policy0)  # copies are setup, not timed
            t0 = time.perf_counter()
            out[name] = fn(p, r)
            best[name] = min(best[name], time.perf_counter() - t0)
    work = len(pairs) * cfg.epochs
    loss_diff = max(abs(out["precomputed"][k] - out["live"][k]) for k in ("loss_first", "loss_last"))
    res = ratio_result(
        "reference log-probs precomputed once per iteration vs live reference forward per update step", "pairs/s",
        {"value": work / best["precomputed"], "seconds": best["precomputed"], "pair_updates": work},
        {"value": work / best["live"], "seconds": best["live"], "pair_updates": work},
        1.0, True,
        f"demo policy (t5-micro), {len(pairs)} pairs, {cfg.epochs} epochs of batch {cfg.batch_size} "
        f"({out['live']['steps']} steps); pipeline.online.update for both, the live side's reference looked up per "
        f"step; first/last losses agree to {loss_diff:.1e}")
    if profile and not res["met"]:
        res["profile"] = {k: profile_top(lambda f=f: f(copy.deepcopy(policy0), copy.deepcopy(policy0)))
                          for k, f in (("ours", precomputed), ("baseline", live))}
    return res


# ---------------------------------------------------------------------- (4) Best-of-N pool sampling


def bon_sampling(world: World, n_prompts: int, samples: int, new_tokens: int, repeats: int, profile: bool) -> dict:
    policy = world.policy("t5-micro", max_input_tokens=128)
    docs = [r["document"] for r in world.rows[:n_prompts]]
    kw = dict(temperature=1.0, max_new_tokens=new_tokens)

    def batched():
        return policy.sample(docs, samples, batch_size=64, seed=0, **kw)

    def loop():  # one generate call per sample
        return [policy.sample([d], 1, seed=i * samples + j, **kw) for i, d in enumerate(docs) for j in range(samples)]

    tallies = {"batched": Tally(), "loop": Tally()}
    for name, fn in (("batched", batched), ("loop", loop)):  # warm-up run that also counts the tokens
        with count_generated(policy, tallies[name]):
            fn()
    best = best_of({"batched": batched, "loop": loop}, repeats)
    n = n_prompts * samples
    res = ratio_result(
        "Best-of-N pool sampling batched (Policy.sample with K+N) vs a per-sample loop", "samples/s",
        {"value": n / best["batched"], "seconds": best["batched"], "samples": n,
         "tokens_per_s": tallies["batched"].items / best["batched"]},
        {"value": n / best["loop"], "seconds": best["loop"], "samples": n,
         "tokens_per_s": tallies["loop"].items / best["loop"]},
        1.0, True,
        f"demo policy (t5-micro), {n_prompts} prompts x (K+N={samples}) samples, {new_tokens} new tokens, "
        "generation batch 64")
    if profile and not res["met"]:
        res["profile"] = {"ours": profile_top(batched), "baseline": profile_top(loop)}
    return res


# ---------------------------------------------------------------------- (5) bfloat16 mixed precision


def bf16_hardware() -> str:
    """What the bfloat16 matmuls run on: the GPU's name, or the CPU's torch dispatch level and bf16 flags."""
    if torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name()}"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return f"cpu {torch.backends.cpu.get_cpu_capability()}, bfloat16 flags: {', '.join(bf16) or 'none'}"


def _autocast_pair(world: World):
    """The testbed's policy shape twice with the same weights: float32, and under policy.autocast bfloat16."""
    full = world.policy("t5-micro", max_input_tokens=160)
    mixed = world.policy("t5-micro", max_input_tokens=160, autocast="bfloat16")
    mixed.model.load_state_dict(full.model.state_dict())
    return full, mixed


def _autocast_ratio(name: str, unit: str, count: str, n: int, fns: dict, repeats: int, profile: bool,
                    setup: str) -> dict:
    """fns = {"bfloat16": ..., "float32": ...}, each doing n `count` of work; bfloat16 is ours."""
    best = best_of(fns, repeats)
    res = ratio_result(name, unit, {"value": n / best["bfloat16"], "seconds": best["bfloat16"], count: n},
                       {"value": n / best["float32"], "seconds": best["float32"], count: n}, 1.0, True,
                       f"{setup}; {bf16_hardware()}")
    if profile and not res["met"]:
        res["profile"] = {k: profile_top(fns[side]) for k, side in (("ours", "bfloat16"), ("baseline", "float32"))}
    return res


def autocast_training(world: World, batch: int, steps: int, repeats: int, profile: bool) -> dict:
    """SFT steps (logprobs with grad, backward, AdamW) from the same weights on the same batches."""
    full, mixed = _autocast_pair(world)
    batches = [world.rows[i * batch:(i + 1) * batch] for i in range(steps)]
    losses: dict[str, list[float]] = {}

    def train(policy0, name):
        policy = copy.deepcopy(policy0)
        policy.model.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        out = []
        for rows in batches:
            total, _, count = policy.logprobs([r["document"] for r in rows], [r["summary"] for r in rows],
                                              batch_size=batch, grad=True)
            loss = -total.sum() / count.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[name] = out

    fns = {"bfloat16": lambda: train(mixed, "bfloat16"), "float32": lambda: train(full, "float32")}
    res = _autocast_ratio("SFT steps under policy.autocast bfloat16 vs float32", "rows/s", "rows", batch * steps, fns,
                          repeats, profile, f"t5-micro (the testbed's policy), {steps} AdamW steps of batch {batch} on "
                          "world rows, the same start weights")
    gap = max(abs(a - b) for a, b in zip(losses["bfloat16"], losses["float32"]))
    res["setup"] += f"; per-step losses agree to {gap:.1e} nats/token"
    return res


def autocast_sampling(world: World, n_prompts: int, samples: int, new_tokens: int, repeats: int, profile: bool) -> dict:
    """Best-of-N pool sampling from the same weights."""
    full, mixed = _autocast_pair(world)
    docs = [r["document"] for r in world.rows[:n_prompts]]
    fns = {name: (lambda p=p: p.sample(docs, samples, batch_size=64, seed=0, max_new_tokens=new_tokens))
           for name, p in (("bfloat16", mixed), ("float32", full))}
    return _autocast_ratio("Best-of-N pool sampling under policy.autocast bfloat16 vs float32", "samples/s", "samples",
                           n_prompts * samples, fns, repeats, profile,
                           f"t5-micro, {n_prompts} prompts x {samples} samples, {new_tokens} new tokens, generation "
                           "batch 64")
