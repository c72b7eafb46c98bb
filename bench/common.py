"""Shared bench plumbing: the offline world, timers, instrumented wrappers, peak RSS, machine info, profiles."""
from __future__ import annotations

import contextlib
import cProfile
import io
import os
import platform
import pstats
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import world
from pipeline.config import ModelConfig, WorldConfig
from pipeline.models import Policy, load_policy, train_world_tokenizer
from reward_sources.contracts import knows_utility

# ---------------------------------------------------------------------- the offline world


@dataclass
class World:
    """Synthetic news rows (with planted facts, so the oracle judge works) and a world tokenizer trained on them."""
    rows: list[dict]
    tokenizer_dir: Path

    def policy(self, shape: str, **fields) -> Policy:
        """A random-weight `shape:` model with the world tokenizer (fields: any ModelConfig field)."""
        return load_policy(ModelConfig(name=f"shape:{shape}", **fields), tokenizer_dir=self.tokenizer_dir)

    def model_spec(self, shape: str, **fields) -> dict:
        """The same model as a loglik source's `model:` mapping (the tokenizer given as a path, no run dir)."""
        return {"name": f"shape:{shape}", "tokenizer": str(self.tokenizer_dir), **fields}


def make_world(n_rows: int, out_dir: Path, seed: int = 0) -> World:
    """The demo's world (WorldConfig defaults = recipes/demo.yaml's) and its BPE tokenizer (vocab cap 4,000)."""
    rows = world.generate(n_rows, WorldConfig(), seed)
    tok_dir = out_dir / "tokenizer"
    train_world_tokenizer((t for r in rows for t in (r["document"], r["summary"])), tok_dir, vocab_size=4000)
    return World(rows, tok_dir)


# ---------------------------------------------------------------------- timing


@dataclass
class Tally:
    """Calls, items and seconds of one instrumented function."""
    calls: int = 0
    items: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


def timed_source(fn, tally: Tally):
    """A source callable that adds its calls, scored responses and seconds to `tally`."""
    def score(documents, responses, references):
        t0 = time.perf_counter()
        out = fn(documents, responses, references)
        tally.seconds += time.perf_counter() - t0
        tally.calls += 1
        tally.items += len(responses)
        return out
    return score


class TimedJudge:
    """A scalar judge whose `score` calls are tallied (labels and seconds); everything else is delegated."""

    def __init__(self, judge, tally: Tally):
        self.judge, self.tally = judge, tally
        self.kind, self.name = judge.kind, judge.name
        if knows_utility(judge):
            self.utility = judge.utility

    def score(self, rows, responses, seed=0):
        t0 = time.perf_counter()
        out = self.judge.score(rows, responses, seed=seed)
        self.tally.seconds += time.perf_counter() - t0
        self.tally.calls += 1
        self.tally.items += len(responses)
        return out


@contextlib.contextmanager
def count_generated(policy: Policy, tally: Tally):
    """Counts generated (non-pad) tokens and sequences of every `generate` call on policy.model, and its seconds.

    An instance attribute shadows the bound method for the duration, so Policy.sample runs unchanged."""
    model, orig = policy.model, policy.model.generate
    enc_dec = policy.is_seq2seq

    def generate(*args, **kw):
        t0 = time.perf_counter()
        out = orig(*args, **kw)
        tally.seconds += time.perf_counter() - t0
        new = out[:, 1:] if enc_dec else out[:, kw["input_ids"].shape[1]:]  # seq2seq: drop the start token
        tally.items += int((new != policy.pad_id).sum())
        tally.calls += 1
        tally.extra["sequences"] = tally.extra.get("sequences", 0) + out.shape[0]
        return out

    model.generate = generate
    try:
        yield tally
    finally:
        del model.generate


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Min wall time of each fn over `repeats` rounds, the fns interleaved per round so that load from other
    processes on the shared cores hits both sides alike. Returns {name: seconds}; fn results are discarded."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def profile_top(fn, n: int = 12) -> list[dict]:
    """cProfile of one call of fn: the top-n functions by own time (where the seconds actually go)."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "tottime_s": round(tt, 4),
                     "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


# ---------------------------------------------------------------------- machine


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark (VmHWM), so that the next section's peak is its own; getrusage's
    process-wide peak is unaffected. Linux only; elsewhere section peaks fall back to the process peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def section_peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss(): includes what earlier sections still hold (cached models)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def machine_info() -> dict:
    import transformers
    import trl

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def clean(x):
    """Round floats for the JSON (4 significant figures are more than the noise allows)."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x
