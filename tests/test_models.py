"""Policy interface on tiny models built from config: log-probs against a hand computation, sampling, shapes,
tokenizer round trips, save/load, and one-line errors."""
from __future__ import annotations

import pytest
import torch
from conftest import generated_texts
from transformers import AutoTokenizer, T5Config

from pipeline.config import ModelConfig
from pipeline.models import ModelError, load_policy, train_world_tokenizer

DOCS = generated_texts(5, seed=1, length=30)
DOCS[2] = "Short one."  # mixed prompt lengths -> padding in the batch
RESPONSES = ["The council said.", "", "A new bridge in riverton would cost 12 million pounds and open in may.",
             "Strike", "Police report workers plans"]


def manual_logprobs(policy, document: str, response: str) -> torch.Tensor:
    """Per-token log-probs of response + EOS, one unpadded example, straight from the model's logits."""
    tok, model = policy.tokenizer, policy.model
    prompt = policy.prompt_text(document)
    target = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        if policy.is_seq2seq:
            enc = tok(prompt, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            dec = [model.config.decoder_start_token_id] + target[:-1]
            logits = model(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([dec])).logits[0]
        else:
            p = tok(prompt)["input_ids"]
            logits = model(input_ids=torch.tensor([p + target])).logits[0, len(p) - 1: -1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(target)[:, None])[:, 0]


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
def test_logprobs_equal_manual_computation(make_policy, shape):
    policy = make_policy(shape)
    manual = [manual_logprobs(policy, d, r) for d, r in zip(DOCS, RESPONSES)]
    # batch_size 2: several sorted batches with padding on both prompt and response sides, order restored
    total, mean, n = policy.logprobs(DOCS, RESPONSES, batch_size=2)
    assert n.tolist() == [len(m) for m in manual] and n[1] == 1  # "" scores only EOS
    torch.testing.assert_close(total, torch.stack([m.sum() for m in manual]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mean, torch.stack([m.mean() for m in manual]), atol=1e-4, rtol=1e-5)
    # grad=True: same numbers, a graph, and finite gradients (left-padded rows must not leak NaNs)
    g_total, _, _ = policy.logprobs(DOCS, RESPONSES, batch_size=5, grad=True)
    assert g_total.requires_grad and not total.requires_grad and not total.is_inference()  # usable in a loss
    torch.testing.assert_close(g_total.detach(), total, atol=1e-4, rtol=1e-5)
    g_total.sum().backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("shape,attn", [("t5-tiny", None), ("llama-tiny", "sdpa"), ("llama-tiny", "eager")])
def test_shared_logprobs_equal_separate_rows(make_policy, shape, attn):
    """Chosen, rejected and a third response per document, the document encoded once (the update's and the
    reference's layout): the same numbers as one row per (document, response), and gradients to match."""
    policy = make_policy(shape)
    if attn:
        policy.model.config._attn_implementation = attn
    groups = [[RESPONSES[i], RESPONSES[(i + 1) % 5], RESPONSES[(i + 3) % 5]] for i in range(5)]
    manual = torch.stack([torch.stack([manual_logprobs(policy, d, y).sum() for y in ys])
                          for d, ys in zip(DOCS, groups)])
    shared = policy.shared_logprobs(DOCS, groups, batch_size=2)  # padded prompts and slots, order restored
    assert shared.shape == (5, 3)
    torch.testing.assert_close(shared, manual, atol=1e-4, rtol=1e-5)
    g = policy.shared_logprobs(DOCS, groups, batch_size=5, grad=True)
    g.sum().backward()
    shared_grads = [p.grad.clone() for p in policy.parameters()]
    policy.model.zero_grad()
    flat, _, _ = policy.logprobs([d for d in DOCS for _ in range(3)], [y for ys in groups for y in ys], grad=True)
    flat.sum().backward()
    for a, b in zip(shared_grads, (p.grad for p in policy.parameters())):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="lists of responses of one length"):
        policy.shared_logprobs(DOCS[:2], [["a", "b"], ["c"]])


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
def test_continuation_logprobs_are_the_tokens_after_the_prefix(make_policy, shape):
    """The log-prob of going on with the continuation from the prefix: the full response's own per-token log-probs
    from where the prefix ends, without the end of sequence (the slot diagnostic's measure)."""
    policy = make_policy(shape)
    cases = [("The council", " said."), ("", "Strike"), ("A new bridge in", " riverton would cost"),
             ("Police report", " workers plans")]
    docs = [DOCS[0], DOCS[1], DOCS[2], DOCS[4]]
    got = policy.continuation_logprobs(docs, [p for p, _ in cases], [c for _, c in cases], batch_size=3)
    for d, (p, c), g in zip(docs, cases, got):
        head = len(policy.tokenizer(p, add_special_tokens=False)["input_ids"]) if p else 0
        want = manual_logprobs(policy, d, p + c)[head:-1].sum()
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-5)
    # the chain rule: the prefix's own tokens, then the continuation's, make the whole
    whole = policy.continuation_logprobs(docs[:1], [""], ["The council said."])
    first = policy.continuation_logprobs(docs[:1], [""], ["The council"])
    torch.testing.assert_close(whole, first + got[:1], atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="token boundary"):
        policy.continuation_logprobs(docs[:1], ["The council"], [""])
    with pytest.raises(ValueError, match="1 documents, 2 prefixes"):
        policy.continuation_logprobs(docs[:1], ["a", "b"], ["c"])


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
def test_sample_shapes_determinism_and_greedy(make_policy, shape):
    policy = make_policy(shape)
    docs = DOCS[:3]
    a = policy.sample(docs, 3, max_new_tokens=8, batch_size=4, seed=7)  # 9 rows in 3 generate calls
    assert len(a) == 3 and all(len(s) == 3 and all(isinstance(x, str) for x in s) for s in a)
    assert a == policy.sample(docs, 3, max_new_tokens=8, batch_size=4, seed=7)
    assert a != policy.sample(docs, 3, max_new_tokens=8, batch_size=4, seed=8)
    assert len({x for s in a for x in s}) > 3  # random weights at temperature 1: samples differ
    greedy = policy.sample(docs, 4, temperature=0, max_new_tokens=8)
    assert all(len(s) == 4 and len(set(s)) == 1 for s in greedy)
    assert greedy == policy.sample(docs, 4, temperature=0, max_new_tokens=8, seed=3)
    assert policy.sample([], 2) == []


