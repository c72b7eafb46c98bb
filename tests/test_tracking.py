"""Live curves (pipeline/tracking.py): a tiny run's TensorBoard event files, read back with tensorboard's own
EventAccumulator, hold every named curve with one point per step / iteration / block; after a crash (simulated
in-process: an exception at one of the pipeline's named crash points, with the points logged until then already
on disk) the rerun's curves equal an uninterrupted run's, no step twice; tracking off changes no result.

The tiny recipe is conftest's (synthetic world, shape:t5-tiny, 2 online iterations of 8 prompts, 4 DPO steps each,
4 UCB blocks of 2 with a rouge arm, the oracle judge), run in-process; data and SFT once for the module.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from conftest import tiny_run_recipe
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline import tracking
from pipeline.__main__ import main
from pipeline.config import ConfigError, TrackingConfig

STEP_TAGS = ["train/loss", "train/margin", "train/accuracy", "train/chosen_logratio", "train/rejected_logratio",
             "train/kl_ref", "train/lr", "train/grad_norm"]
ITERATION_TAGS = ["iteration/mean_judge_score", "iteration/true_utility", "iteration/labels_spent_total",
                  "iteration/labels", "iteration/label_cost", "iteration/judge_failure_rate", "iteration/pairs",
                  "arms/self", "arms/rouge"]


class Killed(BaseException):
    """Stands for kill -9 at a crash point: nothing in the pipeline catches it."""


def curves(log_dir: Path) -> dict:
    """{tag: [(step, value)]} of every scalar, and {tag: [step]} of every text entry, as TensorBoard reads them,
    in step order: a resumed run's points are in a second event file, and the accumulator reads files in name order,
    whose writer counter sorts as text ("10" before "9"), so file order is not step order. A point logged twice
    still shows as a repeated entry."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
    return out | {tag: sorted(e.step for e in acc.Tensors(tag)) for tag in acc.Tags()["tensors"]}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tracking")
    (d / "r.yaml").write_text(tiny_run_recipe("tests/test_tracking.py", "tracking",
                                              sft={"eval_examples": 2, "copy_steps": 2}))
    assert main(["run", str(d / "r.yaml"), f"run_dir={d / 'run'}", "--stage", "sft"]) == 0
    return d


def _copy(sft_run: Path, to: Path) -> list[str]:
    """The SFT-finished run copied to `to`: the command line that continues it there."""
    shutil.copytree(sft_run / "run", to / "run")
    (to / "run" / "config.yaml").unlink()  # it names the module's run_dir
    return ["run", str(sft_run / "r.yaml"), f"run_dir={to / 'run'}", "--stage", "online"]


@pytest.fixture(scope="module")
def reference(sft_run, tmp_path_factory):
    """An uninterrupted online stage."""
    d = tmp_path_factory.mktemp("reference")
    assert main(_copy(sft_run, d)) == 0
    return d / "run"


def _steps(run: Path) -> list[int]:
    return [json.loads((run / "online" / f"iter_{t}" / "metrics.json").read_text())["steps"] for t in (1, 2)]


