"""What every command shares: the checks that run before any stage (every name, option and cross-field rule of a
recipe) and one error map, so that `python -m pipeline run`, `python -m pipeline table` and the diagnostics print
the same one line (and exit code) for the same mistake: 2 for a user error, 1 for a run that stopped and can be
resumed, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import sqlite3
import sys
from collections.abc import Callable

from safetensors import SafetensorError

from pipeline import distributed, tracking
from pipeline.config import ConfigError, SelectorConfig
from pipeline.data import DataError
from pipeline.durable import StateError
from pipeline.models import ModelError
from pipeline.online import OnlineStopped, validate
from pipeline.runner import resolve_model_refs
from pipeline.selection.base import SELF
from pipeline.selection.registry import check_selector, selector_class
from pipeline.transfer import arm_names
from reward_sources.registry import JUDGES, SOURCES, RegistryError, check_name, check_no_secrets
from reward_sources.rouge import check_spec

USER_ERRORS = (ConfigError, DataError, RegistryError, ModelError)
MAX_SAMPLES_PER_PROMPT = 16384  # held in memory at once, per prompt and generation batch


class RunFailed(RuntimeError):
    """A run in a worker process failed (make table): one line saying which, finished work kept."""


# Stopped runs keep what finished (stages, iterations, labels): the message says so and a rerun resumes.
STOPPED = (OnlineStopped, FloatingPointError, StateError, RunFailed)


def run_command(body: Callable[[], object]) -> int:
    """Run a command's body under the one error map; the exit code for the shell."""
    try:
        body()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except STOPPED as e:
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


def table_methods(recipe) -> list[tuple[str, SelectorConfig]]:
    """The rows of `make table`: the recipe's table.methods, or TPO + no transfer + pure exploit of each source."""
    if recipe.table.methods:
        out = []
        for i, m in enumerate(recipe.table.methods):
            if not isinstance(m, dict) or "label" not in m or not isinstance(m.get("selector"), dict):
                raise ConfigError(f"each table.methods entry needs 'label' and 'selector: {{name, params}}', got {m}")
            sel = m["selector"]
            cfg = SelectorConfig(name=sel.get("name", "none"), params=sel.get("params") or {})
            try:
                check_selector(cfg.name, cfg.params)
            except ValueError as e:
                raise ConfigError(f"table.methods[{i}] ({m['label']}): {e}") from None
            out.append((str(m["label"]), cfg))
        return out
    ucb_params = recipe.online.selector.params if recipe.online.selector.name == "ucb" else {}
    return ([("tpo", SelectorConfig("ucb", dict(ucb_params))), ("no_transfer", SelectorConfig("none", {}))]
            + [(f"exploit:{a}", SelectorConfig("fixed", {"arm": a})) for a in arm_names(recipe.online.sources)])


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


def check_component(kind: str, where: str, name, params) -> None:
    """A judge's or source's name, secrets and options, without loading a model: the entry module's
    `check_<factory>` when it has one, else its OPTIONS."""
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
        elif hasattr(module, "OPTIONS"):
            check_spec(options, module.OPTIONS, name)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a built component given an option of the wrong type
        raise ConfigError(f"{where}.params: an option has the wrong type ({e})") from None


def check_names(recipe, until: str = "eval", table: bool = False) -> None:
    """Every name, option and cross-field rule of the recipe fails here, before any stage runs (not after minutes
    of data and SFT); field ranges were checked when it was loaded."""
    for where, judge in (("judge", recipe.judge), ("eval.judge", recipe.eval.judge)):
        if judge is not None:
            check_component("judge", where, judge.name, judge.params)
    for i, spec in enumerate(recipe.online.sources):
        if not (isinstance(spec, dict) and "name" in spec):
            raise ConfigError(f"online.sources[{i}] needs a 'name', e.g. {{name: rouge}}; got {spec!r}")
        check_component("source", f"online.sources[{i}]", spec["name"], spec)
        resolve_model_refs(recipe, spec)  # a `run:<label>` the recipe does not train
        label = spec.get("label")
        if label is not None and (not isinstance(label, str) or label == SELF):  # an arm's name, beside the self arm
            raise ConfigError(f"online.sources[{i}].label must be a string other than '{SELF}' (the no-transfer "
                              f"arm), got {label!r}")
    try:
        selector_class(recipe.online.selector.name)
    except ValueError as e:
        raise ConfigError(f"online.selector.name: {e}") from None
    try:  # options too: an unknown one would otherwise surface only when the online stage starts, after SFT
        check_selector(recipe.online.selector.name, recipe.online.selector.params)
    except ValueError as e:
        raise ConfigError(f"online.selector.params: {e}") from None
    try:
        arms = arm_names(recipe.online.sources)
    except ValueError as e:  # a source named twice without a label
        raise ConfigError(f"online.sources: {e}") from None
    try:  # every selector is cheap to build (models and encoders load on first use): k, pool and arm rules now
        validate(recipe.online, arms)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for i, (label, cfg) in enumerate(table_methods(recipe) if table else []):  # `make table`'s rows, same rules
        try:
            validate(dataclasses.replace(recipe.online, selector=cfg), [] if cfg.name == "none" else arms)
        except ValueError as e:
            raise ConfigError(f"table.methods[{i}] ({label}): {e}") from None
    tracking.check(recipe.tracking)
    # a prompt's samples are drawn at once: online.k = 10**30 passed every range, then hung (growing) after SFT
    for key, n in (("online.k + online.n_pool", recipe.online.k + recipe.online.n_pool),
                   ("eval.samples_per_prompt", recipe.eval.samples_per_prompt),
                   ("table.utility_samples", recipe.table.utility_samples if table else 0)):
        if n > MAX_SAMPLES_PER_PROMPT:
            raise ConfigError(f"{key} is {n}: at most {MAX_SAMPLES_PER_PROMPT} samples per prompt are drawn")
    data = recipe.data
    if data.source == "synthetic" and data.eval_size + data.test_size >= data.n_examples:
        raise ConfigError(f"data.eval_size ({data.eval_size}) + data.test_size ({data.test_size}) leave no training "
                          f"rows of data.n_examples ({data.n_examples}) articles")
    if until == "eval" and data.test_size == 0:
        raise ConfigError("the eval stage compares policies on held-out test prompts, but data.test_size is 0: "
                          "set it to at least 1, or stop earlier with --stage online")


def int_list(flag: str, minimum: int) -> Callable[[str], list[int]]:
    """An argparse type for a flag that takes comma-separated integers, each >= minimum (errors name the flag)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must list values >= {minimum}, got {text!r}")
        return values
    return parse
