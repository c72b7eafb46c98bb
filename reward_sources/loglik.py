"""Log-likelihood source reward: how probable another model finds the response given the document.

score = beta * reduce(log p_model(response + EOS | prompt(document)))            (default: the paper's summed form)
      - with `minus_reference: true`: beta * (that - the same under ctx.reference_policy), the implicit reward
        beta * log pi'/pi_ref of a DPO-trained model against its reference;
      - with `pmi: true`: beta * (that - the same given an empty document), i.e. pointwise mutual information
        between document and response (removes the "short, generic text is likely" bias).
reduce = sum (default) | mean (per token).

Everything goes through `pipeline.models.Policy`, so prompt format and the response convention (tokens + EOS)
are exactly those of the policy code. One speed-up on top: the responses of one document share its prompt, so
`grouped_logprobs` encodes each distinct prompt once (a causal model's KV cache, a seq2seq model's encoder
output) and scores all of its responses against it; the online loop (K samples per prompt) and the validation
harness (5 systems per document) both have this shape. For a causal model the responses are packed into one
row after the prompt's cache (block attention mask, no padding). It is tested equal to `Policy.logprobs`.
Sum and mean come from the same numbers (sum, n_tokens), cached per model in the build context
(registry.Context.logprob_cache), so scorers on one model built with one context share them.
"""
from __future__ import annotations

import copy
import json
import math
from collections import defaultdict

import torch

from pipeline import config
from pipeline.models import cached_forward, load_policy, pad_ids, token_logprobs
from reward_sources.rouge import check_batch, check_spec, positive_int

OPTIONS = {"model", "reduce", "minus_reference", "pmi", "beta", "batch_size"}
_POLICIES: dict[str, object] = {}
_CACHE_LIMIT = 200_000  # (document, response) pairs kept per model before the cache starts again
# a packed row holds about batch_size targets of this many tokens (SmolLM2 on one CPU thread: 128 to 512 tokens
# per row all cost the same within 3%; longer rows pay for the dense block mask in attention)
PACK_TOKENS_PER_TARGET = 16


def model_config(model):
    """A ModelConfig from a name string or a ModelConfig-like mapping (strictly checked)."""
    if isinstance(model, config.ModelConfig):
        return model
    if isinstance(model, str):
        return config.ModelConfig(name=model)
    if isinstance(model, dict):
        try:
            return config.build_options(config.ModelConfig, model, "loglik.model.")
        except config.ConfigError as e:
            raise ValueError(f"loglik: {e}") from None
    raise ValueError(f"loglik: model must be a name or a mapping of ModelConfig fields, got {type(model).__name__}")


def model_key(model) -> str:
    import dataclasses

    return json.dumps(dataclasses.asdict(model_config(model)), sort_keys=True)