def test_a_tiny_run_writes_every_curve_once_per_step(reference):
    sft = curves(reference / "tb" / "sft")
    assert [s for s, _ in sft["sft/loss"]] == [1, 2, 3] and [s for s, _ in sft["sft/lr"]] == [1, 2, 3]
    assert [s for s, _ in sft["copy/loss"]] == [1, 2]
    rouge = json.loads((reference / "sft" / "metrics.json").read_text())["rouge_lsum"]
    assert sft["sft/eval_rouge_lsum"] == [(3, pytest.approx(rouge))]

    online = curves(reference / "tb" / "online")
    n = sum(_steps(reference))
    assert _steps(reference) == [4, 4]
    for tag in STEP_TAGS:
        assert [s for s, _ in online[tag]] == list(range(1, n + 1)), tag
    for tag in ITERATION_TAGS:
        assert [s for s, _ in online[tag]] == [1, 2], tag
    for t in (1, 2):
        m = json.loads((reference / "online" / f"iter_{t}" / "metrics.json").read_text())
        assert online["iteration/mean_judge_score"][t - 1][1] == pytest.approx(m["mean_judge_score"])
        assert online["iteration/true_utility"][t - 1][1] == pytest.approx(m["mean_true_utility"])
        assert online["iteration/labels_spent_total"][t - 1][1] == m["labels_spent_total"] == 24 * t
        assert online["iteration/judge_failure_rate"][t - 1][1] == 0
        first, last = 4 * (t - 1), 4 * t - 1  # the iteration's first and last step
        assert online["train/loss"][first][1] == pytest.approx(m["loss_first"])
        assert online["train/loss"][last][1] == pytest.approx(m["loss_last"])
        assert online["train/margin"][last][1] == pytest.approx(m["margin_last"], rel=1e-5)
    # the margin is chosen minus rejected log-ratio, and the KL estimate minus their mean
    for (_, h), (_, w), (_, lo), (_, kl) in zip(*(online[k] for k in ("train/margin", "train/chosen_logratio",
                                                                      "train/rejected_logratio", "train/kl_ref"))):
        assert h == pytest.approx(w - lo, abs=1e-4) and kl == pytest.approx(-(w + lo) / 2, abs=1e-4)
    # UCB values: one point per block whose chosen arm had a finite value, x = the block's number in the run
    import csv

    blocks = [r for t in (1, 2) for r in csv.DictReader(open(reference / "online" / f"iter_{t}" / "arms.csv"))]
    assert len(blocks) == 8
    logged = sorted((s, tag[4:], v) for tag in online if tag.startswith("ucb/") for s, v in online[tag])
    expected = [(b, r["arm"], float(r["ucb_value"])) for b, r in enumerate(blocks, 1) if r["ucb_value"] != "inf"]
    assert len(logged) == len(expected) > 0
    assert all(a[:2] == b[:2] and a[2] == pytest.approx(b[2]) for a, b in zip(logged, expected))


def test_samples_md_per_iteration_beside_sft_and_the_reference(reference):
    assert curves(reference / "tb" / "online")["samples/text_summary"] == [1, 2]
    tables = [(reference / "online" / f"iter_{t}" / "samples.md").read_text() for t in (1, 2)]
    test_rows = [json.loads(line) for line in (reference / "data" / "test.jsonl").read_text().splitlines()][:4]
    for t, md in enumerate(tables, 1):
        rows = [line for line in md.splitlines() if line.startswith("| **w")]
        assert f"| prompt | reference | SFT | iteration {t} |" in md and len(rows) == 4
        assert all(f"**{r['id']}**" in row and " ".join(r["summary"].split()) in row for r, row in zip(test_rows, rows))
        assert "mean utility" in md  # the oracle knows the exact utility
    # the same noise for SFT every time: its column is the same in both iterations
    sft_column = [[row.split(" | ")[2] for row in md.splitlines() if row.startswith("| **w")] for md in tables]
    assert sft_column[0] == sft_column[1]


@pytest.mark.parametrize("point", ["update:6", "iteration_end:1"])
def test_a_crash_then_resume_logs_no_point_twice(sft_run, reference, tmp_path, monkeypatch, point):
    """update:6 = iteration 2's 2nd optimizer step (its 1st step is on disk); iteration_end:1 = every point of
    iteration 1 on disk but not its DONE marker, so the iteration is redone."""
    import pipeline.online

    name, nth = point.split(":")
    hits = []

    def crash_point(at):
        hits.append(at)
        if at == name and hits.count(at) == int(nth):
            raise Killed(point)

    argv = _copy(sft_run, tmp_path)
    monkeypatch.setattr(pipeline.online, "crash_point", crash_point)
    with pytest.raises(Killed):
        main(argv)
    killed = curves(tmp_path / "run" / "tb" / "online")
    assert len(killed["train/loss"]) == (5 if name == "update" else 4)  # the killed attempt's points are there
    monkeypatch.undo()
    assert main(argv) == 0
    assert curves(tmp_path / "run" / "tb" / "online") == curves(reference / "tb" / "online")
    assert [(tmp_path / "run" / "online" / f"iter_{t}" / "samples.md").read_text() for t in (1, 2)] == \
        [(reference / "online" / f"iter_{t}" / "samples.md").read_text() for t in (1, 2)]


