"""Adding a selector is one file plus one registry line: a toy selector written here as its own module, registered
with one entry in SELECTORS, is checked, listed by `help`, refused with typed errors and run by the online loop."""
import csv
import sys

import pytest

from pipeline.config import load_recipe
from pipeline.runner import run
from pipeline.selection import registry

# The whole toy selector: the file a contributor would add as pipeline/selection/alternate.py.
TOY_MODULE = '''
from dataclasses import dataclass

from pipeline.config import f
from pipeline.selection.base import SELF, Selector


@dataclass
class AlternateOptions:
    every: int = f(2, ge=1, help="blocks between two transferring blocks")


class Alternate(Selector):
    """Transfer from the first source every `every`-th block, the self arm otherwise."""

    Options = AlternateOptions

    def __init__(self, arms, seed, opts):
        super().__init__(arms, arms[0], block_size=4)
        self.every, self.block = opts.every, 0

    def choose(self):
        self.block += 1
        return (self.arm if self.block % self.every == 1 % self.every else SELF), float("nan")
'''


@pytest.fixture
def toy_registered(tmp_path, monkeypatch):
    (tmp_path / "toy_alternate.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.SELECTORS, "alternate", "toy_alternate:Alternate")  # the one registry line
    yield
    sys.modules.pop("toy_alternate", None)


def test_a_toy_selector_is_one_file_and_one_line(toy_registered, tmp_path):
    with pytest.raises(ValueError,
                       match=r"unknown option\(s\) \['evry'\] for selector 'alternate'.*did you mean 'every'"):
        registry.check_selector("alternate", {"evry": 2})
    with pytest.raises(ValueError, match=r"'online.selector.params.every' must be >= 1, got 0"):
        registry.check_selector("alternate", {"every": 0})
    assert any("online.selector.params.every: blocks between two transferring blocks" in line
               for line in registry.help_lines())

    out = tmp_path / "run"
    recipe = load_recipe(None, [
        f"run_dir={out}", "data.n_examples=120", "data.eval_size=8", "data.test_size=8", "policy.name=shape:t5-tiny",
        "sft.steps=3", "sft.batch_size=8", "sft.eval_examples=0", "online.iterations=1",
        "online.prompts_per_iteration=16", "online.k=2", "online.n_pool=2", "online.replace_num=1",
        "online.max_new_tokens=6", "online.epochs=1", "online.batch_size=8", "online.sources=[{name: rouge}]",
        "online.selector={name: alternate, params: {every: 2}}"])
    run(recipe, until="online")
    with open(out / "online" / "iter_1" / "arms.csv", newline="") as fh:
        arms = [r["arm"] for r in csv.DictReader(fh)]
    assert arms == ["rouge", "self", "rouge", "self"]  # 16 prompts in blocks of 4, alternating


def test_config_help_names_every_registered_selector_and_judge():
    """The help strings of online.selector.name and judge.name list what the registries hold (no drift)."""
    import dataclasses

    from pipeline.config import JudgeConfig, SelectorConfig
    from reward_sources.registry import JUDGES

    def help_of(cls):
        return next(fl.metadata["help"] for fl in dataclasses.fields(cls) if fl.name == "name")

    assert all(name in help_of(SelectorConfig) for name in registry.SELECTORS)
    assert all(name in help_of(JudgeConfig) for name in JUDGES)
