"""CLI: python -m pipeline run RECIPE [--stage data|sft|sources|online|eval] [--force] [key.sub=value ...]
       python -m pipeline help      (every config key with its help string)"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="transfer-RLHF pipeline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a recipe's stages (finished stages are skipped)")
    run.add_argument("recipe", help="YAML recipe")
    run.add_argument("--stage", default="eval", help="run stages up to and including this one (data|sft|sources|online|eval)")
    run.add_argument("--force", action="store_true", help="accept a recipe that changed since the run started")
    run.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sub.add_parser("help", help="list every config key with its help string")
    # Overrides may come before or after --stage/--force, so collect them from what argparse leaves over.
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like key.sub=value)")
    if args.cmd == "run":
        args.overrides = list(args.overrides) + extra

    from pipeline.config import ConfigError, describe, load_recipe

    if args.cmd == "help":
        print("\n".join(describe()))
        return 0
    from pipeline.data import DataError
    from pipeline.runner import configure_threads, run as run_recipe
    from reward_sources import RegistryError

    from pipeline.models import ModelError
    from pipeline.online import OnlineStopped

    user_errors = (ConfigError, DataError, RegistryError, ModelError)

    configure_threads()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        check_names(recipe)
        run_recipe(recipe, until=args.stage, force=args.force)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OnlineStopped, FloatingPointError) as e:  # a run that cannot go on: finished stages/iterations are kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def check_names(recipe) -> None:
    """Unknown judge / source / selector names fail before any stage runs (not after minutes of SFT)."""
    from pipeline.config import ConfigError
    from pipeline.transfer import check_selector_name
    from reward_sources.registry import check_name

    for where, judge in (("judge", recipe.judge), ("eval.judge", recipe.eval.judge)):
        if judge is not None:
            try:
                check_name("judge", judge.name)
            except ValueError as e:
                raise ConfigError(f"{where}.name: {e}") from None
    for i, spec in enumerate(recipe.online.sources):
        if isinstance(spec, dict) and "name" in spec:
            try:
                check_name("source", spec["name"])
            except ValueError as e:
                raise ConfigError(f"online.sources[{i}].name: {e}") from None
    try:
        check_selector_name(recipe.online.selector.name)
    except ValueError as e:
        raise ConfigError(f"online.selector.name: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
