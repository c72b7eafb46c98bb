"""Reward-model source and judge: any Hugging Face AutoModelForSequenceClassification scores (document, summary).

Input format: when the tokenizer has a chat template (most modern RMs are trained on chats), the pair is the
conversation [user: "Summarize: <document>", assistant: <summary>]; otherwise it is the text pair
(document, summary). Long documents are truncated, never the summary: the summary is what is scored.
Output: the single logit (num_labels == 1), or logit[1] - logit[0] for a two-class "good/bad" head.

Remote code is refused unless `trust_remote_code: true` (a hub repo's Python runs on your machine).
Padding is on the right, so a causal RM's position ids and its last-token pooling do not depend on the batch:
batched and one-at-a-time scores agree (tested).
"""
from __future__ import annotations

from functools import lru_cache

from reward_sources.rouge import check_batch, check_spec

OPTIONS = {"model", "batch_size", "max_length", "trust_remote_code", "device"}
USER_PREFIX = "Summarize: "


@lru_cache(maxsize=2)
def _load(model: str, trust_remote_code: bool, device: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

    def fail(e: Exception):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ValueError(f"reward_model: cannot load '{model}' offline ({first})")

    try:
        raw, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as e:
        raise fail(e) from None
    # Refuse before anything runs. Without this check transformers would, for a known model_type, quietly load
    # its built-in class instead of the repo's own: a custom reward head would then be random weights.
    if "auto_map" in raw and not trust_remote_code:
        raise ValueError(f"reward_model: '{model}' ships its own Python code (auto_map in config.json); set "
                         "trust_remote_code: true only if you trust that repository")
    try:
        net = AutoModelForSequenceClassification.from_pretrained(model, trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise fail(e) from None
    if net.config.num_labels not in (1, 2):
        raise ValueError(f"reward_model: '{model}' has {net.config.num_labels} labels; expected a 1-logit "
                         "reward head (or 2: good minus bad)")
    if tok.pad_token is None:  # causal RMs often ship without one; any token works since it is masked
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tok.pad_token_id
    net.to(torch.device(device)).eval()
    return tok, net


class RewardModelScorer:
    """Scores (document, summary) pairs in batches with a sequence-classification reward model."""

    def __init__(self, spec: dict, who: str = "reward_model"):
        check_spec(spec, OPTIONS, who)
        if not spec.get("model"):
            raise ValueError(f"{who}: set 'model' to a hub name or a local directory")
        trust = spec.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            raise ValueError(f"{who}: trust_remote_code must be true or false, got {trust!r}")
        self.model_name = str(spec["model"])
        self.batch_size = int(spec.get("batch_size", 16))
        self.tok, self.net = _load(self.model_name, trust, str(spec.get("device", "cpu")))
        limit = self.tok.model_max_length if self.tok.model_max_length < 100_000 else 1024
        self.max_length = int(spec.get("max_length", min(limit, 1024)))
        self.chat = bool(getattr(self.tok, "chat_template", None))

    def _chat_text(self, document: str, summary: str) -> str:
        msgs = [{"role": "user", "content": USER_PREFIX + document}, {"role": "assistant", "content": summary}]
        return self.tok.apply_chat_template(msgs, tokenize=False)

    def _fit(self, document: str, summary: str) -> str:
        """Cut the document so that the formatted conversation fits max_length tokens."""
        n = len(self.tok(self._chat_text(document, summary), add_special_tokens=False)["input_ids"])
        if n <= self.max_length:
            return document
        doc_ids = self.tok(document, add_special_tokens=False)["input_ids"]
        keep = max(0, len(doc_ids) - (n - self.max_length))
        return self.tok.decode(doc_ids[:keep], skip_special_tokens=True)

    def _encode(self, documents, summaries):
        if self.chat:
            texts = [self._chat_text(self._fit(d, s), s) for d, s in zip(documents, summaries)]
            # the template already holds the special tokens (bos etc.); adding them again would double them
            return self.tok(texts, add_special_tokens=False, padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt")
        return self.tok(list(documents), list(summaries), padding=True, truncation="only_first",
                        max_length=self.max_length, return_tensors="pt")

    def __call__(self, documents, summaries) -> list[float]:
        import torch

        out: list[float] = []
        device = next(self.net.parameters()).device
        for i in range(0, len(summaries), self.batch_size):
            docs = [d or "" for d in documents[i:i + self.batch_size]]
            sums = [s or "" for s in summaries[i:i + self.batch_size]]
            enc = {k: v.to(device) for k, v in self._encode(docs, sums).items()}
            with torch.no_grad():
                logits = self.net(**enc).logits.float()
            vals = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
            out += vals.tolist()
        return out


def build_source(spec: dict, ctx=None):
    scorer = RewardModelScorer(spec, "reward_model")

    def score(documents, responses, references):
        check_batch("reward_model", documents, responses, references)
        return scorer(list(documents), list(responses))

    score.__name__ = f"reward_model:{scorer.model_name}"
    return score


class RewardModelJudge:
    """The paper's simulated human: a scalar RM scores each response (labels = comparisons of scores)."""

    kind = "scalar"

    def __init__(self, params: dict):
        self.scorer = RewardModelScorer(dict(params), "reward_model judge")
        self.name = f"reward_model:{self.scorer.model_name}"

    def score(self, rows, responses, seed=0) -> list[float]:
        # deterministic: the seed is accepted for the judge contract and ignored
        if len(rows) != len(responses):
            raise ValueError(f"reward_model judge: {len(rows)} rows for {len(responses)} responses")
        return self.scorer([r["document"] for r in rows], list(responses))


def build_judge(params: dict, ctx=None):
    return RewardModelJudge(params)
