"""Reward-model source and judge: any Hugging Face AutoModelForSequenceClassification scores (document, summary).

Input format: when the tokenizer has a chat template (most modern RMs are trained on chats), the pair is the
conversation [user: "Summarize: <document>", assistant: <summary>]; otherwise it is the text pair
(document, summary). Long documents are truncated, never the summary: the summary is what is scored.
Output: the single logit (num_labels == 1), or logit[1] - logit[0] for a two-class "good/bad" head.

A checkpoint trained by `eval.learned_judge` names its input format in config.json (`judge_input`); its
(document, summary) pairs are then rebuilt as that format says (reward_sources/judge_input.py) before encoding.

Remote code is refused unless `trust_remote_code: true` (a hub repo's Python runs on your machine).
Padding is on the right, so a causal RM's position ids and its last-token pooling do not depend on the batch:
batched and one-at-a-time scores agree (tested).

Speed: the judge scores K responses per document (K + N for a source), and the document is most of each input.
For a decoder RM (transformers' generic `...ForSequenceClassification`: a base model plus a `score` head on the
last non-pad token) the responses of one document are packed into one row after ONE copy of their shared token
prefix, with a block attention mask (each response sees the prefix and its own earlier tokens) and position ids
that restart after the prefix: the maths of one forward per response, with the document encoded once. Several
documents share a row up to `pack_tokens`. The first packed call checks itself against the plain batched path
and falls back (with a warning) if they differ, e.g. for an architecture whose attention ignores custom masks.
"""
from __future__ import annotations

import logging
from functools import lru_cache

from reward_sources.judge_input import format_pairs
from reward_sources.rouge import check_batch, check_spec

log = logging.getLogger(__name__)
OPTIONS = {"model", "batch_size", "max_length", "trust_remote_code", "device", "pack_tokens"}
# tokens per packed row (a longer single document gets its own row). On one CPU thread rows of 128-512 tokens cost
# the same per token; 1,024 is 1.1-1.4x slower (the dense block mask makes attention quadratic in the row), 2,048
# 1.7-1.9x (random 4-layer RM, hidden 256, 8 responses per 45- or 400-token document; bench/ratios.py's inputs)
PACK_TOKENS = 256
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
        self.input_format = getattr(self.net.config, "judge_input", None)
        format_pairs(self.input_format, [], [])  # an unknown format fails at load time, not mid-run
        self.pack_tokens = int(spec.get("pack_tokens", PACK_TOKENS))
        # None: not yet checked against the plain path; False: packing is off for this model
        self.packed_ok = None if self.pack_tokens > 0 and _packable(self.net) else False

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

    def _encode(self, documents, summaries, pad: bool = True):
        tensors = {"padding": True, "return_tensors": "pt"} if pad else {}
        if self.chat:
            texts = [self._chat_text(self._fit(d, s), s) for d, s in zip(documents, summaries)]
            # the template already holds the special tokens (bos etc.); adding them again would double them
            return self.tok(texts, add_special_tokens=False, truncation=True, max_length=self.max_length, **tensors)
        return self.tok(list(documents), list(summaries), truncation="only_first", max_length=self.max_length,
                        **tensors)

    def __call__(self, documents, summaries) -> list[float]:
        documents, summaries = [d or "" for d in documents], [s or "" for s in summaries]
        documents, summaries = format_pairs(self.input_format, documents, summaries)
        if self.packed_ok is not False and len(set(documents)) < len(documents):
            if self.packed_ok is None:
                self._check_packing(documents, summaries)
            if self.packed_ok:
                return self._packed(documents, summaries)
        return self._batched(documents, summaries)

    def _batched(self, documents, summaries) -> list[float]:
        import torch

        out: list[float] = []
        device = next(self.net.parameters()).device
        for i in range(0, len(summaries), self.batch_size):
            enc = self._encode(documents[i:i + self.batch_size], summaries[i:i + self.batch_size])
            with torch.inference_mode():
                logits = self.net(**{k: v.to(device) for k, v in enc.items()}).logits.float()
            out += _reward(logits).tolist()
        return out

    def _check_packing(self, documents, summaries) -> None:
        doc = next(d for d in documents if documents.count(d) > 1)
        sums = [s for d, s in zip(documents, summaries) if d == doc][:8]
        try:
            packed, plain = self._packed([doc] * len(sums), sums), self._batched([doc] * len(sums), sums)
            diff = max(abs(a - b) / (1.0 + abs(b)) for a, b in zip(packed, plain))
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            diff, why = float("inf"), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            why = f"scores differ by {diff:.1e}"
        self.packed_ok = diff < 1e-3
        if not self.packed_ok:
            log.warning("reward_model %s: packed scoring does not match the plain forward (%s); scoring in plain "
                        "padded batches", self.model_name, why)

    def _packed(self, documents, summaries) -> list[float]:
        """Each document's responses after one copy of their shared token prefix, several documents per row."""
        import torch

        from reward_sources.loglik import common_prefix_len, packed_chunks

        ids = self._encode(documents, summaries, pad=False)["input_ids"]
        pad = self.net.config.get_text_config().pad_token_id
        # the head reads the last token that is not the pad token (transformers' pooling); later ones are inert
        ids = [row[:_last_non_pad(row, pad) + 1] for row in ids]
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(documents):
            groups.setdefault(d, []).append(i)
        segments = []  # (prefix ids, [(index, suffix ids)]): at least one token of every response is left to run
        for idx in groups.values():
            n = min([common_prefix_len([ids[i] for i in idx])] + [len(ids[i]) - 1 for i in idx])
            segments.append((ids[idx[0]][:n], [(i, ids[i][n:]) for i in idx]))
        out = [0.0] * len(summaries)
        sizes = [len(p) + sum(len(s) for _, s in sfx) for p, sfx in segments]
        base, device = getattr(self.net, self.net.base_model_prefix), next(self.net.parameters()).device
        dtype = next(self.net.parameters()).dtype
        for chunk in packed_chunks(sizes, self.pack_tokens):
            row, pos, mask, ends, where = _pack([segments[j] for j in chunk], dtype)
            with torch.inference_mode():
                hidden = base(input_ids=torch.tensor([row], device=device), attention_mask=mask.to(device),
                              position_ids=torch.tensor([pos], device=device)).last_hidden_state[0]
                vals = _reward(self.net.score(hidden[ends]).float())
            for i, v in zip(where, vals.tolist()):
                out[i] = v
        return out


