import json
import re

import pytest
from conftest import tiny_run_recipe

from eval.examples import main
from pipeline.config import load_recipe
from pipeline.data import load_split
from pipeline.runner import build_judge
from pipeline.table import make_table, run_dir

TWO = ("table.methods=[{label: tpo, selector: {name: ucb, params: {block_size: 2}}}, "
       "{label: no_transfer, selector: {name: none}}]")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A finished tiny table run: one seed, TPO and no transfer, one iteration of 8 prompts."""
    tmp = tmp_path_factory.mktemp("examples")
    (tmp / "tiny.yaml").write_text(tiny_run_recipe("python -m pipeline table tiny.yaml", "tiny"))
    recipe = load_recipe(tmp / "tiny.yaml", [
        f"run_dir={tmp / 'run'}", TWO, "online.iterations=1", "table.seeds=[0]", "table.aa=false",
        "table.n_prompts=4", "table.utility_prompts=4", "table.utility_samples=3"])
    make_table(recipe)
    return recipe


def _sections(md: str) -> dict:
    """checkpoint label -> [(utility, sample)] of the first article."""
    out, label = {}, None
    for line in md.splitlines():
        if line.startswith("## Article 2"):
            break
        if line.startswith("### "):
            label = line[4:].split(" (mean utility")[0]
            out[label] = []
        elif label and line.startswith("- "):
            m = re.match(r"- `([+-][\d.]+)` (.*)", line)
            out[label].append((float(m[1]), m[2]))
    return out


def test_examples_show_every_checkpoint_with_exact_utilities(table_run, capsys):
    out = table_run.out
    assert main([str(out), "--articles", "2", "--samples", "3"]) == 0
    md = (out / "table" / "examples.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = load_split(out / "data", "test")[:2]
    assert md.count("## Article ") == 2 and f"**Reference:** {' '.join(rows[0]['summary'].split())}" in md
    got = _sections(md)
    assert list(got) == ["sft", "tpo", "no_transfer"] and all(len(v) == 3 for v in got.values())
    judge = build_judge(table_run, table_run.eval.judge)
    for label, items in got.items():
        us = judge.utility([rows[0]] * 3, [y for _, y in items])
        assert [u for u, _ in items] == pytest.approx(us, abs=5e-4), label
    # the eval seed's samples: the first 3 of the draw that the table scored in paired.md
    cache = run_dir(table_run, "tpo", 0) / "online" / "iter_1" / "test_samples_p4_x3.json"
    table_samples = json.loads(cache.read_text())["samples"][0]
    assert [" ".join(y.split()) or "(empty)" for y in table_samples] == [y for _, y in got["tpo"]]


def test_examples_errors_are_one_line(table_run, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no config.yaml in" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text((table_run.out / "config.yaml").read_text())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text((table_run.out / "data" / "test.jsonl").read_text())
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: missing checkpoint(s): sft (") and "tpo (" in err and err.count("\n") == 1
