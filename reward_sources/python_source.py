"""A user's own source reward (or judge, `build_judge`), given by import path: `function: "package.module:callable"`.

The callable has the source signature `f(documents, responses, references, **kwargs) -> list[float]`;
`kwargs` from the spec are passed through. Its output is checked (length, finite numbers) because a
reward that is silently short or NaN would corrupt the preference pairs built from it.
"""
from __future__ import annotations

import importlib
import math

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
    obj = module
    for part in attr.split("."):  # allow Class.method
        if not hasattr(obj, part):
            raise ValueError(f"{who}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{who}: '{path}' is a {type(obj).__name__}, not a callable")
    return obj


def build(spec: dict, ctx=None):
    check_spec(spec, {"function", "kwargs"}, "python")
    if "function" not in spec:
        raise ValueError("python: the spec needs 'function: package.module:callable'")
    path = spec["function"]
    fn = resolve(path)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"python: kwargs must be a mapping, got {type(kwargs).__name__}")

    def score(documents, responses, references):
        check_batch("python", documents, responses, references)
        out = fn(list(documents), list(responses), list(references), **kwargs)
        try:
            out = [float(x) for x in out]
        except (TypeError, ValueError):
            raise ValueError(f"python: '{path}' must return a list of numbers") from None
        if len(out) != len(responses):
            raise ValueError(f"python: '{path}' returned {len(out)} scores for {len(responses)} responses")
        bad = [i for i, x in enumerate(out) if not math.isfinite(x)]
        if bad:
            raise ValueError(f"python: '{path}' returned non-finite scores at positions {bad[:5]}")
        return out

    score.__name__ = path
    return score


def build_judge(params: dict, ctx=None):
    """A user's own judge: `function: package.module:factory` called with `kwargs`; the factory returns an object
    with `name`, `kind` and `score(rows, responses, seed)` (scalar) or `compare(rows, a, b, seed)` (pairwise),
    the contract of reward_sources/registry.py. Its answers go through the label store like any judge's."""
    check_spec(params, {"function", "kwargs"}, "python judge")
    if "function" not in params:
        raise ValueError("python judge: the params need 'function: package.module:factory'")
    kwargs = params.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"python judge: kwargs must be a mapping, got {type(kwargs).__name__}")
    judge = resolve(params["function"], "python judge")(**kwargs)
    method = {"scalar": "score", "pairwise": "compare"}.get(getattr(judge, "kind", None))
    if method is None or not callable(getattr(judge, method, None)) or not isinstance(getattr(judge, "name", None), str):
        raise ValueError(f"python judge: '{params['function']}' must return an object with a str `name` and `kind` "
                         "'scalar' (with score(rows, responses, seed)) or 'pairwise' (with compare(rows, a, b, seed))")
    return judge
