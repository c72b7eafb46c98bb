"""Common random numbers in sampling (pipeline/models.py: GumbelSampler, Policy.sample keys/first).

Sample j of a prompt is the argmax of its logits/T plus Gumbel noise from a generator seeded by (seed, key, j):
checked against a step-by-step decode by hand (EOS and padding included), for independence from batch size,
order, sample count and neighbours, for shared noise across checkpoints, for the distribution it samples
(chi-square against softmax(logits/T), with and without a top-k cut), and on a tiny T5 trained to copy its input.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import WORDS, generated_texts
from scipy.stats import chisquare

from pipeline.config import ModelConfig, SFTConfig
from pipeline.models import GumbelSampler, load_policy, noise_seed
from pipeline.sft import run_sft

DOCS = generated_texts(6, seed=4, length=20)
DOCS[1] = "Short one."  # mixed prompt lengths: padding (left for causal models) inside a batch


class BiasedHead(torch.nn.Module):
    """The model's output layer plus a bias on some logits: makes EOS likely, so that rows of a batch stop at
    different steps and padding follows EOS."""

    def __init__(self, head: torch.nn.Module, bias: torch.Tensor):
        super().__init__()
        self.head, self.bias = head, bias

    def forward(self, x):
        return self.head(x) + self.bias


def boost_eos(policy, p_eos: float, temperature: float, top_k: int):
    """Bias EOS so that its sampling probability (after temperature and top-k cut) at the first step of DOCS[0]
    is p_eos."""
    logits = next_logits(policy, policy.prompt_ids([DOCS[0]])[0], []) / temperature
    others = torch.cat([logits[: policy.eos_id], logits[policy.eos_id + 1:]])
    if top_k:
        others = others.topk(top_k - 1).values
    bias = torch.zeros(logits.shape[-1])
    bias[policy.eos_id] = (others.logsumexp(0) + np.log(p_eos / (1 - p_eos)) - logits[policy.eos_id]) * temperature
    policy.model.lm_head = BiasedHead(policy.model.lm_head, bias)
    return policy


def next_logits(policy, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits of the next token after `tokens`, one unpadded row, no cache."""
    with torch.no_grad():
        if policy.is_seq2seq:
            out = policy.model(input_ids=torch.tensor([prompt]),
                               decoder_input_ids=torch.tensor([[policy.start_id] + tokens]))
        else:
            out = policy.model(input_ids=torch.tensor([prompt + tokens]))
    return out.logits[0, -1].float()


