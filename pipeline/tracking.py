"""Live curves and logged samples: `tracking.report_to` (tensorboard | wandb | none) and `tracking.sample_prompts`.

Stages call one object, `for_stage(out_dir)`, and never name a backend. Its settings come from the run
directory's config.yaml (the resolved recipe), so the stages need no new arguments; a stage called outside a
run directory (a library call, a unit test) logs nothing. TensorBoard event files go to
`<run>/tb/<the stage's path inside the run>`: tb/sft, tb/sources/<label>, tb/online, and in a table
tb/methods/<method>/seed<s>/online, so that one `tensorboard --logdir <run>/tb` lays every method over the others.

No point is logged twice after a crash. Every x value comes from the run's durable state: an online optimizer
step is (the steps of the finished iterations, read from their metrics.json) + the step within the iteration,
a block is numbered after the blocks in the finished iterations' arms.csv, an iteration by its number. Each
online iteration writes its own event file (suffix `.iter<t>`), complete before the iteration's DONE marker;
an iteration that starts deletes the files of itself and any later iteration, which only an attempt killed
before its DONE can have left. The SFT stage is redone from its first step after a crash, so it starts by
deleting its own earlier files. A TensorBoard that was open during the crash keeps the killed attempt's points
in memory until it is restarted.

W&B keeps what it was sent: there a resumed iteration's points appear again at the same x values.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.config import ConfigError, TrackingConfig, closest, load_recipe
from pipeline.data import load_split
from pipeline.durable import atomic_write_text
from pipeline.models import load_policy
from reward_sources.contracts import knows_utility

log = logging.getLogger(__name__)
BACKENDS = ("tensorboard", "wandb", "none")
# The same Gumbel noise for SFT, every iterate and every run of a table (keyed by prompt id): logged samples
# differ only where the policies do.
SAMPLE_SEED = 0
# How far above a stage's output directory config.yaml may be: <run>/methods/<method>/seed<s>/online.
_MAX_DEPTH = 4
_DOC_CHARS = 300


def check(cfg: TrackingConfig) -> list[str]:
    """The backends asked for, each name checked; `none` alone turns logging off."""
    for name in cfg.report_to:
        if name not in BACKENDS:
            close = closest(name, BACKENDS)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"tracking.report_to: unknown '{name}' (known: {', '.join(BACKENDS)}){hint}")
    if "none" in cfg.report_to and len(cfg.report_to) > 1:
        raise ConfigError(f"tracking.report_to: 'none' turns logging off and cannot be combined ({cfg.report_to})")
    return [n for n in dict.fromkeys(cfg.report_to) if n != "none"]


def run_root(out_dir: Path) -> Path | None:
    out_dir = Path(out_dir).resolve()
    for parent in list(out_dir.parents)[:_MAX_DEPTH]:
        if (parent / "config.yaml").is_file():
            return parent
    return None


def for_stage(out_dir: Path) -> Tracker:
    """The tracker of the stage writing to out_dir (inert on processes other than the main one)."""
    root = run_root(out_dir) if distributed.is_main() else None
    if root is None:
        return Tracker(None, Path(out_dir), TrackingConfig(report_to=["none"], sample_prompts=0))
    return Tracker(root, Path(out_dir), load_recipe(root / "config.yaml").tracking)


class Tracker:
    def __init__(self, root: Path | None, out_dir: Path, cfg: TrackingConfig):
        self.root, self.out_dir, self.cfg = root, out_dir, cfg
        backends = check(cfg)
        self.stage = out_dir.resolve().relative_to(root).as_posix() if root is not None else ""
        self.log_dir = root / "tb" / self.stage if root is not None else None
        self.tensorboard = "tensorboard" in backends
        self.wandb = _open_wandb(root, self.stage) if "wandb" in backends else None
        self._writer = None
        self._step = self._block = 0  # the next online step / block is offset + 1
        self._next_iteration = 1  # the iteration whose offsets _step and _block hold (carried from the last one)
        self._sample_rows: list[dict] | None = None  # the logged test prompts and SFT's samples, drawn once
        self._sft_samples: list[str] | None = None

    # ------------------------------------------------------------------ segments (one event file each)
    def begin(self, iteration: int | None = None) -> None:
        """Open the event file of the SFT stage (iteration None) or of online iteration `iteration`, deleting what
        an attempt killed before its DONE marker left of them."""
        # Read from the finished iterations' files only when this tracker did not log the previous iteration
        # itself (a resumed run); otherwise train_step and iteration() have already counted up to here.
        if (iteration is not None and iteration != self._next_iteration
                and (self.tensorboard or self.wandb is not None)):
            self._step = sum(json.loads((self.out_dir / f"iter_{u}" / "metrics.json").read_text())["steps"]
                             for u in range(1, iteration))
            self._block = sum(_count_rows(self.out_dir / f"iter_{u}" / "arms.csv") for u in range(1, iteration))
        if iteration is not None:
            self._next_iteration = iteration + 1
        if not self.tensorboard:
            return
        self.end()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for p in self.log_dir.glob("events.out.tfevents.*"):
            t = _iteration_of(p.name)
            if iteration is None or (t is not None and t >= iteration):
                p.unlink()
        from torch.utils.tensorboard import SummaryWriter

        # flush_secs: TensorBoard rereads every few seconds; queued points would otherwise wait two minutes
        self._writer = SummaryWriter(str(self.log_dir), flush_secs=5,
                                     filename_suffix="" if iteration is None else f".iter{iteration}")

    def end(self) -> None:
        """Everything logged so far is in the event file (before the DONE marker that it describes)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ points
    def scalars(self, values: dict, step: int, axis: str = "step") -> None:
        """None and non-finite values are left out (a judge without exact utility, a UCB value of an unplayed arm)."""
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if self._writer is not None:
            for tag, v in values.items():
                self._writer.add_scalar(tag, v, step)
        if self.wandb is not None and values:
            self.wandb.log({**values, f"axis/{axis}": step})

    def sft_step(self, phase: str, step: int, loss: float, lr: float) -> None:
        self.scalars({f"{phase}/loss": loss, f"{phase}/lr": lr}, step)

    def train_step(self, stats: dict) -> None:
        """One optimizer step of the online update (pipeline/online.py's stats: loss, margin, accuracy,
        chosen_logratio, rejected_logratio, kl_ref, lr, grad_norm)."""
        self._step += 1
        self.scalars({f"train/{k}": v for k, v in stats.items()}, self._step)
        if self._writer is not None:
            self._writer.flush()  # a step is seconds of work; a watcher sees it at once

    def iteration(self, t: int, metrics: dict, arm_rows: list[dict], arms: list[str]) -> None:
        """Per-iteration curves (x = iteration) and the selector's UCB value per block (x = block over the run)."""
        labels = metrics["labels_this_iteration"]
        self.scalars({"iteration/mean_judge_score": metrics["mean_judge_score"],
                      "iteration/true_utility": metrics["mean_true_utility"],
                      "iteration/labels_spent_total": metrics["labels_spent_total"],
                      "iteration/labels": labels,
                      "iteration/label_cost": metrics["label_cost_this_iteration"],
                      "iteration/judge_failure_rate": metrics["judge_failures"] / labels if labels else None,
                      "iteration/pairs": metrics["pairs"],
                      **{f"arms/{a}": metrics["arms"].get(a, 0) / metrics["prompts"]
                         for a in dict.fromkeys([*arms, *metrics["arms"]])}},
                     t, axis="iteration")
        for r in arm_rows:
            self._block += 1
            value = r["ucb_value"]
            if isinstance(value, (int, float)):
                self.scalars({f"ucb/{r['arm']}": value}, self._block, axis="block")

    # ------------------------------------------------------------------ samples
    def samples(self, t: int, policy, judge, cfg, start_cfg, it_dir: Path) -> None:
        """samples.md in it_dir and a TensorBoard text table: the first `sample_prompts` held-out test prompts,
        their reference, SFT's summary and iteration t's, drawn with the same noise."""
        if self.cfg.sample_prompts <= 0 or self.root is None:
            return
        if self._sample_rows is None:
            self._sample_rows = load_split(self.root / "data", "test")[: self.cfg.sample_prompts]
        rows = self._sample_rows
        if not rows:
            return
        if self._sft_samples is None:
            with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: training's RNG stays
                sft = load_policy(start_cfg)
            self._sft_samples = _draw(sft, rows, cfg)
            del sft
        columns = {"reference": [r["summary"] for r in rows], "SFT": self._sft_samples,
                   f"iteration {t}": _draw(policy, rows, cfg)}
        utility = {k: judge.utility(rows, ys) for k, ys in columns.items()} if knows_utility(judge) else None
        md = _table(t, rows, columns, utility, cfg)
        atomic_write_text(it_dir / "samples.md", md)
        if self._writer is not None:
            self._writer.add_text("samples", md, t)
        if self.wandb is not None:
            import wandb

            data = [[r["id"], *(ys[i] for ys in columns.values())] for i, r in enumerate(rows)]
            self.wandb.log({"samples": wandb.Table(columns=["prompt", *columns], data=data), "axis/iteration": t})