def test_world_tokenizer_round_trips(tmp_path):
    texts = generated_texts(200, seed=3)
    tok = train_world_tokenizer(texts, tmp_path, vocab_size=300)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert (tmp_path / "tokenizer.json").exists()
    samples = texts[:20] + ["Unseen words: Zanzibar, 3.5%, £12m -- (quoted) 'text'?\nSecond  line with  spaces. ",
                            "Police , said it 's 12 . Yes ! n't"]  # no clean-up of spaces before punctuation
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # the form every later stage uses
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text == reloaded.decode(reloaded(text)["input_ids"])
    assert tok("a b")["input_ids"] == tok("a b", add_special_tokens=False)["input_ids"]  # no specials added


def test_paper_shape_t5_small(world_tokenizer_dir):
    # with the paper's 32128-row vocabulary the shape has exactly t5-small's parameter count
    policy = load_policy(ModelConfig(name="shape:t5-small", vocab_size=32128), tokenizer_dir=world_tokenizer_dir)
    c, ref = policy.model.config, T5Config()
    for key in ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "vocab_size"):
        assert getattr(c, key) == getattr(ref, key), key
    assert policy.n_params == 60_506_624
    assert c.dropout_rate == 0.0 and c.decoder_start_token_id == c.pad_token_id == policy.tokenizer.pad_token_id


def test_shapes_take_tokenizer_ids_and_seed(make_policy):
    tiny = make_policy("t5-tiny")
    assert tiny.model.config.vocab_size == len(tiny.tokenizer) and tiny.model.config.d_model == 64
    same = make_policy("t5-tiny")
    other = make_policy("t5-tiny", init_seed=1)
    w = tiny.model.shared.weight
    assert torch.equal(w, same.model.shared.weight) and not torch.equal(w, other.model.shared.weight)


def test_save_load_round_trip(make_policy, tmp_path, world_tokenizer_dir):
    for shape, lora in [("t5-tiny", False), ("llama-tiny", True)]:
        policy = make_policy(shape, lora=lora)
        if lora:  # B starts at zero; move it so that the merged weights differ from the base model
            with torch.no_grad():
                for name, p in policy.model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.1)
        before = policy.logprobs(DOCS, RESPONSES)[0]
        path = policy.save(tmp_path / shape)
        policy.save(tmp_path / shape)  # overwriting an existing directory is atomic too
        assert (path / "config.json").exists() and list(path.glob("*.safetensors"))
        assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob("*.old-*"))
        loaded = load_policy(ModelConfig(name=str(path)))
        assert loaded.is_seq2seq == policy.is_seq2seq
        torch.testing.assert_close(loaded.logprobs(DOCS, RESPONSES)[0], before, atol=1e-4, rtol=1e-5)


def test_lora_wraps_only_adapters_trainable(make_policy):
    policy = make_policy("t5-tiny", lora=True)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert policy.n_trainable < policy.n_params


def test_one_line_errors(tmp_path, world_tokenizer_dir):
    def err(**kw) -> str:
        with pytest.raises(ModelError) as e:
            load_policy(ModelConfig(**kw), tokenizer_dir=world_tokenizer_dir)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert ("known shapes: t5-tiny, t5-micro, t5-micro-l4, t5-mini, t5-small, t5-base, t5-large, llama-tiny"
            in err(name="shape:t5-huge"))
    assert err(name="shape:t5-smal").endswith("did you mean 'shape:t5-small'?")
    (tmp_path / "empty").mkdir()
    assert err(name=str(tmp_path / "empty")) == f"model directory {tmp_path / 'empty'} has no config.json"
    assert err(name=str(tmp_path / "x.gguf")) == f"GGUF file {tmp_path / 'x.gguf'} not found"
    assert "does not exist" in err(name=str(tmp_path / "nope" / "model"))
    assert "known: gguf:smollm2" in err(name="gguf:llama70b")
    assert "smaller than the tokenizer" in err(name="shape:t5-tiny", vocab_size=10)
    assert "causal model" in err(name="shape:llama-tiny", kind="seq2seq")
    hub = err(name="no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 (conftest): fails fast, offline hint
    assert "'gguf:smollm2'" in hub and "shape:" in hub
    with pytest.raises(ModelError, match="needs the world tokenizer"):
        load_policy(ModelConfig(name="shape:t5-tiny"))
    with pytest.raises(ModelError, match="has no tokenizer.json"):
        load_policy(ModelConfig(name="shape:t5-tiny"), tokenizer_dir=tmp_path / "empty")