def sample_by_hand(policy, document: str, seed: int, key: str, index: int, temperature: float, top_k: int,
                   max_new_tokens: int) -> tuple[str, int]:
    """argmax(logits/T [top-k cut] + Gumbel) per step, the noise read from the row's own generator in blocks of
    CHUNK steps, stopping at EOS: (text, tokens generated including EOS)."""
    gen = torch.Generator().manual_seed(noise_seed(seed, key, index))
    prompt = policy.prompt_ids([document])[0]
    tokens: list[int] = []
    for step in range(max_new_tokens):
        logits = next_logits(policy, prompt, tokens) / temperature
        if step % GumbelSampler.CHUNK == 0:
            noise = -torch.log(-torch.log(torch.rand(GumbelSampler.CHUNK, logits.shape[-1], generator=gen)))
        if top_k:
            logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
        tok = int((logits + noise[step % GumbelSampler.CHUNK]).argmax())
        tokens.append(tok)
        if tok == policy.eos_id:
            break
    return policy.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens)


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
@pytest.mark.parametrize("temperature,top_k", [(0.7, 0), (1.3, 40)])
def test_batched_samples_equal_a_decode_by_hand(make_policy, shape, temperature, top_k):
    policy = boost_eos(make_policy(shape), 0.1, temperature, top_k)
    kw = dict(temperature=temperature, top_k=top_k, max_new_tokens=12, seed=11)  # 12 steps: two noise blocks
    got = policy.sample(DOCS, 3, batch_size=5, **kw)  # batches of 5 rows: documents split across batches
    want = [[sample_by_hand(policy, d, 11, d, j, temperature, top_k, 12) for j in range(3)] for d in DOCS]
    assert got == [[text for text, _ in ws] for ws in want]
    lengths = [n for ws in want for _, n in ws]
    # rows stopped at EOS at different steps (padding after it), some past the first block of noise
    assert len(set(lengths)) >= 3 and min(lengths) < 12 and max(lengths) > GumbelSampler.CHUNK, lengths


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
def test_samples_depend_on_prompt_key_and_index_only(make_policy, shape):
    policy = make_policy(shape)
    kw = dict(max_new_tokens=6, seed=3)
    K, N = 3, 4
    full = policy.sample(DOCS, K + N, batch_size=64, **kw)
    assert len({y for ys in full for y in ys}) > 3 * len(DOCS)  # really sampling
    for batch_size in (1, 4, 7):
        assert policy.sample(DOCS, K, batch_size=batch_size, **kw) == [ys[:K] for ys in full]
    assert policy.sample(DOCS, N, batch_size=3, first=K, **kw) == [ys[K:] for ys in full]  # the pool alone
    perm = [3, 0, 5, 1, 4, 2]
    assert policy.sample([DOCS[i] for i in perm], K, batch_size=5, **kw) == [full[i][:K] for i in perm]
    # keys default to the document text: the same document gets the same samples wherever it sits
    twice = policy.sample([DOCS[0], DOCS[2], DOCS[0]], K, batch_size=2, **kw)
    assert twice[0] == twice[2] == full[0][:K] and twice[1] == full[2][:K]
    keyed = policy.sample([DOCS[0], DOCS[0]], K, keys=["row-a", "row-b"], **kw)
    assert keyed[0] != keyed[1]
    assert keyed[0] == policy.sample([DOCS[4], DOCS[0]], K, keys=["row-x", "row-a"], **kw)[1]
    assert policy.sample(DOCS, K, **{**kw, "seed": 4}) != [ys[:K] for ys in full]
    with pytest.raises(ValueError, match="2 documents but 1 keys"):
        policy.sample(DOCS[:2], K, keys=["a"])


def test_two_checkpoints_share_their_noise(make_policy):
    """Common random numbers: a slightly changed checkpoint, sampled with the same seed in another batch layout,
    draws (nearly) the same responses; with another seed, almost none."""
    a, b = make_policy("t5-tiny"), make_policy("t5-tiny")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
    kw = dict(max_new_tokens=6)
    sa = a.sample(DOCS, 4, batch_size=64, seed=2, **kw)
    same = np.mean([x == y for xs, ys in zip(sa, b.sample(DOCS[::-1], 4, batch_size=3, seed=2, **kw)[::-1])
                    for x, y in zip(xs, ys)])
    other = np.mean([x == y for xs, ys in zip(sa, b.sample(DOCS, 4, batch_size=64, seed=5, **kw))
                     for x, y in zip(xs, ys)])
    assert same >= 0.8 and other <= 0.2, (same, other)


def test_gumbel_max_on_given_logits_is_softmax_sampling():
    logits = torch.tensor([2.0, 0.5, float("-inf"), -1.0, 1.0, 0.0])
    n, temperature = 20000, 0.8
    sampler = GumbelSampler([noise_seed(0, "k", i) for i in range(n)], temperature, 0, 0, torch.device("cpu"))
    picks = sampler(torch.zeros(n, 0, dtype=torch.long), logits.expand(n, -1)).argmax(-1)
    counts = torch.bincount(picks, minlength=6).numpy()
    assert counts[2] == 0  # -inf (a masked token) is never drawn
    keep = counts > 0

    def expected(t):
        p = torch.softmax(logits.double() / t, -1).numpy()[keep]
        return p / p.sum() * n

    assert chisquare(counts[keep], expected(temperature)).pvalue > 1e-3
    assert chisquare(counts[keep], expected(1.0)).pvalue < 1e-6  # the test tells temperatures apart
    seeds = [noise_seed(1, "k", i) for i in range(2000)]
    top2 = GumbelSampler(seeds, 1.0, 2, 0, torch.device("cpu"))
    picks = top2(torch.zeros(len(seeds), 0, dtype=torch.long), logits.expand(len(seeds), -1)).argmax(-1)
    assert set(picks.tolist()) == {0, 4}  # the two largest logits only


