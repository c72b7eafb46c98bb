"""`python -m eval.examples RUN_DIR`: what SFT and each table method's last iterate write for a few test articles.

Reads a finished `python -m pipeline table` run and writes RUN_DIR/table/examples.md (printed too): per article, the
document, its reference, then S samples of every checkpoint (SFT, then each method's last iterate of the first
training seed), each with its exact utility when the eval judge knows it (the synthetic world's oracle). Every
checkpoint samples with the table's eval seed, so its samples are the first S of those the table drew for
paired.md, and two checkpoints differ only where their weights do (common random numbers).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from eval.winrate import sample_test
from pipeline.cli import run_command
from pipeline.config import ConfigError, load_recipe
from pipeline.models import load_policy
from pipeline.runner import build_judge, configure_threads, load_split, policy_config
from pipeline.table import all_methods, run_dir
from reward_sources.contracts import knows_utility


def checkpoints(recipe) -> list[tuple[str, Path]]:
    seed, last = recipe.table.seeds[0], recipe.online.iterations
    return [("sft", recipe.out / "sft" / "model")] + [
        (label, run_dir(recipe, label, seed) / "online" / f"iter_{last}" / "model") for label, _ in all_methods(recipe)]


def one_line(text: str) -> str:
    # a newline inside a sample would end its markdown list item
    return " ".join(text.split()) or "(empty)"


def render(recipe, rows: list[dict], drawn: dict, utils: dict | None, judge_name: str) -> str:
    seed = recipe.table.seeds[0]
    scored = f"; the number before each sample is its exact utility under {judge_name}" if utils else ""
    out = [f"# Example summaries: {recipe.name}, training seed {seed}, iteration {recipe.online.iterations}", "",
           f"{len(next(iter(drawn.values()))[0])} samples per checkpoint at temperature {recipe.eval.temperature:g} "
           f"(at most {recipe.eval.max_new_tokens} new tokens), one sampling seed for every checkpoint{scored}."]
    for i, row in enumerate(rows):
        out += ["", f"## Article {i + 1} ({row['id']})", "", f"> {one_line(row['document'])}", "",
                f"**Reference:** {one_line(row['summary'])}"]
        for label, samples in drawn.items():
            us = utils[label][i] if utils else None
            mean = f" (mean utility {sum(us) / len(us):+.3f})" if us else ""
            out += ["", f"### {label}{mean}", ""]
            out += [f"- {'' if us is None else f'`{us[j]:+.3f}` '}{one_line(y)}" for j, y in enumerate(samples[i])]
    return "\n".join(out) + "\n"


def prepare(run: Path, articles: int, samples: int):
    """(recipe, eval judge) of a finished table run; ConfigError with a one-line reason otherwise."""
    if not run.is_dir():
        raise ConfigError(f"no run directory {run}")
    if not (run / "config.yaml").exists():
        raise ConfigError(f"no config.yaml in {run}")
    if min(articles, samples) < 1:
        raise ConfigError("--articles and --samples must be >= 1")
    # the directory given wins over config.yaml's run_dir, which may be relative to another working directory
    recipe = dataclasses.replace(load_recipe(run / "config.yaml"), run_dir=str(run))
    if not (run / "data" / "test.jsonl").exists():
        raise ConfigError(f"no test split {run / 'data' / 'test.jsonl'}")
    missing = [f"{label} ({path})" for label, path in checkpoints(recipe) if not path.is_dir()]
    if missing:
        raise ConfigError(f"missing checkpoint(s): {', '.join(missing)}; "
                          "run python -m pipeline table on its recipe first")
    return recipe, build_judge(recipe, recipe.eval.judge)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.examples", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory of a table recipe (config.yaml, data/, sft/, methods/)")
    p.add_argument("--articles", type=int, default=1, help="first N test articles")
    p.add_argument("--samples", type=int, default=3, help="samples per article and checkpoint")
    args = p.parse_args(argv)
    configure_threads()
    return run_command(lambda: write_examples(Path(args.run), args.articles, args.samples))


def write_examples(run: Path, articles: int, samples: int) -> None:
    recipe, judge = prepare(run, articles, samples)
    rows = load_split(run / "data", "test")[:articles]
    ev = dataclasses.replace(recipe.eval, samples_per_prompt=samples)
    drawn = {label: sample_test(load_policy(policy_config(recipe, path)), rows, ev, recipe.online.gen_batch_size,
                                recipe.table.seeds[0])
             for label, path in checkpoints(recipe)}
    utils = ({label: [judge.utility([r] * len(ys), ys) for r, ys in zip(rows, samples)]
              for label, samples in drawn.items()} if knows_utility(judge) else None)
    md = render(recipe, rows, drawn, utils, judge.name)
    (run / "table").mkdir(parents=True, exist_ok=True)
    (run / "table" / "examples.md").write_text(md)
    print(md, flush=True)


if __name__ == "__main__":
    sys.exit(main())