def get_policy(model):
    """Load once per configuration: the agreement harness builds several loglik scorers on one model."""
    cfg = model_config(model)
    key = model_key(cfg)
    if key not in _POLICIES:
        try:
            _POLICIES[key] = load_policy(cfg).eval()
        except ValueError as e:  # ModelError and friends: already one line
            raise ValueError(f"loglik: {e}") from None
    return key, _POLICIES[key]


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def block_mask(lengths: list[int], n_prefix: int, dtype, device) -> torch.Tensor:
    """Additive attention mask (1, 1, Q, n_prefix + Q), Q = sum(lengths), for sequences packed into one row
    after a shared prefix: each token sees the whole prefix and the earlier tokens of its own sequence only."""
    q = sum(lengths)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
    idx = torch.arange(q)
    allowed = torch.cat([torch.ones(q, n_prefix, dtype=torch.bool),
                         (seq[:, None] == seq[None, :]) & (idx[None, :] <= idx[:, None])], 1)
    mask = torch.zeros(q, n_prefix + q, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def packed_chunks(lengths: list[int], budget: int):
    """Consecutive index ranges whose total length stays within budget (a longer single item gets its own)."""
    start, total = 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            yield range(start, i)
            start, total = i, 0
        total += n
    if start < len(lengths):
        yield range(start, len(lengths))


def _packable(model) -> bool:
    """Attention implementations that take a custom additive 4D mask (flash-attention kernels do not)."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


@torch.inference_mode()
def _score_group(policy, prompt: list[int], targets: list[list[int]], batch_size: int,
                 head=None) -> list[tuple[float, int]]:
    """(sum, n) of each target given one shared prompt, encoding the prompt once. head: (n, KV cache) of the
    prompt's first n tokens (causal models), to be extended rather than recomputed."""
    model, dev = policy.model, policy.device
    out = []
    if policy.is_seq2seq:
        from transformers.modeling_outputs import BaseModelOutput

        enc_ids = torch.tensor([prompt], device=dev)
        hidden = model.get_encoder()(input_ids=enc_ids, attention_mask=torch.ones_like(enc_ids)).last_hidden_state
        for chunk in _chunks(targets, batch_size):
            labels, lmask = pad_ids(chunk, policy.pad_id, left=False)
            dec_in, _ = pad_ids([[policy.pad_id] + t[:-1] for t in chunk], policy.pad_id, left=False)
            b = len(chunk)
            logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.expand(b, -1, -1)),
                           attention_mask=torch.ones(b, len(prompt), dtype=torch.long, device=dev),
                           decoder_input_ids=dec_in.to(dev), decoder_attention_mask=lmask.to(dev)).logits
            lp = torch.where(lmask.to(dev).bool(), token_logprobs(logits, labels.to(dev)), 0.0)
            out += list(zip(lp.sum(-1).tolist(), lmask.sum(-1).tolist()))
        return out
    n_head, head_cache = (0, None) if head is None else (head[0], copy.deepcopy(head[1]))
    pre, pre_cache = cached_forward(model, head_cache, input_ids=torch.tensor([prompt[n_head:]], device=dev),
                                    use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(pre.logits[0, -1].float(), -1)  # predicts each target's first token
    if not _packable(model):
        return _score_padded(policy, pre_cache, first, len(prompt), targets, batch_size)
    # The targets are packed into ONE row after the prompt's cache (no padding, no per-target copies of the cache)
    # with a block mask, so each target sees the prompt and its own earlier tokens only, and position ids that
    # restart after the prompt for every target: the maths of one forward per target (tested). SmolLM2 on one CPU
    # thread: 1.07x faster than padded batches for a document's 5 summaries, 1.3x for PMI's empty-document prompt.
    n_pre, dtype = len(prompt), next(model.parameters()).dtype
    # each target feeds all its tokens but the last (the first is predicted by the prompt, the last is only a label)
    feeds = [t[:-1] for t in targets]
    chunks = list(packed_chunks([len(f) for f in feeds], batch_size * PACK_TOKENS_PER_TARGET))
    for k, chunk in enumerate(chunks):
        lens = [len(feeds[i]) for i in chunk]
        tok = torch.zeros(0, device=dev)
        if sum(lens):
            cache = pre_cache if k == len(chunks) - 1 else copy.deepcopy(pre_cache)
            ids = torch.tensor([[x for i in chunk for x in feeds[i]]], device=dev)
            pos = torch.tensor([[n_pre + j for n in lens for j in range(n)]], device=dev)
            logits = cached_forward(model, cache, input_ids=ids, attention_mask=block_mask(lens, n_pre, dtype, dev),
                                    position_ids=pos)[0].logits[0]
            labels = torch.tensor([x for i in chunk for x in targets[i][1:]], device=dev)
            tok = token_logprobs(logits, labels)
        for i, part in zip(chunk, tok.split(lens)):
            out.append((float(first[targets[i][0]] + part.sum()), len(targets[i])))
    return out


def _score_padded(policy, pre_cache, first, n_pre: int, targets: list[list[int]],
                  batch_size: int) -> list[tuple[float, int]]:
    """The same with right-padded batches over copies of the prompt's cache (attention without 4D masks)."""
    model, dev, out = policy.model, policy.device, []
    for chunk in _chunks(targets, batch_size):
        labels, lmask = pad_ids(chunk, policy.pad_id, left=False)
        labels, lmask = labels.to(dev), lmask.to(dev)
        b, width = labels.shape
        cache = copy.deepcopy(pre_cache)
        cache.batch_repeat_interleave(b)
        mask = torch.cat([torch.ones(b, n_pre, dtype=torch.long, device=dev), lmask], 1)
        pos = torch.arange(n_pre, n_pre + width, device=dev).expand(b, -1)  # right padding: real tokens contiguous
        tok_lp = first[labels[:, 0]].unsqueeze(1)
        if width > 1:
            logits = cached_forward(model, cache, input_ids=labels[:, :-1], attention_mask=mask[:, :-1],
                                    position_ids=pos[:, :-1])[0].logits
            tok_lp = torch.cat([tok_lp, token_logprobs(logits, labels[:, 1:])], 1)
        lp = torch.where(lmask.bool(), tok_lp, 0.0)
        out += list(zip(lp.sum(-1).tolist(), lmask.sum(-1).tolist()))
    return out


def grouped_logprobs(policy, documents, responses, batch_size: int = 16) -> tuple[list[float], list[int]]:
    """Summed log-probs and token counts of responses (+EOS), encoding each distinct document's prompt once."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(documents):
        groups[d].append(i)
    targets = policy.response_ids(list(responses))
    prompts = dict(zip(groups, policy.prompt_ids(list(groups))))
    sums, counts = [0.0] * len(responses), [0] * len(responses)
    with torch.inference_mode(), policy.amp():
        head = None
        if not policy.is_seq2seq and len(prompts) > 1:
            # the tokens every prompt starts with (chat template, system prompt, instruction: ~35 tokens for
            # SmolLM2) are encoded once; at least one token of each prompt is left to run
            n = common_prefix_len(list(prompts.values()))
            n = min([n] + [len(p) - 1 for p in prompts.values()])
            if n >= 8:
                first = next(iter(prompts.values()))
                head = (n, cached_forward(policy.model, input_ids=torch.tensor([first[:n]], device=policy.device),
                                          use_cache=True, logits_to_keep=1)[1])
        for doc, idx in groups.items():
            scored = _score_group(policy, prompts[doc], [targets[i] for i in idx], batch_size, head)
            for i, (s, n) in zip(idx, scored):
                sums[i], counts[i] = s, n
    return sums, counts


def common_prefix_len(rows: list[list[int]]) -> int:
    n = min(map(len, rows))
    for k in range(n):
        if any(r[k] != rows[0][k] for r in rows):
            return k
    return n


def policy_logprobs(policy, documents, responses, batch_size: int = 16) -> tuple[list[float], list[int]]:
    """Shared-prompt path when documents repeat (one prompt encoding per document), else Policy.logprobs."""
    if len(set(documents)) < len(documents):
        return grouped_logprobs(policy, documents, responses, batch_size)
    total, _, n = policy.logprobs(list(documents), list(responses), batch_size=batch_size)
    return total.tolist(), n.tolist()


def remember(cache: dict, model, documents, responses, sums, counts) -> None:
    """Put (summed log-prob, n_tokens) computed elsewhere (the agreement harness's worker processes) into a
    Context.logprob_cache, so that every loglik scorer built with that context reuses them."""
    cache.setdefault(model_key(model), {}).update(zip(zip(documents, responses), zip(sums, counts)))


def check_build(spec: dict) -> None:
    """Every option, without loading the model: the CLI runs this before any stage (a wrong type would otherwise
    surface when the online stage builds the source, after SFT and the source models' training)."""
    check_spec(spec, OPTIONS, "loglik")
    reduce = spec.get("reduce", "sum")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"loglik: reduce must be 'sum' or 'mean', got '{reduce}'")
    for key in ("minus_reference", "pmi"):
        if not isinstance(spec.get(key, False), bool):
            raise ValueError(f"loglik: {key} must be true or false, got {spec[key]!r}")
    if spec.get("minus_reference") and spec.get("pmi"):
        raise ValueError("loglik: choose one of minus_reference and pmi")
    if "model" not in spec:
        raise ValueError("loglik: set 'model' (e.g. 'gguf:smollm2', a local directory, or a ModelConfig mapping)")
    model_config(spec["model"])
    beta = spec.get("beta", 1.0)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"loglik: beta must be a finite number, got {beta!r}")
    positive_int(spec, "batch_size", 16, "loglik")


def build(spec: dict, ctx=None):
    check_build(spec)
    reduce = spec.get("reduce", "sum")
    minus_ref, pmi = spec.get("minus_reference", False), spec.get("pmi", False)
    beta = float(spec.get("beta", 1.0))
    batch_size = spec.get("batch_size", 16)
    key, policy = get_policy(spec["model"])
    memo = (ctx.logprob_cache if ctx is not None else {}).setdefault(key, {})

    def own(documents, responses):
        """Log-probs under the source model, cached in the context (sum and mean scorers share the work)."""
        todo = sorted({(d, r) for d, r in zip(documents, responses) if (d, r) not in memo})
        if todo:
            if len(memo) + len(todo) > _CACHE_LIMIT:
                memo.clear()
            sums, counts = policy_logprobs(policy, [d for d, _ in todo], [r for _, r in todo], batch_size)
            memo.update(zip(todo, zip(sums, counts)))
        return [memo[(d, r)] for d, r in zip(documents, responses)]

    def reduced(pairs):
        return [s if reduce == "sum" else s / n for s, n in pairs]

    def score(documents, responses, references=None):
        check_batch("loglik", documents, responses)
        documents = [d or "" for d in documents]
        responses = [r or "" for r in responses]
        vals = reduced(own(documents, responses))
        if pmi:
            base = reduced(own([""] * len(responses), responses))
            vals = [v - b for v, b in zip(vals, base)]
        elif minus_ref:
            ref = getattr(ctx, "reference_policy", None)
            if ref is None:
                raise ValueError("loglik: minus_reference needs ctx.reference_policy (set by the online stage)")
            # never cached: the reference changes between iterations
            vals = [v - b for v, b in zip(vals, reduced(zip(*policy_logprobs(ref, documents, responses, batch_size))))]
        return [beta * v for v in vals]

    score.__name__ = f"loglik_{reduce}" + ("_pmi" if pmi else "_minus_ref" if minus_ref else "")
    score.policy = policy
    return score
