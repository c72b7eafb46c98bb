"""A user's own source reward (or judge, `build_judge`), given by import path: `function: "package.module:callable"`.

The callable has the source signature `f(documents, responses, references, **kwargs) -> list[float]`;
`kwargs` from the spec are passed through. Its output is checked (length, finite numbers) because a
reward that is silently short or NaN would corrupt the preference pairs built from it; one that raises stops the
run with a one-line RegistryError.

A recipe that names a python source or judge runs that code (its module is imported before any stage runs):
trust a recipe as you would a script.
"""
from __future__ import annotations

import importlib
import inspect
import math

from reward_sources.registry import RegistryError, first_line
from reward_sources.rouge import check_batch, check_spec


def resolve(path: str, who: str = "python"):
    """Import `package.module:callable` with one-line errors for each way it can be wrong."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"{who}: function must look like 'package.module:callable', got {path!r}")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{who}: cannot import module '{module_name}' ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failing at import is the user's error, in one line
        raise ValueError(f"{who}: importing module '{module_name}' failed: {first_line(e)}") from None
    obj = module
    for part in attr.split("."):  # allow Class.method
        if not hasattr(obj, part):
            raise ValueError(f"{who}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{who}: '{path}' is a {type(obj).__name__}, not a callable")
    return obj


def _checked(params: dict, who: str, what: str):
    """(callable, kwargs) of a spec, every way it can be wrong a one-line ValueError; imports the module and calls
    nothing, so the CLI runs it before any stage."""
    check_spec(params, {"function", "kwargs"}, who)
    if "function" not in params:
        raise ValueError(f"{who}: the spec needs 'function: package.module:{what}'")
    kwargs = params.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{who}: kwargs must be a mapping, got {type(kwargs).__name__}")
    return resolve(params["function"], who), kwargs


def _check_call(fn, who: str, path: str, *args, **kwargs) -> None:
    """kwargs the callable cannot take are refused now, not when the online stage first calls it."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: checked when called
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"{who}: '{path}' cannot be called with kwargs {sorted(kwargs)} ({e})") from None


def check_build(spec: dict) -> None:
    fn, kwargs = _checked(spec, "python", "callable")
    _check_call(fn, "python", spec["function"], [], [], [], **kwargs)


def check_build_judge(params: dict) -> None:
    factory, kwargs = _checked(params, "python judge", "factory")
    _check_call(factory, "python judge", params["function"], **kwargs)


def build(spec: dict, ctx=None):
    fn, kwargs = _checked(spec, "python", "callable")
    path = spec["function"]

    def score(documents, responses, references):
        check_batch("python", documents, responses, references)
        try:
            out = fn(list(documents), list(responses), list(references), **kwargs)
        except Exception as e:  # noqa: BLE001 - a user's source that raises stops the run with one line
            raise RegistryError(f"python source '{path}' raised {first_line(e)}") from None
        try:
            out = [float(x) for x in out]
        except (TypeError, ValueError):
            raise RegistryError(f"python: '{path}' must return a list of numbers") from None
        if len(out) != len(responses):
            raise RegistryError(f"python: '{path}' returned {len(out)} scores for {len(responses)} responses")
        bad = [i for i, x in enumerate(out) if not math.isfinite(x)]
        if bad:
            raise RegistryError(f"python: '{path}' returned non-finite scores at positions {bad[:5]}")
        return out

    score.__name__ = path
    return score


def build_judge(params: dict, ctx=None):
    """A user's own judge: `function: package.module:factory` called with `kwargs`; the factory returns an object
    with `name`, `kind` and `score(rows, responses, seed)` (scalar) or `compare(rows, a, b, seed)` (pairwise),
    the contract of reward_sources/registry.py. Its answers go through the label store like any judge's."""
    factory, kwargs = _checked(params, "python judge", "factory")
    try:
        judge = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failing is a one-line error, not a traceback
        raise ValueError(f"python judge: '{params['function']}' raised {first_line(e)}") from None
    method = {"scalar": "score", "pairwise": "compare"}.get(getattr(judge, "kind", None))
    named = isinstance(getattr(judge, "name", None), str)
    if method is None or not callable(getattr(judge, method, None)) or not named:
        raise ValueError(f"python judge: '{params['function']}' must return an object with a str `name` and `kind` "
                         "'scalar' (with score(rows, responses, seed)) or 'pairwise' (with compare(rows, a, b, seed))")
    return judge
