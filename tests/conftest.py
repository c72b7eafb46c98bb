"""Shared fixtures: a small world tokenizer trained on generated text, tiny policies built from config, and the
tiny end-to-end recipe that subprocess tests run."""
from __future__ import annotations

import logging
import os
import random

import pytest
import torch
import yaml

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
    """runner.setup_logging adds root handlers bound to a test's run dir and captured stderr: drop them after."""
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


# The tiny recipe of in-process tests, as overrides on the defaults (a test adds or overrides keys after it; the
# last value of a key wins): synthetic world, shape:t5-tiny, 3 SFT steps, one online iteration of 6 prompts.
TINY_OVERRIDES = ["data.n_examples=80", "data.eval_size=8", "data.test_size=8", "policy.name=shape:t5-tiny",
                  "sft.steps=3", "sft.batch_size=8", "sft.eval_examples=0", "online.iterations=1",
                  "online.prompts_per_iteration=6", "online.k=3", "online.max_new_tokens=8", "online.epochs=1",
                  "online.batch_size=4"]


def tiny_recipe(name: str = "tiny", **sections) -> dict:
    """The tiny end-to-end run that subprocess tests launch (synthetic world, shape:t5-tiny, 3 SFT steps, 2 online
    iterations of 8 prompts with a rouge arm under UCB, eval on a few prompts): a few seconds of work per stage.
    Each keyword replaces keys of that section (or sets a section that is not a mapping here, e.g. a whole judge)."""
    recipe = {
        "name": name, "run_dir": "run",
        "data": {"n_examples": 80, "eval_size": 8, "test_size": 8},
        "policy": {"name": "shape:t5-tiny"},
        "sft": {"steps": 3, "batch_size": 8, "eval_examples": 2},
        "judge": {"name": "oracle"},
        "online": {"iterations": 2, "prompts_per_iteration": 8, "k": 3, "n_pool": 2, "replace_num": 1,
                   "max_new_tokens": 8, "gen_batch_size": 16, "epochs": 2, "batch_size": 4, "warmup": 0,
                   "lr": 0.003, "sources": [{"name": "rouge"}],
                   "selector": {"name": "ucb", "params": {"block_size": 2}}},
        "eval": {"n_prompts": 4, "seeds": [0], "max_new_tokens": 8},
    }
    for section, value in sections.items():
        recipe[section] = ({**recipe[section], **value} if section != "judge" and isinstance(recipe.get(section), dict)
                           else value)
    return recipe


def tiny_run_recipe(header: str, name: str, **sections) -> str:
    """tiny_recipe as YAML, its first line the command that runs it."""
    recipe = tiny_recipe(name, **sections)
    return f"# {header}\n" + yaml.safe_dump(recipe, sort_keys=False)

