"""CLI: python -m pipeline run RECIPE [--stage data|sft|sources|online|eval] [--force] [key.sub=value ...]
       python -m pipeline help      (every config key with its help string)"""
from __future__ import annotations

import argparse
import errno
import logging
import sqlite3
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
        from pipeline.selection.registry import help_lines

        print("\n".join(describe() + ["", "Selectors and their options:"] + help_lines()))
        return 0
    from pipeline import distributed
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
    except (OSError, sqlite3.OperationalError) as e:  # a full disk, a read-only or vanished run directory
        print(f"error: {io_error_line(e)}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0


def io_error_line(e: Exception) -> str:
    """One line for a failed read or write. Checkpoints and stage outputs are written atomically and labels are
    committed one block at a time, so what finished is kept and a rerun resumes. The traceback goes to run.log
    (not for a full disk, where writing the log would fail as well)."""
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "disk is full" in str(e)
    if not full:
        logging.getLogger("pipeline").info("stopped by %s", type(e).__name__, exc_info=True)
    if isinstance(e, OSError):
        what = "no space left on device" if full else (e.strerror or str(e) or type(e).__name__)
        where = f" writing '{e.filename}'" if full and e.filename else f" ('{e.filename}')" if e.filename else ""
        msg = f"{what}{where}"
    else:
        msg = f"label store (labels.sqlite): {e}"
    msg = " ".join(msg.split())  # one line
    hint = "free some space" if full else "fix the cause"
    return f"{msg}; finished stages, checkpoints and labels are kept: {hint} and rerun the same command to resume"


def check_names(recipe) -> None:
    """Unknown judge / source / selector names fail before any stage runs (not after minutes of SFT)."""
    from pipeline.config import ConfigError
    from pipeline.selection.registry import check_selector, selector_class
    from reward_sources.registry import check_name, check_no_secrets

    for where, judge in (("judge", recipe.judge), ("eval.judge", recipe.eval.judge)):
        if judge is not None:
            try:
                check_name("judge", judge.name)
            except ValueError as e:
                raise ConfigError(f"{where}.name: {e}") from None
            try:  # before config.yaml is written: a key in the recipe must not be copied into the run directory
                check_no_secrets(f"{where}.params", judge.params)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    for i, spec in enumerate(recipe.online.sources):
        if isinstance(spec, dict) and "name" in spec:
            try:
                check_name("source", spec["name"])
            except ValueError as e:
                raise ConfigError(f"online.sources[{i}].name: {e}") from None
            try:
                check_no_secrets(f"online.sources[{i}]", spec)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    try:
        selector_class(recipe.online.selector.name)
    except ValueError as e:
        raise ConfigError(f"online.selector.name: {e}") from None
    try:  # options too: an unknown one would otherwise surface only when the online stage starts, after SFT
        check_selector(recipe.online.selector.name, recipe.online.selector.params)
    except ValueError as e:
        raise ConfigError(f"online.selector.params: {e}") from None
    if recipe.online.selector.name in ("none", "fixed", "ucb"):  # cheap to build: k, pool and arm rules now
        from pipeline.online import validate
        from pipeline.transfer import arm_names

        try:
            validate(recipe.online, arm_names(recipe.online.sources))
        except (KeyError, TypeError):
            raise ConfigError("each entry of online.sources needs a 'name', e.g. {name: rouge}") from None
        except ValueError as e:
            raise ConfigError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
