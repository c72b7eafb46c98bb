"""Pairwise LLM judge: a generative model is asked which of two summaries of a document is better.

Every comparison is asked in both orders (A=a, B=b and A=b, B=a), because small LLMs have a strong position
bias: consistent answers give 1.0 (a better) or 0.0 (b better); answers that flip with the order give 0.5 (a
tie: the judge's preference was the position, not the summary); an unparseable answer in either order gives
None, a failure that the caller records (never silently dropped). Decoding is greedy and short.

The model is pluggable: params `model` (anything `pipeline.models.load_policy` loads; default 'gguf:smollm2')
or `ctx.extra["generate"]`, a callable(prompts: list[str]) -> list[str] (tests inject fakes; a served judge
behind an HTTP API can be wrapped the same way). SmolLM2-135M answers "A" whatever it is shown (measured, see
docs/architecture.md): with both orders it comes out as all ties, which is why it is no default judge anywhere.

For a causal model the prompt is [instruction + document | summaries + question]; the first part is the same
for every pair of one document, so its KV cache is computed once and shared (tested equal to plain greedy
`generate`).
"""
from __future__ import annotations

import copy
import re
from collections import defaultdict

import torch

from reward_sources.rouge import check_spec, positive_int

OPTIONS = {"model", "max_new_tokens", "batch_size", "max_document_words"}
INSTRUCTION = ("Read the news article and the two summaries of it. The better summary states the article's main "
               "point and says nothing that the article does not support.")
QUESTION = "Which summary is better, A or B? Answer with one letter."
_EXPLICIT = re.compile(r"\b(?:summary|answer|option|choice)(?:\s+is)?\W*([ab])\b")
_LETTER = re.compile(r"^\W*\(?([ab])\b")


def parse_choice(text: str | None) -> str | None:
    """'A' or 'B' from a judge's answer ("A", "b.", "Summary A", "**B**", "Answer: A"), else None."""
    if not text:
        return None
    low = text.strip().lower()
    m = _EXPLICIT.search(low) or _LETTER.match(low)
    return m.group(1).upper() if m else None


def combine(first: str | None, second: str | None) -> float | None:
    """first: answer with A=a, B=b; second: with A=b, B=a. -> 1 (a better), 0 (b), 0.5 (order-dependent), None."""
    if first is None or second is None:
        return None
    a_first, a_second = first == "A", second == "B"
    return (1.0 if a_first else 0.0) if a_first == a_second else 0.5


def prompt_parts(document: str, first: str, second: str, max_words: int) -> tuple[str, str]:
    """(shared part, pair-specific part) of the judge prompt; their concatenation is the prompt."""
    words = (document or "").split(" ")
    doc = document if len(words) <= max_words else " ".join(words[:max_words]) + " ..."
    return (f"{INSTRUCTION}\n\nArticle:\n{doc}",
            f"\n\nSummary A: {first.strip()}\nSummary B: {second.strip()}\n\n{QUESTION}")


