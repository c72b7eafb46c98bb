"""Kill harness: `kill -9` the pipeline at each named crash point, rerun the same command, compare with a run
that was never interrupted.

TRLHF_CRASH_AT=name:n makes the process SIGKILL itself the n-th time it reaches a crash point (pipeline/durable.py),
which is `kill -9` at a moment the test can name. The recipe below (synthetic world, shape:t5-tiny, 3 SFT steps,
2 online iterations of 8 prompts in 4 UCB blocks of 2 with a rouge arm, 4 DPO steps per iteration, the oracle
judge, eval on 6 prompts x 2 seeds) is run as `python -m pipeline run r.yaml` in a subprocess: once without
interruption (the reference), then per crash point killed (return code -9) and rerun unchanged (return code 0).

Checked after each rerun, against the reference:
- every file of the run directory exists and no other (no temporary or `.old` directory left behind) and is
  equal: bytes, except that safetensors are compared tensor by tensor (and byte for byte), metrics.json /
  sft metrics / DONE markers without wall-time fields (`*_s`) and without `labels_asked_this_process` and
  `judge_items_per_process` (what this process asked the judge: a rerun finds the answers stored), and run.log
  not at all; eval/winrates.csv, summary.csv, winrates.md and the plot are
  plain byte comparisons, so the win rates are equal to the last bit;
- labels.sqlite holds the same rows (key, iteration, prompt, judge, kind, responses, answer, raw; not the
  creation time): no duplicate, no lost label, the same answers;
- no label was asked twice: the judge is the oracle wrapped (through the `python` judge registry entry) so that
  it appends every query to a log file before answering; over both processes each label key appears once, and
  at the moment of the kill the logged queries equal the labels committed to labels.sqlite (nothing asked and
  then lost). Counting in the judge, not in the store, is what catches a store that forgets it was asked; the
  per-process `labels_asked_this_process` in metrics.json cannot see the killed process nor the eval stage.

Nothing was found that cannot be bit-identical: every random draw is seeded from (seed, iteration) rather than
carried in process memory, a resumed iteration starts from the previous iteration's saved float32 weights (which
equal the in-memory ones), and the UCB selector is reseeded per iteration. sft/log.jsonl is rewritten (not
appended to) by an SFT stage redone after a crash, so it is compared whole, without its wall-time field.

The data and SFT stages run once and are copied as the start of each case (the recipe and every path in it are
relative to the case directory, so the copies are exact); one case (`checkpoint:1`) starts from an empty
directory instead, to kill the SFT stage's own save and check that the redone SFT gives the same weights.
Measured: 3.0-3.6 minutes for the whole harness on 2 shared, busy CPU cores (16 pipeline processes of 7-20 s,
mostly start-up).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import tiny_run_recipe

from pipeline.labels import _key

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

RECIPE = tiny_run_recipe(
    "python -m pipeline run r.yaml   (the kill harness's recipe; paths relative to the case directory)", "kill",
    sft={"eval_examples": 0}, judge={"name": "python", "params": {"function": "kill_judge:build",
                                                                  "kwargs": {"log": "judge_calls.jsonl"}}},
    eval={"n_prompts": 6, "seeds": [0, 1]})

JUDGE = '''\
"""The oracle, appending every query to a log file before it answers (tests/test_kill.py counts them)."""
import json

from reward_sources.oracle import OracleJudge


class LoggedOracle(OracleJudge):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def score(self, rows, responses, seed=0):
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps([self.name, seed, r["id"], y]) + "\\n" for r, y in zip(rows, responses))
        return super().score(rows, responses, seed)


def build(log):
    return LoggedOracle(log)
'''


def _labels(run: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{run / 'labels.sqlite'}?mode=ro", uri=True)
    try:
        return sorted(db.execute("SELECT key, iteration, prompt_id, judge, kind, response_a, response_b, answer, raw "
                                 "FROM labels").fetchall())
    finally:
        db.close()


def _asked(case: Path) -> list[str]:
    """Label keys of every query the judge was sent, in order, over all processes of this case."""
    log = case / "judge_calls.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [_key(*json.loads(line), None) for line in lines]


# What the process must have done (and not done) when it was killed: proof that each point is where it says.
POINTS = {
    "generate:2": lambda run, n: (run / "online/iter_1/DONE").exists() and not (run / "online/iter_2").exists()
    and n == 24,  # iteration 2 sampled, nothing labelled yet (iteration 1: 8 prompts x 3 labels)
    "judge:2": lambda run, n: n == 12 and not (run / "online/iter_1").exists(),  # 2 of iteration 1's 4 blocks
    "update:6": lambda run, n: n == 48 and not (run / "online/iter_2").exists(),  # iteration 2, 2nd of 4 steps
    "checkpoint:2": lambda run, n: n == 48 and [p.name for p in (run / "online/iter_2").iterdir()][0].startswith(
        "model.tmp-") and len(list((run / "online/iter_2").iterdir())) == 1,  # iteration 2's save, before rename
    "iteration_end:1": lambda run, n: (run / "online/iter_1/metrics.json").exists()
    and (run / "online/iter_1/model").exists() and not (run / "online/iter_1/DONE").exists(),
    "eval:1": lambda run, n: (run / "online/DONE").exists() and not (run / "eval").exists() and n > 48,
    "checkpoint:1": lambda run, n: n == 0 and any(p.name.startswith("model.tmp-") for p in (run / "sft").iterdir())
    and not (run / "sft/model").exists(),  # from an empty directory: the SFT stage's save
}
FRESH = {"checkpoint:1"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    mods = root / "mods"
    mods.mkdir()
    (mods / "kill_judge.py").write_text(JUDGE)
    env = {k: v for k, v in os.environ.items() if k != "TRLHF_CRASH_AT"}
    env |= {"HF_HUB_OFFLINE": "1", "TRLHF_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(mods), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    timings = {}

    def run(case: Path, *args, crash: str | None = None) -> subprocess.CompletedProcess:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "r.yaml", *args], cwd=case,
                              env=env | ({"TRLHF_CRASH_AT": crash} if crash else {}), capture_output=True, text=True,
                              timeout=600)
        timings[f"{case.name}{' ' + crash if crash else ''}{' ' + ' '.join(args) if args else ''}"] = time.time() - t0
        return proc

    def new_case(name: str, start: Path | None) -> Path:
        case = root / name
        case.mkdir()
        (case / "r.yaml").write_text(RECIPE)
        if start is not None:
            shutil.copytree(start, case / "run")
        return case

    t0 = time.time()
    base = new_case("base", None)
    proc = run(base, "--stage", "sft")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = new_case("reference", base / "run")
    proc = run(ref)
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield {"run": run, "new_case": new_case, "base": base, "ref": ref}
    timings["total"] = time.time() - t0
    print("\nkill harness wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_reference_asks_every_label_once(harness):
    ref = harness["ref"]
    labels = _labels(ref / "run")
    asked = _asked(ref)
    assert len(labels) > 48 and sorted(asked) == sorted(k for k, *_ in labels)  # online 2 x 24, then eval
    assert all(row[7] is not None for row in labels)  # the oracle never fails
    it2 = json.loads((ref / "run/online/iter_2/metrics.json").read_text())
    assert it2["labels_asked_this_process"] == it2["labels_spent_total"] == 48
    w1 = (ref / "run/online/iter_1/model/model.safetensors").read_bytes()
    assert w1 != (ref / "run/sft/model/model.safetensors").read_bytes()  # the updates moved the weights
    assert w1 != (ref / "run/online/iter_2/model/model.safetensors").read_bytes()


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_and_rerun_equals_uninterrupted(harness, point):
    case = harness["new_case"](point.replace(":", "_"), None if point in FRESH else harness["base"] / "run")
    killed = harness["run"](case, crash=point)
    assert killed.returncode == -9, f"expected SIGKILL at {point}, got {killed.returncode}: {killed.stderr[-3000:]}"
    run = case / "run"
    at_kill = _labels(run) if (run / "labels.sqlite").exists() else []
    asked_before = _asked(case)
    assert POINTS[point](run, len(at_kill)), f"{point}: the process was not killed where the point says"
    # every query sent to the judge before the kill is a committed label (none asked and lost), none twice
    assert sorted(asked_before) == sorted(k for k, *_ in at_kill)

    rerun = harness["run"](case)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    asked = _asked(case)
    dupes = [k for k, n in Counter(asked).items() if n > 1]
    assert not dupes, f"{len(dupes)} label(s) asked twice"
    assert _labels(run) == _labels(harness["ref"] / "run")
    assert sorted(asked) == sorted(k for k, *_ in _labels(run))
    assert_same_run(run, harness["ref"] / "run")


# ---------------------------------------------------------------------------------------------- comparison


PER_PROCESS = {"labels_asked_this_process", "judge_items_per_process"}


def _no_timing(d):
    if isinstance(d, dict):
        return {k: _no_timing(v) for k, v in d.items()
                if not k.endswith("_s") and k not in PER_PROCESS}
    return d


def run_files(run: Path) -> set[str]:
    """Every file a resumed run must reproduce: not the log, nor TensorBoard event files, whose names and records
    carry time, host and pid (tests/test_tracking.py compares their points across a resume)."""
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    return {f for f in files if f != "run.log" and not f.startswith("tb/")}


def assert_same_run(run: Path, ref: Path) -> None:
    files, ref_files = run_files(run), run_files(ref)
    assert files == ref_files, f"extra: {sorted(files - ref_files)}, missing: {sorted(ref_files - files)}"
    for rel in sorted(files):
        a, b = run / rel, ref / rel
        if rel == "labels.sqlite":
            continue  # compared row by row by the caller
        if rel.endswith(".safetensors"):
            from safetensors.torch import load_file

            ta, tb = load_file(a), load_file(b)
            assert ta.keys() == tb.keys(), rel
            for name in ta:
                assert ta[name].dtype == tb[name].dtype and ta[name].equal(tb[name]), f"{rel}: tensor {name} differs"
            assert a.read_bytes() == b.read_bytes(), rel
        elif rel.endswith("metrics.json") or rel.endswith("DONE") and a.read_text().startswith("{"):
            assert _no_timing(json.loads(a.read_text())) == _no_timing(json.loads(b.read_text())), rel
        elif rel == "sft/log.jsonl":
            la, lb = (a.read_text().splitlines(), b.read_text().splitlines())
            assert [_no_timing(json.loads(x)) for x in la] == [_no_timing(json.loads(x)) for x in lb], rel
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