def _reward(logits):
    return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]


def _packable(net) -> bool:
    """transformers' generic decoder classifier (its pooling is known) with an attention that takes 4D masks."""
    from transformers.modeling_layers import GenericForSequenceClassification

    return (isinstance(net, GenericForSequenceClassification)
            and getattr(net.config, "_attn_implementation", None) in ("sdpa", "eager"))


def _last_non_pad(row: list[int], pad) -> int:
    return next((j for j in range(len(row) - 1, -1, -1) if row[j] != pad), len(row) - 1)


def _pack(segments, dtype):
    """One row of [prefix, suffix_1, ..., suffix_m] per segment: token ids, position ids, the additive mask
    (1, 1, L, L), each suffix's last position, and the response index it belongs to."""
    import torch

    row, pos, seg, seq, ends, where = [], [], [], [], [], []
    for g, (prefix, suffixes) in enumerate(segments):
        row += prefix
        pos += range(len(prefix))
        seg += [g] * len(prefix)
        seq += [-1] * len(prefix)
        for k, (i, sfx) in enumerate(suffixes):
            row += sfx
            pos += range(len(prefix), len(prefix) + len(sfx))
            seg += [g] * len(sfx)
            seq += [k] * len(sfx)
            ends.append(len(row) - 1)
            where.append(i)
    seg_t, seq_t, idx = torch.tensor(seg), torch.tensor(seq), torch.arange(len(row))
    # a token sees earlier tokens of its own document's prefix and of its own response
    allowed = ((seg_t[:, None] == seg_t[None, :]) & (idx[None, :] <= idx[:, None])
               & ((seq_t[None, :] == -1) | (seq_t[None, :] == seq_t[:, None])))
    mask = torch.zeros(len(row), len(row), dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return row, pos, mask[None, None], ends, where


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
    shardable = True  # each score is a pure function of (row, response): processes may split a batch

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