def test_sft_redone_after_a_crash_logs_each_step_once(tmp_path, monkeypatch):
    from pipeline.models import Policy

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_run_recipe("tests/test_tracking.py", "sft_crash", sft={"eval_examples": 2}))
    argv = ["run", str(recipe), f"run_dir={tmp_path / 'run'}", "--stage", "sft"]

    def save(self, path):
        raise Killed("while saving the SFT model")

    monkeypatch.setattr(Policy, "save", save)
    with pytest.raises(Killed):
        main(argv)
    assert [s for s, _ in curves(tmp_path / "run" / "tb" / "sft")["sft/loss"]] == [1, 2, 3]
    monkeypatch.undo()
    assert main(argv) == 0
    again = curves(tmp_path / "run" / "tb" / "sft")
    assert [s for s, _ in again["sft/loss"]] == [1, 2, 3] and len(again["sft/eval_rouge_lsum"]) == 1


def test_tracking_off_writes_no_event_files_and_changes_no_result(sft_run, reference, tmp_path):
    argv = _copy(sft_run, tmp_path)
    assert main([*argv, "tracking.report_to=[none]"]) == 0
    run = tmp_path / "run"
    assert not (run / "tb" / "online").exists()
    for t in (1, 2):
        it, ref = run / "online" / f"iter_{t}", reference / "online" / f"iter_{t}"
        assert (it / "samples.md").read_text() == (ref / "samples.md").read_text()  # samples do not need a backend
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (it, ref))
        timing = [k for k in a if k.endswith("_s") or k.endswith("_per_process")]
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert (it / "model" / "model.safetensors").read_bytes() == (ref / "model" / "model.safetensors").read_bytes()


def test_report_to_is_checked_with_one_line(sft_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown 'tensorbord' \(known: tensorboard, wandb, none\); did you mean "
                                          r"'tensorboard'\?"):
        tracking.check(TrackingConfig(report_to=["tensorbord"]))
    with pytest.raises(ConfigError, match="'none' turns logging off and cannot be combined"):
        tracking.check(TrackingConfig(report_to=["none", "tensorboard"]))
    assert tracking.check(TrackingConfig(report_to=["tensorboard", "tensorboard"])) == ["tensorboard"]
    assert main([*_copy(sft_run, tmp_path), "tracking.report_to=[tensorbord]"]) == 2
    assert "error: tracking.report_to: unknown 'tensorbord'" in capsys.readouterr().err


def test_a_stage_outside_a_run_directory_logs_nothing(tmp_path):
    tracker = tracking.for_stage(tmp_path / "online")
    tracker.begin(1)
    tracker.train_step({"loss": 1.0})
    tracker.end()
    assert not any(tmp_path.rglob("*tfevents*"))


class _FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.metrics = init, [], {}

    def define_metric(self, name, step_metric=None):
        self.metrics[name] = step_metric

    def log(self, values):
        self.logged.append(values)


def test_wandb_gets_the_same_points_on_its_own_axes_and_stays_optional(tmp_path, monkeypatch, caplog):
    """A stand-in wandb module (no network, wandb need not be installed): what the tracker sends it."""
    runs = []
    fake = types.SimpleNamespace(init=lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1])
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "config.yaml").write_text("name: w\ntracking:\n  report_to: [wandb]\n")
    (tmp_path / "online").mkdir()
    tracker = tracking.for_stage(tmp_path / "online")
    tracker.begin(1)
    tracker.train_step({"loss": 0.5, "kl_ref": float("nan")})
    assert not any(tmp_path.rglob("*tfevents*"))  # wandb alone: no event files
    (run,) = runs
    assert run.init["id"] == hashlib.sha1(str(tmp_path.resolve() / "online").encode()).hexdigest()[:16]
    assert run.init["resume"] == "allow" and run.init["name"] == f"{tmp_path.name}/online"
    assert run.logged == [{"train/loss": 0.5, "axis/step": 1}]  # the NaN left out
    assert run.metrics["train/*"] == "axis/step" and run.metrics["ucb/*"] == "axis/block"

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert tracking.for_stage(tmp_path / "online").wandb is None
    assert "wandb is not installed" in caplog.text
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert tracking.for_stage(tmp_path / "online").wandb is None and len(runs) == 1  # never asks for a key
    assert "no WANDB_API_KEY" in caplog.text