class SharedPrefixGenerator:
    """Greedy decoding of (prefix, suffix) prompts with a Policy's model, encoding each distinct prefix once."""

    def __init__(self, policy, max_new_tokens: int = 4, batch_size: int = 16):
        self.policy, self.max_new_tokens, self.batch_size = policy, max_new_tokens, batch_size
        self.tok = policy.tokenizer
        self.chat = bool(getattr(self.tok, "chat_template", None))

    def _split_ids(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        if self.chat:
            full = self.tok.apply_chat_template([{"role": "user", "content": prefix + suffix}], tokenize=False,
                                                add_generation_prompt=True)
            cut = full.index(prefix + suffix) + len(prefix)
            head, tail, specials = full[:cut], full[cut:], False  # the template holds its special tokens
        else:
            head, tail, specials = prefix, suffix + "\nAnswer:", True
        ids = self.tok(head, add_special_tokens=specials)["input_ids"]
        return ids, self.tok(tail, add_special_tokens=False)["input_ids"]

    def __call__(self, parts: list[tuple[str, str]]) -> list[str]:
        if self.policy.is_seq2seq:  # the encoder reads the whole prompt; no sharing to exploit
            return self._seq2seq([p + s for p, s in parts])
        groups: dict[tuple, list[int]] = defaultdict(list)
        encoded = [self._split_ids(p, s) for p, s in parts]
        for i, (pre, _) in enumerate(encoded):
            groups[tuple(pre)].append(i)
        out = [""] * len(parts)
        with torch.inference_mode(), self.policy.amp():
            for pre, idx in groups.items():
                cache = None  # the prefix's KV cache: computed once per group, shared by all its chunks
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s:s + self.batch_size]
                    texts, cache = self.greedy(list(pre), [encoded[i][1] for i in chunk], cache)
                    for i, t in zip(chunk, texts):
                        out[i] = t
        return out

    @torch.inference_mode()
    def greedy(self, prefix: list[int], suffixes: list[list[int]], prefix_cache=None) -> tuple[list[str], object]:
        """Greedy answers to prefix + each suffix, and the prefix's KV cache (pass it back for the same prefix)."""
        from pipeline.models import cached_forward, pad_ids

        model, dev, pad, eos = self.policy.model, self.policy.device, self.policy.pad_id, self.policy.eos_id
        if prefix_cache is None:
            prefix_cache = cached_forward(model, input_ids=torch.tensor([prefix], device=dev), use_cache=True,
                                          logits_to_keep=1)[1]
        b, n_pre = len(suffixes), len(prefix)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(b)
        # suffixes left-padded so every row's last real token is the last column; the pads sit between prefix
        # and suffix, masked out, and position ids skip them (as generate() does for left padding)
        ids, smask = pad_ids(suffixes, pad, left=True)
        ids, smask = ids.to(dev), smask.to(dev)
        mask = torch.cat([torch.ones(b, n_pre, dtype=torch.long, device=dev), smask], 1)
        pos = n_pre + (smask.cumsum(-1) - 1).clamp(min=0)
        step = cached_forward(model, cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)[0]
        nxt, cur = step.logits[:, -1].argmax(-1), pos[:, -1]
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        new = []
        for _ in range(self.max_new_tokens):
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt)
            done |= nxt == eos
            if done.all() or len(new) == self.max_new_tokens:
                break
            mask, cur = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=dev)], 1), cur + 1
            step = cached_forward(model, cache, input_ids=nxt[:, None], attention_mask=mask, position_ids=cur[:, None],
                                  logits_to_keep=1)[0]
            nxt = step.logits[:, -1].argmax(-1)
        texts = self.tok.batch_decode(torch.stack(new, 1), skip_special_tokens=True)
        return [t.strip() for t in texts], prefix_cache

    def _seq2seq(self, prompts: list[str]) -> list[str]:
        out = []
        with torch.inference_mode(), self.policy.amp():
            for s in range(0, len(prompts), self.batch_size):
                enc = self.tok(prompts[s:s + self.batch_size], padding=True, return_tensors="pt").to(self.policy.device)
                gen = self.policy.model.generate(**enc, do_sample=False, num_beams=1,
                                                 max_new_tokens=self.max_new_tokens)
                out += [t.strip() for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        return out


def check_build_judge(params: dict) -> None:
    """The options, checked without loading the model (the CLI runs this before any stage)."""
    check_spec(params, OPTIONS, "pairwise_llm")
    for key, default in (("max_new_tokens", 4), ("batch_size", 16), ("max_document_words", 400)):
        positive_int(params, key, default, "pairwise_llm")
    model = params.get("model", "gguf:smollm2")
    if not (isinstance(model, str) and model.strip()) and not (isinstance(model, dict) and model.get("name")):
        raise ValueError(f"pairwise_llm: model must be a name or a mapping with a 'name', got {model!r}")


class PairwiseLLMJudge:
    kind = "pairwise"

    def __init__(self, params: dict, ctx=None):
        check_build_judge(params)
        self.max_words = params.get("max_document_words", 400)
        extra = getattr(ctx, "extra", None) or {}
        if extra.get("generate") is not None:
            if not callable(extra["generate"]):
                raise ValueError("pairwise_llm: ctx.extra['generate'] must be a callable(prompts) -> answers")
            fn = extra["generate"]
            self._generate = lambda parts: fn([p + s for p, s in parts])
            self.name = f"pairwise_llm:{getattr(fn, '__name__', 'callable')}"
        else:
            from reward_sources.loglik import get_policy

            model = params.get("model", "gguf:smollm2")
            _, policy = get_policy(model)
            self._generate = SharedPrefixGenerator(policy, params.get("max_new_tokens", 4),
                                                   params.get("batch_size", 16))
            self.name = f"pairwise_llm:{model if isinstance(model, str) else model.get('name')}"
        self.last_raw: list[dict] = []

    def compare(self, rows, a, b, seed=0) -> list[float | None]:
        """1 = a better, 0 = b better, 0.5 = tie (order-dependent answers), None = unparseable (a failure)."""
        if not (len(rows) == len(a) == len(b)):
            raise ValueError(f"pairwise_llm: {len(rows)} rows, {len(a)} a-responses, {len(b)} b-responses")
        n = len(rows)
        parts = [prompt_parts(r["document"], x, y, self.max_words) for r, x, y in zip(rows, a, b)]
        parts += [prompt_parts(r["document"], y, x, self.max_words) for r, x, y in zip(rows, a, b)]
        answers = list(self._generate(parts)) if n else []
        if len(answers) != 2 * n:
            raise ValueError(f"pairwise_llm: the generator returned {len(answers)} answers for {2 * n} prompts")
        # greedy decoding: the seed is accepted for the judge contract and has no effect
        self.last_raw = [{"id": r.get("id"), "ab": answers[i], "ba": answers[n + i]} for i, r in enumerate(rows)]
        return [combine(parse_choice(answers[i]), parse_choice(answers[n + i])) for i in range(n)]


def build_judge(params: dict, ctx=None):
    return PairwiseLLMJudge(params, ctx)
