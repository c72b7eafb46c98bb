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
    run.add_argument("--stage", default="eval",
                     help="run stages up to and including this one (data|sft|sources|online|eval)")
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
    from safetensors import SafetensorError

    from pipeline import distributed
    from pipeline.data import DataError
    from pipeline.durable import StateError
    from pipeline.models import ModelError
    from pipeline.online import OnlineStopped
    from pipeline.runner import configure_threads
    from pipeline.runner import run as run_recipe
    from reward_sources import RegistryError

    user_errors = (ConfigError, DataError, RegistryError, ModelError)

    configure_threads()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        check_names(recipe, args.stage)
        run_recipe(recipe, until=args.stage, force=args.force)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OnlineStopped, FloatingPointError, StateError) as e:  # finished stages/iterations are kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, sqlite3.OperationalError, SafetensorError) as e:  # a full disk, a read-only or vanished run dir
        print(f"error: {io_error_line(e)}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0


def io_error_line(e: Exception) -> str:
    """One line for a failed read or write. Checkpoints and stage outputs are written atomically and labels are
    committed one block at a time, so what finished is kept and a rerun resumes. The traceback goes to run.log
    (not for a full disk, where writing the log would fail as well)."""
    # safetensors reports the OS error inside its own message: "... Os { code: 28, kind: StorageFull ..."
    full = ((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
            or any(s in str(e) for s in ("disk is full", "StorageFull", "No space left on device", "QuotaExceeded")))
    if not full:
        logging.getLogger("pipeline").info("stopped by %s", type(e).__name__, exc_info=True)
    if isinstance(e, OSError):
        what = "no space left on device" if full else (e.strerror or str(e) or type(e).__name__)
        where = f" writing '{e.filename}'" if full and e.filename else f" ('{e.filename}')" if e.filename else ""
        msg = f"{what}{where}"
    elif isinstance(e, sqlite3.Error):
        msg = f"label store (labels.sqlite): {e}"
    else:
        msg = "no space left on device writing a checkpoint" if full else f"writing a checkpoint: {e}"
    msg = " ".join(msg.split())  # one line
    hint = "free some space" if full else "fix the cause"
    return f"{msg}; finished stages, checkpoints and labels are kept: {hint} and rerun the same command to resume"


# Pure Python, no model, network or file: built once here, so that every option error surfaces before any stage.
_BUILT_TO_CHECK = {("judge", "oracle"), ("source", "rouge")}


def check_component(kind: str, where: str, name, params) -> None:
    """A judge's or source's name, secrets and options, without loading a model: the entry module's
    `check_<factory>` when it has one, else the component is built when cheap, else its OPTIONS are checked."""
    import importlib

    from pipeline.config import ConfigError
    from reward_sources.registry import JUDGES, SOURCES, check_name, check_no_secrets
    from reward_sources.rouge import check_spec

    try:
        check_name(kind, name)
    except ValueError as e:
        raise ConfigError(f"{where}.name: {e}") from None
    try:  # before config.yaml is written: a key in the recipe must not be copied into the run directory
        check_no_secrets(where if kind == "source" else f"{where}.params", params)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    module_name, attr = (SOURCES if kind == "source" else JUDGES)[name].split(":")
    module = importlib.import_module(module_name)
    options = {k: v for k, v in params.items() if k != "label"}
    try:
        if hasattr(module, f"check_{attr}"):
            getattr(module, f"check_{attr}")(options)
        elif (kind, name) in _BUILT_TO_CHECK:
            getattr(module, attr)(options)
        elif hasattr(module, "OPTIONS"):
            check_spec(options, module.OPTIONS, name)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a built component given an option of the wrong type
        raise ConfigError(f"{where}.params: an option has the wrong type ({e})") from None


def check_names(recipe, until: str = "eval") -> None:
    """Every name, option and cross-field rule of the recipe fails here, before any stage runs (not after minutes
    of data and SFT); field ranges were checked when it was loaded."""
    from pipeline.config import ConfigError
    from pipeline.runner import resolve_model_refs
    from pipeline.selection.registry import check_selector, selector_class

    for where, judge in (("judge", recipe.judge), ("eval.judge", recipe.eval.judge)):
        if judge is not None:
            check_component("judge", where, judge.name, judge.params)
    for i, spec in enumerate(recipe.online.sources):
        if not (isinstance(spec, dict) and "name" in spec):
            raise ConfigError(f"online.sources[{i}] needs a 'name', e.g. {{name: rouge}}; got {spec!r}")
        check_component("source", f"online.sources[{i}]", spec["name"], spec)
        resolve_model_refs(recipe, spec)  # a `run:<label>` the recipe does not train
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
        except ValueError as e:
            raise ConfigError(str(e)) from None
    data = recipe.data
    if data.source == "synthetic" and data.eval_size + data.test_size >= data.n_examples:
        raise ConfigError(f"data.eval_size ({data.eval_size}) + data.test_size ({data.test_size}) leave no training "
                          f"rows of data.n_examples ({data.n_examples}) articles")
    if until == "eval" and data.test_size == 0:
        raise ConfigError("the eval stage compares policies on held-out test prompts, but data.test_size is 0: "
                          "set it to at least 1, or stop earlier with --stage online")


if __name__ == "__main__":
    sys.exit(main())
