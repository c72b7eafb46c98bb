"""Several processes: the sharding helpers (fast, one process) and a 2-process run against a 1-process run (slow).

The slow test runs one tiny recipe (synthetic world, shape:t5-tiny, 3 SFT steps, 2 online iterations of 8 prompts
with a rouge arm under UCB, 6 DPO steps per iteration in batches of 3 pairs (so the two processes' shares are
unequal: 2 and 1), the oracle judge, eval on 4 prompts) twice:
`python -m pipeline run r.yaml` and `accelerate launch --multi_gpu --num_processes 2 -m pipeline run r.yaml` with
no GPU visible (accelerate then joins a gloo process group on CPU; `--cpu` would start a single process).

Iteration 1's labels must be equal, row for row: its samples come from the SFT weights, and generation is the
same batches with the same per-batch seeds in either run, only dealt to two processes. The SFT weights themselves
are not bit-identical: DDP averages two half-batch gradients where one process differentiates the whole batch's
mean, so the sums run in a different order and may differ in the last float bits (the SFT and DPO losses are
checked to agree to 1e-5, which a wrongly scaled loss would not). A last-bit difference could in principle flip
one sampled token; we saw none here (iteration 2's and eval's labels were also equal when this test was written),
but only iteration 1 is asserted exactly, and later iterations by count. metrics.json's world_size shows that the
2-process run's update ran in 2 processes.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_recipe

from pipeline import distributed

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- fast: helpers in one process


def test_shard_then_unshard_restores_order():
    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        shards = [distributed.shard(items, r, world) for r in range(world)]
        assert sorted(x for s in shards for x in s) == items  # each item in exactly one share
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
        assert distributed.unshard(shards, len(items)) == items
    assert distributed.shard(items) == items  # one process: everything


def test_one_process_helpers_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import torch

    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast([1, 2]) == [1, 2]
    x = torch.tensor([1.5, 2.0])
    assert distributed.all_sum(x) is x
    assert distributed.on_main(lambda a, b: a + b, 2, b=3) == 5
    with pytest.raises(KeyError):
        distributed.on_main(lambda: {}["missing"])
    distributed.barrier()
    with distributed.main_first():
        pass


def test_sharded_sampling_equals_unsharded(make_policy, monkeypatch):
    """Two processes simulated in one: each generates its batches, the second's are gathered into the first's.
    k=3 and batch_size=4 make documents whose samples span two batches (the reassembly must keep batch order)."""
    policy = make_policy("t5-tiny")
    docs = ["The council met on monday.", "A new bridge will open in may.", "Workers went on strike.",
            "The school announced plans.", "The river rose."]
    kw = dict(temperature=1.0, max_new_tokens=6, batch_size=4, seed=7)
    plain = policy.sample(docs, 3, **kw)
    assert policy.sample(docs, 3, shard=True, **kw) == plain  # one process: shard=True changes nothing

    shares = {}

    def keep(obj):
        shares[1] = obj
        return [obj]

    monkeypatch.setattr(distributed, "shard", lambda items: items[1::2])
    monkeypatch.setattr(distributed, "gather", keep)
    policy.sample(docs, 3, shard=True, **kw)  # "rank 1": batches 1 and 3
    monkeypatch.setattr(distributed, "shard", lambda items: items[0::2])
    monkeypatch.setattr(distributed, "gather", lambda obj: [obj, shares[1]])
    assert policy.sample(docs, 3, shard=True, **kw) == plain  # "rank 0" with rank 1's batches gathered


def test_parallel_map_one_process_and_simulated_share(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    double = lambda xs: [2 * x for x in xs]  # noqa: E731
    assert distributed.parallel_map("x", double, [1, 2, 3]) == ([2, 4, 6], [3])
    assert distributed.parallel_map("x", double, []) == ([], [0])
    # serving with one process is plain on_main; the handler runs here
    assert distributed.on_main(lambda: distributed.parallel_map("x", double, [5]), serve={"x": double}) == ([10], [1])
    items = list(range(11))
    for world in (2, 3, 4):
        shares = [distributed._share(items, r, world) for r in range(world)]
        assert [x for s in shares for x in s] == items and max(map(len, shares)) - min(map(len, shares)) <= 1


# ---------------------------------------------------------------------- slow: 2 processes vs 1

RECIPE = tiny_run_recipe(
    "python -m pipeline run r.yaml   (tests/test_distributed.py; also run under accelerate launch --num_processes 2)",
    "dist", online={"batch_size": 3})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case: Path, launcher: list[str]) -> None:
    case.mkdir()
    (case / "r.yaml").write_text(RECIPE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRLHF_THREADS": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(launcher + ["-m", "pipeline", "run", "r.yaml"], cwd=case, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _labels(run: Path, iteration: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{run / 'labels.sqlite'}?mode=ro", uri=True)
    try:
        return sorted(db.execute("SELECT key, answer FROM labels WHERE iteration = ?", (iteration,)).fetchall())
    finally:
        db.close()


@pytest.mark.slow
def test_two_processes_store_the_labels_of_one(tmp_path):
    _run(tmp_path / "one", [sys.executable])
    _run(tmp_path / "two", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            "--main_process_port", str(_free_port())])
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"

    first = _labels(one, "1")
    assert len(first) == 8 * 3 and _labels(two, "1") == first  # oracle: one scalar label per online response
    for it in ("2", "eval"):
        assert len(_labels(two, it)) == len(_labels(one, it)) > 0

    for t in (1, 2):
        m1, m2 = (json.loads((r / "online" / f"iter_{t}" / "metrics.json").read_text()) for r in (one, two))
        assert (m1["world_size"], m2["world_size"]) == (1, 2)
        assert m2["labels_this_iteration"] == m1["labels_this_iteration"]
        assert m2["loss_last"] == pytest.approx(m1["loss_last"], abs=1e-5)  # DDP average = the batch mean
        # rouge scored the pools in both processes (contiguous halves of what the main process asked for)
        n = sum(m1["source_items_per_process"])
        assert len(m1["source_items_per_process"]) == 1 and n > 0
        assert m2["source_items_per_process"] == [n // 2, n - n // 2]
        # the oracle judge is shardable: both processes answered queries, and the labels above are still equal
        assert len(m1["judge_items_per_process"]) == 1 and len(m2["judge_items_per_process"]) == 2
        assert sum(m2["judge_items_per_process"]) == sum(m1["judge_items_per_process"]) > 0
        assert min(m2["judge_items_per_process"]) > 0
    s1, s2 = (json.loads((r / "sft" / "metrics.json").read_text()) for r in (one, two))
    assert s2["train_loss_last"] == pytest.approx(s1["train_loss_last"], abs=1e-5)
    # written once, by the main process: one log line per logged step, no per-rank files
    assert (two / "sft" / "log.jsonl").read_text().count("\n") == (one / "sft" / "log.jsonl").read_text().count("\n")
    assert sorted(p.name for p in (two / "online" / "iter_1").iterdir()) == \
        sorted(p.name for p in (one / "online" / "iter_1").iterdir())
    # the eval stage ran once, on the main process
    assert len((two / "eval" / "winrates.csv").read_text().splitlines()) == \
        len((one / "eval" / "winrates.csv").read_text().splitlines())
