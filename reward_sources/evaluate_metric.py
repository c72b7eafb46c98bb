"""`evaluate` source: any metric of the Hugging Face `evaluate` library as a source reward.

    online.sources: [{name: evaluate, metric: sacrebleu, key: score, kwargs: {lowercase: true}}]
    online.sources: [{name: evaluate, label: overlap, metric: metrics/overlap.py}]

`metric` is what `evaluate.load` takes: a hub name (fetched from the hub, so only where it is reachable; offline
it fails at once with one line) or the path of a local metric script (an `evaluate.Metric` subclass, `.py`) or of
its folder. `config_name` picks one of its configurations, `kwargs` go to every `compute` call, and `key` names the
entry of compute's result that is the reward (it may be left out when the result has one entry). `against:
document` scores the response against the article instead of the reference summary; a metric that takes
`sources` (SARI) gets the article there.

A reward is needed per response, so when `key` holds one value per prediction (BERTScore's `f1`, ROUGE with
`use_aggregator: false`) the batch is computed in one call, and when it holds one number for the batch (BLEU,
chrF, METEOR) each response is computed on its own: the reward is then the metric of that one response.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

from reward_sources.registry import RegistryError, first_line
from reward_sources.rouge import check_batch, check_spec


def _load(name: str, config_name: str | None):
    import evaluate

    try:
        # in memory: no cache files, so the processes of a multi-process run do not lock each other out
        return evaluate.load(name, config_name, keep_in_memory=True)
    except Exception as e:  # noqa: BLE001 - a wrong name, no network, a broken script: one line before any stage
        raise ValueError(f"evaluate: cannot load metric '{name}' ({first_line(e)}); offline, give the path of a "
                         "local metric script (an evaluate.Metric subclass)") from None


def _input_format(metric) -> tuple[set[str], bool]:
    """The metric's input names and whether each reference must be a list (sacrebleu's multi-reference form),
    preferring a form with one reference string per prediction when the metric accepts several."""
    forms = metric.features if isinstance(metric.features, list) else [metric.features]
    for form in forms:
        if "references" not in form or getattr(form["references"], "dtype", None) == "string":
            return set(form), False
    return set(forms[0]), True


def check_build(spec: dict) -> None:
    """The options, without loading the metric (the CLI runs this before any stage); a local script that does not
    exist fails here too, rather than when the online stage builds the source after SFT."""
    check_spec(spec, {"metric", "config_name", "key", "kwargs", "against"}, "evaluate")
    name = spec.get("metric")
    if not isinstance(name, str) or not name:
        raise ValueError("evaluate: the spec needs 'metric: <hub name or path of a metric script>'")
    if (name.endswith(".py") or name.startswith((".", "/", "~"))) and not Path(name).expanduser().exists():
        raise ValueError(f"evaluate: metric script '{name}' does not exist")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"evaluate: kwargs must be a mapping, got {type(kwargs).__name__}")
    if spec.get("against", "reference") not in ("reference", "document"):
        raise ValueError(f"evaluate: against must be 'reference' or 'document', got '{spec['against']}'")
    for key in ("key", "config_name"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ValueError(f"evaluate: {key} must be a string, got {spec[key]!r}")


def build(spec: dict, ctx=None):
    check_build(spec)
    name = spec["metric"]
    kwargs = spec.get("kwargs") or {}
    against = spec.get("against", "reference")
    key = spec.get("key")
    metric = _load(name, spec.get("config_name"))
    inputs, listed = _input_format(metric)
    corpus_level = False  # learnt from the first batch of two or more: `key` is one number for the batch

    def compute(documents, responses, references) -> dict:
        args = {"predictions": list(responses)}
        if "references" in inputs:
            args["references"] = [[r] for r in references] if listed else list(references)
        if "sources" in inputs:
            args["sources"] = list(documents)
        try:
            return metric.compute(**args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a metric that raises stops the run with one line
            raise RegistryError(f"evaluate: metric '{name}' raised {first_line(e)}") from None

    def value(result: dict):
        k = key
        if k is None:
            if len(result) != 1:
                raise RegistryError(f"evaluate: metric '{name}' returns {', '.join(map(str, result))}; "
                                    "set key: to the one that is the reward")
            k = next(iter(result))
        if k not in result:
            raise RegistryError(f"evaluate: metric '{name}' has no '{k}' in its result (it has "
                                f"{', '.join(map(str, result))})")
        return result[k]

    def score(documents, responses, references):
        nonlocal corpus_level
        check_batch("evaluate", documents, responses, references)
        if against == "document":
            references = documents
        if "references" in inputs and any(r is None for r in references):
            raise RegistryError(f"evaluate: metric '{name}' needs references, and one is missing (None)")
        if not responses:
            return []
        if not corpus_level:
            result = value(compute(documents, responses, references))
            if not isinstance(result, numbers.Number):
                return _checked(result, len(responses))
            if len(responses) == 1:
                return _checked([result], 1)
            corpus_level = True
        return _checked([value(compute([d], [y], [r])) for d, y, r in zip(documents, responses, references)],
                        len(responses))

    def _checked(out, n: int) -> list[float]:
        try:
            out = [float(x) for x in out]
        except (TypeError, ValueError):
            raise RegistryError(f"evaluate: the result of metric '{name}' is not a number per response") from None
        if len(out) != n:
            raise RegistryError(f"evaluate: metric '{name}' gave {len(out)} values for {n} responses")
        if not all(math.isfinite(x) for x in out):
            raise RegistryError(f"evaluate: metric '{name}' gave a non-finite score")
        return out

    score.__name__ = f"evaluate_{name}"
    return score
