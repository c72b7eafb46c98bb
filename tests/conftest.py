"""Shared fixtures: a small world tokenizer trained on generated text, and tiny policies built from config."""
from __future__ import annotations

import logging
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: with 2 OpenMP threads on shared cores every small op pays ~8 ms of thread hand-off (measured:
# a 64x64 linear 8 ms vs 0.03 ms on one thread), which made the tiny-model tests ~20x slower.
torch.set_num_threads(int(os.environ.get("TRLHF_TEST_THREADS", "1")))

WORDS = ("the council said on monday that a new bridge in riverton would cost 12 million pounds and open in may "
         "police mayor school river report workers strike minister announced plans for 300 homes").split()


def generated_texts(n: int, seed: int = 0, length: int = 24) -> list[str]:
    """Pseudo-news sentences from a fixed word list (no external text)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(length // 2, length))).capitalize() + "."
            for _ in range(n)]


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """runner._setup_logging adds root handlers bound to a test's run dir and captured stderr: drop them after."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in before:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def world_tokenizer_dir(tmp_path_factory):
    from pipeline.models import train_world_tokenizer

    out = tmp_path_factory.mktemp("world_tokenizer")
    train_world_tokenizer(generated_texts(400), out, vocab_size=400)
    return out


@pytest.fixture
def make_policy(world_tokenizer_dir):
    """make_policy('t5-tiny', lora=True, **ModelConfig fields) -> a fresh random-weight Policy."""
    from pipeline.config import LoRAConfig, ModelConfig
    from pipeline.models import load_policy

    def make(shape: str = "t5-tiny", lora: bool = False, **fields):
        cfg = ModelConfig(name=f"shape:{shape}", lora=LoRAConfig(enabled=lora), **fields)
        return load_policy(cfg, tokenizer_dir=world_tokenizer_dir)

    return make