def first_token_distribution(policy, document: str, temperature: float, top_k: int = 0) -> dict[str, float]:
    """Exact probability of each first-token text (tokens with the same decoded text pooled; EOS is '')."""
    logits = next_logits(policy, policy.prompt_ids([document])[0], []) / temperature
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    out: dict[str, float] = {}
    for i, p in enumerate(torch.softmax(logits, -1).tolist()):
        text = policy.tokenizer.decode([i], skip_special_tokens=True).strip()
        out[text] = out.get(text, 0.0) + p
    return out


def chi_square_pvalue(drawn: list[str], dist: dict[str, float]) -> float:
    """Bins with an expected count of at least 5, the rest pooled into one."""
    n = len(drawn)
    big = [t for t, p in dist.items() if p * n >= 5]
    obs = [sum(d == t for d in drawn) for t in big]
    exp = [dist[t] * n for t in big]
    if n - sum(obs) > 0 or n - sum(exp) > 1e-6:
        obs.append(n - sum(obs))
        exp.append(n - sum(exp))
    return chisquare(obs, exp).pvalue


def test_first_token_frequencies_match_the_model(make_policy):
    """4000 first tokens over 20 keys x 200 sample indices of one prompt, against softmax(logits/T) of the model
    (random weights: several tokens in the tens of percent, a long tail)."""
    policy = make_policy("t5-tiny")
    doc = DOCS[0]
    keys = [f"key-{i}" for i in range(20)]

    def draw(temperature, top_k=0):
        samples = policy.sample([doc] * len(keys), 200, keys=keys, temperature=temperature, top_k=top_k,
                                max_new_tokens=1, batch_size=1000, seed=0)
        return [y for ys in samples for y in ys]

    drawn = draw(0.7)
    assert chi_square_pvalue(drawn, first_token_distribution(policy, doc, 0.7)) > 1e-3
    assert chi_square_pvalue(drawn, first_token_distribution(policy, doc, 1.0)) < 1e-6  # the test has power
    cut = draw(1.0, top_k=4)
    allowed = first_token_distribution(policy, doc, 1.0, top_k=4)
    assert set(cut) <= {t for t, p in allowed.items() if p > 0}
    assert len(set(cut)) > 1 and chi_square_pvalue(cut, allowed) > 1e-3


def test_tiny_t5_trained_to_copy_reproduces_its_input(world_tokenizer_dir, tmp_path):
    """A tiny T5 fine-tuned with the repository's SFT on target = input (2-3 word strings): greedy decoding copies
    every training input, and at temperature 1 the share of exact copies matches the model's own probability of
    the copy (sample() draws from the distribution that logprobs() scores)."""
    rng = random.Random(0)
    vocab = sorted(set(WORDS))[:12]
    strings = sorted({" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 3))) for _ in range(400)})
    policy = load_policy(ModelConfig(name="shape:t5-tiny", prompt_prefix=""), tokenizer_dir=world_tokenizer_dir)
    rows = [{"document": s, "summary": s} for s in strings]
    run_sft(policy, SFTConfig(steps=600, batch_size=32, lr=3e-3, warmup=10, eval_examples=0), rows, [], tmp_path)
    docs = strings[:64]
    greedy = policy.sample(docs, 2, temperature=0, max_new_tokens=8)
    assert [g for g, _ in greedy] == docs
    sampled = policy.sample(docs, 8, temperature=1.0, max_new_tokens=8, seed=1)
    copies = np.array([[y == d for y in ys] for ys, d in zip(sampled, docs)], dtype=float)
    p_copy = policy.logprobs(docs, docs)[0].exp().numpy()
    assert copies.mean() > 0.8
    sd = np.sqrt((p_copy * (1 - p_copy)).sum() * 8) / copies.size
    assert abs(copies.mean() - p_copy.mean()) < 4 * sd + 0.01, (copies.mean(), p_copy.mean())