def _draw(policy, rows: list[dict], cfg) -> list[str]:
    return [s[0] for s in policy.sample([r["document"] for r in rows], 1, temperature=cfg.temperature,
                                        top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                                        batch_size=cfg.gen_batch_size, seed=SAMPLE_SEED,
                                        keys=[r["id"] for r in rows])]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "(empty)"


def _table(t: int, rows: list[dict], columns: dict, utility: dict | None, cfg) -> str:
    head = ["prompt", *columns]
    lines = [f"# Iteration {t}: {len(rows)} held-out test prompts", "",
             f"One sample each at temperature {cfg.temperature:g} (top-k {cfg.top_k}), seed {SAMPLE_SEED} keyed by "
             "prompt id: SFT and every iteration draw the same noise."
             + (" In brackets: the judge's exact utility." if utility else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        doc = r["document"] if len(r["document"]) <= _DOC_CHARS else r["document"][:_DOC_CHARS] + "…"
        cells = [f"**{_cell(r['id'])}** {_cell(doc)}"]
        for name, ys in columns.items():
            cells.append(_cell(ys[i]) + (f" ({utility[name][i]:+.2f})" if utility else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if utility:
        means = [f"{sum(u) / len(u):+.2f}" for u in utility.values()]
        lines.append("| **mean utility** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def _iteration_of(name: str) -> int | None:
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix[4:]) if suffix.startswith("iter") and suffix[4:].isdigit() else None


def _count_rows(csv_path: Path) -> int:
    return max(0, len(csv_path.read_text().splitlines()) - 1)


def _wandb_configured() -> bool:
    """A key, an offline mode or a stored login: otherwise wandb.init would stop the run to ask for a key."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def _open_wandb(root: Path | None, stage: str):
    if root is None:
        return None
    try:
        import wandb
    except ImportError:
        log.warning("tracking.report_to has wandb but wandb is not installed (pip install wandb): not logged there")
        return None
    if not _wandb_configured():
        log.warning("tracking.report_to has wandb but no WANDB_API_KEY, WANDB_MODE=offline or wandb login was "
                    "found: not logged there")
        return None
    import hashlib

    # one W&B run per stage directory, found again on resume
    run_id = hashlib.sha1(str(root.resolve() / stage).encode()).hexdigest()[:16]
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "transfer-rlhf"), name=f"{root.name}/{stage}",
                     group=root.name, id=run_id, resume="allow", dir=str(root), reinit=True)
    for axis in ("step", "iteration", "block"):
        run.define_metric(f"axis/{axis}")
    for name, axis in (("train/*", "step"), ("sft/*", "step"), ("copy/*", "step"), ("iteration/*", "iteration"),
                       ("arms/*", "iteration"), ("samples", "iteration"), ("ucb/*", "block")):
        run.define_metric(name, step_metric=f"axis/{axis}")
    return run
