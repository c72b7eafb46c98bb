"""A full disk (OSError ENOSPC) or a killed save never costs the last good checkpoint or file.

Policy.save writes a temporary directory and renames it into place; atomic_write_text writes a temporary file,
fsyncs and renames. A failure at any write leaves the previous version intact and loadable and no temporary
behind; the CLI reports it in one line (exit 1) and the same command resumes once there is space.
(tests/test_kill.py covers `kill -9` at the named crash points.)
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES
from transformers import T5ForConditionalGeneration

import pipeline.durable
from pipeline import environment
from pipeline.__main__ import main
from pipeline.config import ModelConfig
from pipeline.durable import atomic_write_text
from pipeline.models import load_policy

TINY = TINY_OVERRIDES


def _enospc(filename) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(filename))


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(d).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)



# ------------------------------------------------------------------ Policy.save


def _partial_then_full(name: str):
    """A save_pretrained that gets part of `name` onto the disk, then runs out of space."""
    def save_pretrained(self, d, *args, **kwargs):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / name).write_bytes(b"\0" * 100)
        raise _enospc(Path(d) / name)
    return save_pretrained


@pytest.mark.parametrize("where", ["weights", "tokenizer", "policy.json"])
def test_enospc_during_a_checkpoint_keeps_the_previous_one(make_policy, tmp_path, monkeypatch, where):
    policy = make_policy("t5-tiny")
    ckpt = policy.save(tmp_path / "model")
    good = _digest(ckpt)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)  # the new checkpoint would differ
    if where == "weights":
        monkeypatch.setattr(T5ForConditionalGeneration, "save_pretrained", _partial_then_full("model.safetensors"))
    elif where == "tokenizer":
        monkeypatch.setattr(type(policy.tokenizer), "save_pretrained", _partial_then_full("tokenizer.json"))
    else:
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "policy.json":
                raise _enospc(self)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError) as e:
        policy.save(tmp_path / "model")
    assert e.value.errno == errno.ENOSPC
    assert _digest(ckpt) == good and _leftovers(tmp_path) == []
    monkeypatch.undo()
    loaded = load_policy(ModelConfig(name=str(ckpt)))
    assert not next(loaded.parameters()).equal(next(policy.parameters()))  # the old weights, not the new ones


def test_a_failed_rename_puts_the_previous_checkpoint_back(make_policy, tmp_path, monkeypatch):
    import pipeline.models

    policy = make_policy("t5-tiny")
    ckpt = policy.save(tmp_path / "model")
    good = _digest(ckpt)
    real, calls = pipeline.models.os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # model -> model.old-PID went through; model.tmp-PID -> model fails
            raise _enospc(dst)
        return real(src, dst)

    monkeypatch.setattr(pipeline.models.os, "replace", replace)
    with pytest.raises(OSError):
        policy.save(tmp_path / "model")
    monkeypatch.undo()
    assert _digest(ckpt) == good and _leftovers(tmp_path) == []


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_save_are_cleared_by_the_next(make_policy, tmp_path):
    """A process killed mid-save leaves model.tmp-PID (or, between its two renames, model.old-PID and no model)."""
    policy = make_policy("t5-tiny")
    ckpt = policy.save(tmp_path / "model")
    good = _digest(ckpt)
    dead = _dead_pid()
    shutil.copytree(ckpt, tmp_path / f"model.tmp-{dead}")
    ckpt.rename(tmp_path / f"model.old-{dead}")  # killed between `model -> model.old` and `model.tmp -> model`
    (tmp_path / f".metrics.json.tmp-{dead}").write_text("{half")
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert _leftovers(tmp_path) == [f"model.old-{dead}", f"model.tmp-{dead}"]  # only its own name's are cleared
    pipeline.durable.clear_stale(ckpt)  # what the next save does first: the previous checkpoint comes back
    assert _digest(ckpt) == good and _leftovers(tmp_path) == []
    live = tmp_path / f"model.tmp-{os.getppid()}"  # a live process's temp dir is not touched
    live.mkdir()
    policy.save(ckpt)
    assert _leftovers(tmp_path) == [live.name]


# ------------------------------------------------------------------ atomic_write_text


class _FullFile:
    """A file whose write stores half of the text, then fails like a full disk."""

    def __init__(self, path, *a, **k):
        self.fh = open(path, *a, **k)

    def write(self, text):
        self.fh.write(text[: len(text) // 2])
        self.fh.flush()
        raise _enospc(self.fh.name)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_enospc_in_atomic_write_text_keeps_the_old_file(tmp_path, monkeypatch, where):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, json.dumps({"old": 1}))
    if where == "write":
        monkeypatch.setattr(pipeline.durable, "open", _FullFile, raising=False)
    else:
        def fsync(fd):
            raise _enospc(target)

        monkeypatch.setattr(pipeline.durable.os, "fsync", fsync)
    with pytest.raises(OSError) as e:
        atomic_write_text(target, json.dumps({"new": 2, "padding": "x" * 1000}))
    assert e.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"old": 1} and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json"]


# ------------------------------------------------------------------ the label store


def test_a_judge_killed_mid_batch_loses_one_chunk_of_answers_at_most(tmp_path, monkeypatch):
    from pipeline.labels import LabelStore

    class Dies:
        kind, name, calls = "scalar", "dies", []

        def score(self, rows, responses, seed=0):
            self.calls.append(len(responses))
            if len(self.calls) == 3:
                raise SystemExit("killed")  # not an Exception: nothing of this call may be stored
            return [float(len(y)) for y in responses]

    monkeypatch.setattr(LabelStore, "chunk", 4)
    rows, ys = [{"id": str(i)} for i in range(10)], [f"response {'x' * i}" for i in range(10)]
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(SystemExit):
        store.scalar(Dies(), rows, ys, iteration=1)
    assert Dies.calls == [4, 4, 2] and store.count() == 8  # two chunks committed before the third call died
    store.close()
    store = LabelStore(tmp_path / "labels.sqlite")
    judge = Dies()
    judge.calls = [0, 0, 0]  # past its death
    assert store.scalar(judge, rows, ys, iteration=1) == [float(len(y)) for y in ys]
    assert judge.calls[3:] == [2] and store.asked == 2  # only the lost chunk is asked again


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft_run")
    (d / "r.yaml").write_text("name: durable\n")
    assert main(["run", str(d / "r.yaml"), f"run_dir={d / 'run'}", *TINY, "--stage", "sft"]) == 0
    return d / "run"


def _copy(sft_run, tmp_path) -> tuple[str, Path]:
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: durable\nrun_dir: {run}\n")
    (run / "config.yaml").unlink()  # run_dir differs from the module's copy
    return str(recipe), run


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = main(list(argv))
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip() and "\r" not in line]


def test_full_disk_during_the_online_checkpoint_is_one_line_and_resumes(sft_run, tmp_path, capsys, monkeypatch):
    recipe, run = _copy(sft_run, tmp_path)
    sft = _digest(run / "sft" / "model")
    monkeypatch.setattr(T5ForConditionalGeneration, "save_pretrained", _partial_then_full("model.safetensors"))
    rc, err = _cli(capsys, "run", recipe, *TINY)
    tmp = run / "online" / "iter_1" / f"model.tmp-{os.getpid()}" / "model.safetensors"
    assert (rc, err[-1]) == (1, f"error: no space left on device writing '{tmp}'; finished stages, checkpoints and "
                                "labels are kept: free some space and rerun the same command to resume")
    assert _digest(run / "sft" / "model") == sft and _leftovers(run) == []
    assert not (run / "online" / "iter_1" / "model").exists() and not (run / "online" / "iter_1" / "DONE").exists()
    labelled = sqlite3.connect(run / "labels.sqlite").execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    assert labelled == 18  # the iteration's labels were committed before the checkpoint
    monkeypatch.undo()
    assert main(["run", recipe, *TINY]) == 0  # space again: the same command resumes
    m = json.loads((run / "online" / "iter_1" / "metrics.json").read_text())
    assert m["labels_asked_this_process"] == 0 and m["labels_spent_total"] == 18  # no label asked again
    load_policy(ModelConfig(name=str(run / "online" / "iter_1" / "model")))


def test_full_label_store_is_one_line(sft_run, tmp_path, capsys, monkeypatch):
    """SQLite reports a full disk as OperationalError('database or disk is full'); here a page cap plays it."""
    import pipeline.runner
    from pipeline.labels import LabelStore

    recipe, run = _copy(sft_run, tmp_path)

    class Capped(LabelStore):
        def __init__(self, path):
            super().__init__(path)
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(pipeline.runner, "LabelStore", Capped)
    rc, err = _cli(capsys, "run", recipe, *TINY)
    assert (rc, err[-1]) == (1, "error: label store (labels.sqlite): database or disk is full; finished stages, "
                                "checkpoints and labels are kept: free some space and rerun the same command to resume")
    assert (run / "sft" / "DONE").exists() and not (run / "eval" / "DONE").exists()
    monkeypatch.undo()
    assert main(["run", recipe, *TINY]) == 0  # space again: the same command resumes


_TABLE_PARENT = '''
import os, sys, time
from pathlib import Path
from pipeline.table import execute

def job(marker):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    out = Path(sys.argv[1])
    execute([(f"job {i}", job, (str(out / f"worker{i}"),)) for i in range(2)], 2, out)
'''


def _alive(pid: int) -> bool:
    try:  # a reparented child that nobody reaps stays a zombie: it has ended all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_table_jobs_end_when_the_table_process_is_killed(tmp_path):
    """`pipeline table --jobs N` killed (SIGKILL, OOM) must not leave its job processes training on: they would
    hold their runs' locks, so the rerun that resumes the table would be refused."""
    script = tmp_path / "parent.py"
    script.write_text(_TABLE_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=Path(__file__).resolve().parents[1])
    markers = [tmp_path / f"worker{i}" for i in range(2)]
    pids = []
    try:
        deadline = time.time() + 120
        while not all(m.exists() and m.read_text() for m in markers):
            assert parent.poll() is None and time.time() < deadline, "the jobs never started"
            time.sleep(0.2)
        pids = [int(m.read_text()) for m in markers]
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids)
    finally:
        for p in [parent.pid, *pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_run_directory_records_its_software_stack(sft_run):
    saved = json.loads((sft_run / environment.FILE).read_text())
    assert saved["started_with"] == saved["this_command"] == environment.current()
