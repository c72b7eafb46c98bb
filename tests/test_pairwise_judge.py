"""Pairwise LLM judge: both orders, position-bias ties, consistent preferences, failures, answer parsing, and
shared-prefix greedy decoding equal to plain `generate` on a tiny causal model."""
from __future__ import annotations

import re

import pytest
import torch

from reward_sources import Context, build_judge
from reward_sources.pairwise_llm import combine, parse_choice

ROWS = [{"id": "d1", "document": "The council approved 300 new homes in Riverton on Monday."},
        {"id": "d2", "document": "Police said workers announced a strike at the port."}]
A = ["The council approved 300 new homes in Riverton.", "Workers announced a strike."]
B = ["Homes.", "Police said workers at the port announced on Friday a strike over pay and hours."]
_SUMMARY = re.compile(r"Summary A: (.*)\nSummary B: (.*)\n")


class Fake:
    """A scripted judge LLM that records the prompts it is given."""

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def __call__(self, prompts):
        self.prompts += prompts
        return [self.answer(p) for p in prompts]


def judge_with(fake):
    return build_judge("pairwise_llm", {}, Context(extra={"generate": fake}))


def test_always_a_is_position_bias_so_every_pair_ties():
    fake = Fake(lambda p: "A")
    judge = judge_with(fake)
    assert judge.kind == "pairwise" and judge.name.startswith("pairwise_llm")
    assert judge.compare(ROWS, A, B, seed=0) == [0.5, 0.5]
    # it was asked in both orders: (a, b) then (b, a), for each row
    shown = [_SUMMARY.search(p).groups() for p in fake.prompts]
    assert shown == [(A[0], B[0]), (A[1], B[1]), (B[0], A[0]), (B[1], A[1])]
    assert all(r["document"] in p for r, p in zip(ROWS * 2, fake.prompts))
    assert judge.last_raw == [{"id": "d1", "ab": "A", "ba": "A"}, {"id": "d2", "ab": "A", "ba": "A"}]


def test_consistent_judge_gives_hard_preferences():
    def longer(prompt):  # prefers the longer summary, whatever its position
        first, second = _SUMMARY.search(prompt).groups()
        return "Summary A" if len(first) > len(second) else "b."

    judge = judge_with(Fake(longer))
    assert judge.compare(ROWS, A, B, seed=0) == [1.0, 0.0]  # row 1: a is longer; row 2: b is longer
    assert judge.compare(ROWS, B, A, seed=0) == [0.0, 1.0]


def test_gibberish_is_a_failure_not_a_tie():
    judge = judge_with(Fake(lambda p: "I cannot decide, both are fine"))
    assert judge.compare(ROWS, A, B, seed=0) == [None, None]
    assert judge.last_raw[0]["ab"] == "I cannot decide, both are fine"
    # one unparseable order is enough to fail the comparison
    flaky = Fake(lambda p: "A" if _SUMMARY.search(p).group(1) == A[0] else "???")
    assert judge_with(flaky).compare(ROWS[:1], A[:1], B[:1], seed=0) == [None]


@pytest.mark.parametrize("text,choice", [
    ("A", "A"), ("b", "B"), ("B.", "B"), ("Summary A", "A"), ("summary b is better", "B"), ("**A**", "A"),
    ("(B)", "B"), ("Answer: A", "A"), ("The answer is B", "B"), (" a\n", "A"), ("A better summary is B", "B"),
    ("Both", None), ("", None), (None, None), ("I think neither", None), ("Absolutely", None),
])
def test_parse_choice(text, choice):
    assert parse_choice(text) == choice


def test_combine():
    assert combine("A", "B") == 1.0 and combine("B", "A") == 0.0
    assert combine("A", "A") == 0.5 and combine("B", "B") == 0.5
    assert combine(None, "A") is None and combine("A", None) is None


def test_errors():
    with pytest.raises(ValueError, match="unknown option 'temperature'"):
        build_judge("pairwise_llm", {"temperature": 0.7}, Context(extra={"generate": Fake(lambda p: "A")}))
    judge = judge_with(Fake(lambda p: "A"))
    with pytest.raises(ValueError, match="2 rows, 1 a-responses"):
        judge.compare(ROWS, A[:1], B, seed=0)
    short = build_judge("pairwise_llm", {}, Context(extra={"generate": lambda prompts: ["A"]}))
    with pytest.raises(ValueError, match="returned 1 answers for 4 prompts"):
        short.compare(ROWS, A, B, seed=0)


def test_shared_prefix_greedy_equals_generate(make_policy):
    """The KV-cache-sharing decoder gives exactly what plain greedy generate() gives, prompt by prompt."""
    from reward_sources.pairwise_llm import SharedPrefixGenerator, prompt_parts

    policy = make_policy("llama-tiny")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights: greedy tokens then depend on every position
        for p in policy.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    decoder = SharedPrefixGenerator(policy, max_new_tokens=5, batch_size=3)
    parts = [prompt_parts(ROWS[0]["document"], x, y, 400) for x, y in
             [(A[0], B[0]), (B[0], A[0]), (A[0], "Council."), ("Homes in Riverton.", B[0])]]
    parts.append(prompt_parts(ROWS[1]["document"], A[1], B[1], 400))  # a second prefix group
    got = decoder(parts)
    for (prefix, suffix), text in zip(parts, got):
        pre, suf = decoder._split_ids(prefix, suffix)
        ids = torch.tensor([pre + suf])
        out = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=5, pad_token_id=policy.pad_id, eos_token_id=policy.eos_id)
        assert text == policy.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert len(set(got)) > 1  # the check is not vacuous: different prompts, different answers


def test_model_backed_judge_end_to_end(make_policy, tmp_path):
    """params.model loads through pipeline.models; answers are recorded raw and parsed (here: failures)."""
    policy = make_policy("llama-tiny")
    path = policy.save(tmp_path / "judge")
    judge = build_judge("pairwise_llm", {"model": str(path), "max_new_tokens": 2})
    out = judge.compare(ROWS, A, B, seed=0)
    assert len(out) == 2 and len(judge.last_raw) == 2
    # a random model babbles: whatever it said is kept raw, and the outcome follows the parsing rules
    for value, raw in zip(out, judge.last_raw):
        assert value == combine(parse_choice(raw["ab"]), parse_choice(raw["ba"]))
