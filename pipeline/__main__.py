"""CLI: python -m pipeline run RECIPE [--stage data|sft|sources|online|eval] [--force] [key.sub=value ...]
       python -m pipeline table RECIPE [--jobs N] [--force] [key.sub=value ...]   (make table)
       python -m pipeline replay RECIPE --pairs METHOD:SEED --start S   (a table run's pairs on another build)
       python -m pipeline replay RECIPE --all online.lr=3e-4            (every run's pairs under another update)
       python -m pipeline help      (every config key and selector option with its help string and range)"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import describe, load_recipe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["table"]:  # the table driver parses its own arguments
        from pipeline.table import main as table_main  # defers torch, transformers and the selectors

        return table_main(argv[1:])
    if argv[:1] == ["replay"]:
        from pipeline.replay import main as replay_main

        return replay_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="transfer-RLHF pipeline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a recipe's stages (finished stages are skipped)")
    run.add_argument("recipe", help="YAML recipe")
    run.add_argument("--stage", default="eval",
                     help="run stages up to and including this one (data|sft|sources|online|eval)")
    run.add_argument("--force", action="store_true", help="accept a recipe that changed since the run started")
    run.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sub.add_parser("table", help="TPO against its baselines over training seeds (python -m pipeline table -h)")
    sub.add_parser("replay", help="train one build's SFT checkpoint on a table run's pairs "
                                  "(python -m pipeline replay -h)")
    sub.add_parser("help", help="list every config key and selector option with its help string")
    # Overrides may come before or after --stage/--force, so collect them from what argparse leaves over.
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like key.sub=value)")
    if args.cmd == "help":
        from pipeline.selection.registry import help_lines

        print("\n".join(describe() + ["", "Selectors and their options:"] + help_lines()))
        return 0
    # Imported here so that `help` and argument errors answer without loading torch and transformers.
    from pipeline.cli import check_names, run_command
    from pipeline.runner import configure_threads
    from pipeline.runner import run as run_recipe

    configure_threads()

    def body():
        recipe = load_recipe(args.recipe, list(args.overrides) + extra)
        check_names(recipe, args.stage)
        run_recipe(recipe, until=args.stage, force=args.force)

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
