"""The bench driver: sections in a fixed order, a progress line each, then results.json and results.md.

Order: the small ratios first, then the demo iteration, the TRL comparison, and the paper-shape iteration (the
largest models) last. Each result gets the peak RSS of its own run (the kernel's high-water mark is reset before
it; models that earlier sections cached, e.g. the loglik sources, are included).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

SECTIONS = ("judge", "reference", "bon", "amp", "demo", "trl", "paper")


@dataclasses.dataclass
class Sizes:
    world_rows: int = 2400        # rows generated for the world and its tokenizer (set-up only; the demo has 30,000)
    demo_block: int = 16          # demo UCB block; prompts = (4 sources + self) x block
    paper_prompts: int = 16
    judge_labels: int = 256
    judge_batch: int = 16         # the paper recipe's reward-model batch size
    # (hidden, layers, min document tokens) of the random RMs: overhead-bound and compute-bound, on the world's
    # ~45-token documents and on article-length ones (XSum's are ~400 tokens)
    judge_rms: tuple = ((64, 1, 0), (256, 4, 0), (256, 4, 400))
    ref_prompts: int = 64
    bon_prompts: int = 8
    bon_samples: int = 8          # K + N of the demo
    amp_batch: int = 32           # the testbed's SFT batch
    amp_steps: int = 8
    trl: dict = dataclasses.field(default_factory=lambda: {
        "llama-tiny": {"prompts": 128, "batch": 8, "new_tokens": 32, "repeats": 3},
        "smollm2": {"prompts": 8, "batch": 4, "new_tokens": 24, "repeats": 2}})
    repeats: int = 3              # rounds of ratios (2), (4) and (5); each side's fastest round is kept
    ref_repeats: int = 5          # rounds of ratio (3): its sides differ by ~10%, less than the noise of a busy machine
    new_tokens: int = 0           # sampling limit of sections 1, (3), (4); 0 = the recipes' (demo 40, paper 48)


QUICK = Sizes(world_rows=300, demo_block=2, paper_prompts=4, judge_labels=16, judge_rms=((64, 1, 0),), ref_prompts=8,
              bon_prompts=2, bon_samples=4, amp_batch=4, amp_steps=1, new_tokens=8,
              trl={"llama-tiny": {"prompts": 4, "batch": 2, "new_tokens": 8, "repeats": 1}}, repeats=1, ref_repeats=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Stage throughput of the online loop (demo and paper-shape workloads) and five side-by-side "
                    "speed ratios; writes results.json and results.md (10-20 min on 2 CPU cores; --quick: seconds)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny models and counts (seconds; for tests)")
    p.add_argument("--out", default="runs/bench", help="directory for results.json and results.md")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--trl-models", default=None,
                   help="comma-separated causal policies for ratio (1): llama-tiny, smollm2 (default: both; quick: "
                        "llama-tiny)")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds of ratios (2)-(5) (default 3, ratio (3) 5; quick 1)")
    p.add_argument("--demo-block", type=int, default=None, help="demo UCB block size; prompts = 5 x block (default 16)")
    p.add_argument("--paper-prompts", type=int, default=None, help="prompts of the paper-shape iteration (default 16)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile runs of ratios that miss their target")
    p.add_argument("--seed", type=int, default=0, help="global seed")
    return p.parse_args(argv)


def sizes_from(args) -> Sizes:
    sz = dataclasses.replace(QUICK if args.quick else Sizes())
    if args.repeats is not None:
        sz.repeats = sz.ref_repeats = args.repeats
    if args.demo_block is not None:
        sz.demo_block = args.demo_block
    if args.paper_prompts is not None:
        sz.paper_prompts = args.paper_prompts
    if args.trl_models is not None:
        known = Sizes().trl | QUICK.trl
        names = [m for m in args.trl_models.split(",") if m]
        bad = [m for m in names if m not in known]
        if bad:
            raise SystemExit(f"unknown --trl-models {bad}; known: {', '.join(known)}")
        sz.trl = {m: (QUICK.trl.get(m) if args.quick else None) or known[m] for m in names}
    return sz


def main(argv=None) -> int:
    args = parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown --sections {bad}; known: {', '.join(SECTIONS)}")
    sz = sizes_from(args)
    # imported only now, so that --help and argument errors answer before torch and transformers load
    from bench import report
    from bench.common import clean, machine_info, make_world, peak_rss_mb, reset_peak_rss, section_peak_rss_mb
    from pipeline.runner import configure_threads, seed_everything

    threads = configure_threads()  # one torch thread, as the CLI (TRLHF_THREADS overrides)
    seed_everything(args.seed)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results = {"machine": machine_info() | {"torch_threads": threads}, "settings": {
        "quick": args.quick, "seed": args.seed, "sizes": dataclasses.asdict(sz)}, "workloads": {}, "ratios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        world = make_world(sz.world_rows, work, args.seed)
        print(f"[bench] world: {len(world.rows)} rows, tokenizer ready; sections: {', '.join(sections)}", flush=True)
        for name in (s for s in SECTIONS if s in sections):
            t0 = time.perf_counter()
            seed_everything(args.seed)
            reset_peak_rss()
            for key, value in run_section(name, world, sz, args, work / name):  # a generator: runs lazily
                value["peak_rss_mb"] = section_peak_rss_mb()
                (results["workloads"] if name in ("demo", "paper") else results["ratios"])[key] = value
                print(f"[bench] {name}: {report.one_line(value)} ({time.perf_counter() - t0:.0f}s, "
                      f"peak RSS {value['peak_rss_mb']:.0f} MB)", flush=True)
                reset_peak_rss()
            results["machine"].setdefault("load_avg_after_section", {})[name] = round(os.getloadavg()[0], 2)
    results["wall_s"] = time.perf_counter() - t_start
    sections_peak = [v["peak_rss_mb"] for part in ("workloads", "ratios") for v in results[part].values()]
    results["peak_rss_mb"] = max([peak_rss_mb(), *sections_peak])  # VmHWM may count a little more than getrusage
    results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    results = clean(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report.markdown(results))
    print(f"[bench] done in {results['wall_s']:.0f}s; wrote {out}/results.json and results.md", flush=True)
    return 0


def run_section(name: str, world, sz: Sizes, args, work: Path):
    """Yields (key, result) pairs: a workload under its name, a ratio under a short key."""
    from bench import ratios, workloads

    profile = not args.no_profile
    demo_tokens, paper_tokens = sz.new_tokens or 40, sz.new_tokens or 48
    if name == "judge":
        for case in sz.judge_rms:
            yield f"batched_judge[rm-{case[0]}x{case[1]}{'-long' if case[2] else ''}]", ratios.judge_batching(
                world, sz.judge_labels, sz.judge_batch, tuple(case), sz.repeats, work, profile)
    elif name == "reference":
        yield "reference_precompute", ratios.reference_precompute(world, sz.ref_prompts, demo_tokens, sz.ref_repeats,
                                                                  profile)
    elif name == "bon":
        yield "bon_batched_sampling", ratios.bon_sampling(world, sz.bon_prompts, sz.bon_samples, demo_tokens,
                                                          sz.repeats, profile)
    elif name == "amp":
        yield "autocast_bf16_sft", ratios.autocast_training(world, sz.amp_batch, sz.amp_steps, sz.repeats, profile)
        yield "autocast_bf16_sampling", ratios.autocast_sampling(world, sz.bon_prompts * 4, sz.bon_samples, demo_tokens,
                                                                 sz.repeats, profile)
    elif name == "demo":
        wl = workloads.demo_workload(world, sz.demo_block, demo_tokens, args.quick)
        yield "demo", workloads.run_workload(wl, world, work)
    elif name == "paper":
        wl = workloads.paper_workload(world, sz.paper_prompts, paper_tokens, args.quick)
        yield "paper", workloads.run_workload(wl, world, work)
    elif name == "trl":
        from bench.trl_ratio import TRLSizes, trl_online_dpo

        for model, s in sz.trl.items():
            yield f"trl_online_dpo[{model}]", trl_online_dpo(
                world, model, TRLSizes(s["prompts"], s["batch"], s["new_tokens"]), s["repeats"], work / model, profile)
