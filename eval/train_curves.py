"""`python -m eval.train_curves RUN_FOLDER`: what each online update did, read back from the TensorBoard scalars the
tracker logged per step (runs/<name>/tb/.../online/events.*.iter<t>), one row per run and iteration.

Why: a table's paired differences say which checkpoint is better, not how the update got there. Whether every step
was clipped (`train/grad_norm` is the norm before clipping), how the chosen and rejected log-ratios moved at the
start, and how well the last steps fit their batches are the first questions when one build's policy responds to
its pairs and another's does not. Columns: steps; the share of steps whose pre-clip norm exceeds the clip
(online.max_grad_norm from the run folder's config.yaml unless --clip); the median pre-clip norm over all steps and
over the first --first steps; the mean chosen and rejected log π/π_ref over the first --first steps; the mean DPO
margin and pair accuracy over the last --last steps (batch means, so noisy step to step).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import yaml

FIELDS = ("steps", "clipped", "grad_norm_median", "grad_norm_first", "chosen_logratio_first",
          "rejected_logratio_first", "margin_last", "accuracy_last")
_ITER = re.compile(r"\.iter(\d+)$")


def scalars(path: Path) -> dict[str, np.ndarray]:
    """tag -> values in step order, from one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import: on use

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
    acc.Reload()
    return {tag: np.array([e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)])
            for tag in acc.Tags()["scalars"]}


def summarise(values: dict[str, np.ndarray], clip: float, first: int = 50, last: int = 50) -> dict:
    g = values.get("train/grad_norm", np.array([]))
    mean = lambda tag, part: float(np.mean(part(values[tag]))) if len(values.get(tag, [])) else float("nan")
    head, tail = (lambda v: v[:first]), (lambda v: v[-last:])
    return dict(steps=len(g), clipped=float(np.mean(g > clip)) if len(g) else float("nan"),
                grad_norm_median=float(np.median(g)) if len(g) else float("nan"),
                grad_norm_first=float(np.median(g[:first])) if len(g) else float("nan"),
                chosen_logratio_first=mean("train/chosen_logratio", head),
                rejected_logratio_first=mean("train/rejected_logratio", head),
                margin_last=mean("train/margin", tail), accuracy_last=mean("train/accuracy", tail))


def run_curves(folder: Path, clip: float | None = None, first: int = 50, last: int = 50) -> list[dict]:
    """One row per online event file under folder/tb: (run, iteration, FIELDS)."""
    if clip is None:
        clip = float(yaml.safe_load((folder / "config.yaml").read_text())["online"]["max_grad_norm"])
    rows = []
    for path in sorted((folder / "tb").rglob("events.out.tfevents.*")):
        it = _ITER.search(path.name)
        if path.parent.name != "online" or it is None:  # SFT and source stages log their own curves
            continue
        rows.append(dict(run=path.parent.parent.relative_to(folder / "tb").as_posix(), iteration=int(it.group(1)),
                         **summarise(scalars(path), clip, first, last)))
    return rows


def markdown(rows: list[dict], clip: float | None, first: int, last: int) -> str:
    head = (f"Online updates (pre-clip gradient norm against the clip{'' if clip is None else f' {clip:g}'}; "
            f"first {first} / last {last} steps):\n\n| run | iteration | " + " | ".join(FIELDS) + " |\n"
            + "|---" * (len(FIELDS) + 2) + "|\n")
    fmt = lambda v: str(v) if isinstance(v, int) else f"{v:.2f}"
    return head + "\n".join(f"| {r['run']} | {r['iteration']} | " + " | ".join(fmt(r[f]) for f in FIELDS) + " |"
                            for r in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.train_curves", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder, e.g. runs/table_6144_builds")
    parser.add_argument("--clip", type=float, help="the clipping threshold (default: the run's online.max_grad_norm)")
    parser.add_argument("--first", type=int, default=50, help="steps at the start of each update (default 50)")
    parser.add_argument("--last", type=int, default=50, help="steps at the end of each update (default 50)")
    args = parser.parse_args(argv)
    if not (args.folder / "tb").is_dir():
        print(f"error: '{args.folder / 'tb'}' does not exist: not a run folder with TensorBoard logs", file=sys.stderr)
        return 2
    if args.clip is None and not (args.folder / "config.yaml").exists():
        print(f"error: '{args.folder / 'config.yaml'}' does not exist: give --clip", file=sys.stderr)
        return 2
    if min(args.first, args.last) < 1:
        print("error: --first and --last must be >= 1", file=sys.stderr)
        return 2
    rows = run_curves(args.folder, args.clip, args.first, args.last)
    print(markdown(rows, args.clip, args.first, args.last) if rows else "no online updates logged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
