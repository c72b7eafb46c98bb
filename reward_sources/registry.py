"""The one place recipes swap things: source rewards and judges, by name.

Entries are `module:attribute` strings imported on first use, so a recipe that never names BERTScore never
imports it. Unknown names fail listing the known ones, with a did-you-mean.

Contracts (the protocols and declared capabilities are in reward_sources/contracts.py)
- source factory(spec: dict, ctx: Context) -> a `Source`: callable(documents, responses, references) -> floats
- judge factory(params: dict, ctx: Context) -> a `ScalarJudge` (score) or a `PairwiseJudge` (compare: 1 = a
  better, 0 = b, 0.5 = tie, None = failure), optionally declaring `utility(...)` and `shardable = True`.
- no secrets in options: a literal api_key / token / password is refused (check_no_secrets); options ending in
  `_env` name the environment variable that holds one.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import closest

SOURCES = {
    "rouge": "reward_sources.rouge:build",
    "bertscore": "reward_sources.bertscore:build",
    "loglik": "reward_sources.loglik:build",
    "reward_model": "reward_sources.reward_model:build_source",
    "python": "reward_sources.python_source:build",
    "evaluate": "reward_sources.evaluate_metric:build",
}

JUDGES = {
    "oracle": "reward_sources.oracle:build_judge",
    "reward_model": "reward_sources.reward_model:build_judge",
    "pairwise_llm": "reward_sources.pairwise_llm:build_judge",
    "pairwise_http": "reward_sources.http_judge:build_judge",
    "python": "reward_sources.python_source:build_judge",
}
# Recipes are saved into the run directory (config.yaml): secrets never go in them, only the NAME of an
# environment variable that holds one (an option ending in `_env`, e.g. pairwise_http's api_key_env).
# By the key's last word, so that a python source's `kwargs: {openai_api_key: ...}` or `hf_token` is caught too
# (and `max_tokens` is not).
SECRET_OPTION = re.compile(r"(?:^|[_.-])(?:api_?key|(?:secret|private|access)_?key|token|password|passwd|secret|"
                           r"authorization|bearer|credentials?|headers|cookie)\Z", re.IGNORECASE)
_URL_QUERY_SECRET = re.compile(r"[?&;](?:[a-z0-9_.-]*(?:key|token|password|secret|auth|signature|sig))=", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]*@", re.IGNORECASE)


class RegistryError(ValueError):
    pass


def first_line(e: Exception) -> str:
    """An exception from the user's code (a module, a factory, a metric) as one short line."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


@dataclass
class Context:
    """What a factory may need beyond its own spec."""

    run_dir: Path = Path(".")
    reference_policy: Any = None  # models.Policy of the current reference, for implicit rewards
    # model key -> {(document, response): (summed log-prob, n_tokens)}: the sources built with one context share
    # log-probs (sum and mean scorers on one model), and a harness that computed them elsewhere hands them in here
    logprob_cache: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def check_name(kind: str, name) -> None:
    """Fail on an unknown source/judge name without importing anything (the CLI checks before any stage runs)."""
    table = {"source": SOURCES, "judge": JUDGES}[kind]
    if not isinstance(name, str) or name not in table:
        close = closest(name, table)
        hint = f" Did you mean '{close}'?" if close else ""
        raise RegistryError(f"unknown {kind} '{name}'; known: {', '.join(sorted(table))}.{hint}")


def check_no_secrets(where: str, params) -> None:
    """A literal key, token or password (or a URL with credentials) in a source's or judge's options is refused
    with one line that does not repeat the value."""
    if isinstance(params, list):
        for i, v in enumerate(params):
            check_no_secrets(f"{where}[{i}]", v)
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        low = str(key).lower()
        if SECRET_OPTION.search(low) and not low.endswith("_env"):
            hint = ("set api_key_env to the variable's name"
                    if "key" in low or low in ("authorization", "bearer", "headers")
                    else "pass the variable's name instead (an option ending in _env)")
            raise RegistryError(f"{where}.{key}: a literal secret in a recipe is refused (recipes are saved to the run "
                                f"directory as config.yaml); put it in an environment variable and {hint}")
        if low.endswith("_env") and not (isinstance(value, str) and _ENV_NAME.match(value)):
            raise RegistryError(f"{where}.{key} must be the NAME of an environment variable (letters, digits, _), "
                                "not the secret itself")
        if isinstance(value, str) and "://" in value and _URL_QUERY_SECRET.search(value):
            raise RegistryError(f"{where}.{key}: a URL with a key in its query string is refused (recipes are saved to "
                                "the run directory); put the key in an environment variable (api_key_env)")
        if isinstance(value, str) and _URL_CREDENTIALS.match(value.strip()):
            raise RegistryError(f"{where}.{key}: a URL with credentials (user:password@) is refused (recipes are saved "
                                "to the run directory); put the key in an environment variable (api_key_env)")
        check_no_secrets(f"{where}.{key}", value)


def _lookup(table: dict, kind: str, name: str):
    check_name("source" if table is SOURCES else "judge", name)
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_source(spec: dict, ctx: Context | None = None):
    if not isinstance(spec, dict) or "name" not in spec:
        raise RegistryError(f"a source must be a mapping with a 'name', got {spec!r}")
    check_no_secrets(spec["name"], spec)
    return _lookup(SOURCES, "source", spec["name"])(dict(spec), ctx or Context())


def build_judge(name: str, params: dict, ctx: Context | None = None):
    check_no_secrets(name, params)
    return _lookup(JUDGES, "judge", name)(dict(params), ctx or Context())
