"""Parity with TRL: our DPO/IPO loss on a causal batch equals TRL's DPOTrainer loss on the same batch.

TRL 1.16 has no standalone DPO loss function; the loss lives in `DPOTrainer._compute_loss`, which runs the policy
and the reference model itself (through the fused LM head `add_fused_lm_head` patches onto each model) on a batch
built by TRL's own pipeline: `_prepare_dataset` tokenises `prompt` and `prompt + chosen + eos_token`, and
`DataCollatorForPreference` right-pads [chosen rows; rejected rows] with a `completion_mask`. So this test builds a
real `DPOTrainer` (offline, on the CPU) from a 3-example text dataset and checks, on one causal batch:

1. tokenisation: TRL's prompt/completion ids equal `Policy.prompt_ids` / `Policy.response_ids` (response + EOS);
2. DPO: TRL's `compute_loss` equals `preference_loss("dpo", ...)` on `Policy.logprobs` (policy and a reference
   model with a different random init) to 1e-5, and the gradients w.r.t. every policy parameter agree;
3. IPO: TRL divides each log-ratio by its completion length before the square; ours (as the spec says) uses
   summed log-ratios. Applying TRL's per-token normalisation by hand to our inputs reproduces TRL's loss exactly,
   and the two conventions are asserted to differ on this batch so the difference stays documented.

Both sides get their own copy of the weights: TRL patches `forward` of the models it is given.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import generated_texts
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from pipeline.config import ModelConfig
from pipeline.losses import preference_loss
from pipeline.models import load_policy

# raised inside TRL's own disable_gradient_checkpointing helper under transformers 5, not by anything here
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

BETA = 0.1
DOCS = generated_texts(3, seed=11, length=20)
CHOSEN = ["The council said the bridge would open in may.", "Police announced plans.",
          "Workers strike over school report, minister said on monday."]
REJECTED = ["A river.", "The mayor said 300 homes in riverton would cost 12 million pounds.", "Bridge bridge."]


def _sharpen(model: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Random-init tiny models are near-uniform (every token ~ -log V), which would leave the loss ~ log 2 for any
    implementation. Larger random weights make per-token log-probs vary, so the comparison has teeth."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def models(world_tokenizer_dir):
    policy = load_policy(ModelConfig(name="shape:llama-tiny", init_seed=0), tokenizer_dir=world_tokenizer_dir)
    ref = load_policy(ModelConfig(name="shape:llama-tiny", init_seed=1), tokenizer_dir=world_tokenizer_dir)
    _sharpen(policy.model, 100)
    _sharpen(ref.model, 101)
    assert not policy.is_seq2seq and not policy.tokenizer.chat_template
    return policy, ref


def _trainer(policy, ref, loss_type: str, out_dir) -> DPOTrainer:
    # TRL concatenates prompt + completion as text. Our responses are tokenised on their own (every word, the first
    # too, starts with the Metaspace '▁'), i.e. they begin a new word after the prompt: the text is prompt + " " +
    # response. (Without the space, "summary:The" would tokenise "The" without '▁' and the ids would differ.)
    data = Dataset.from_dict({"prompt": [policy.prompt_text(d) for d in DOCS],
                              "chosen": [" " + c for c in CHOSEN], "rejected": [" " + r for r in REJECTED]})
    args = DPOConfig(output_dir=str(out_dir), beta=BETA, loss_type=[loss_type], bf16=False, fp16=False,
                     activation_checkpointing=False, report_to=[], use_cpu=True, per_device_train_batch_size=3,
                     max_length=None, precompute_ref_log_probs=False, save_strategy="no", seed=0)
    # (transformers 5 renamed gradient_checkpointing to activation_checkpointing; the old name still mirrors it)
    assert args.gradient_checkpointing is False
    return DPOTrainer(model=copy.deepcopy(policy.model), ref_model=copy.deepcopy(ref.model), args=args,
                      train_dataset=data, processing_class=policy.tokenizer)


def _trl_loss_and_grads(trainer: DPOTrainer):
    examples = [trainer.train_dataset[i] for i in range(len(DOCS))]
    batch = trainer.data_collator(examples)
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, batch, examples


def _our_logprobs(policy, ref, grad: bool):
    pi_w, pi_w_mean, n_w = policy.logprobs(DOCS, CHOSEN, grad=grad)
    pi_l, pi_l_mean, n_l = policy.logprobs(DOCS, REJECTED, grad=grad)
    ref_w, _, _ = ref.logprobs(DOCS, CHOSEN)
    ref_l, _, _ = ref.logprobs(DOCS, REJECTED)
    return pi_w, pi_l, ref_w, ref_l, n_w, n_l


def test_trl_tokenisation_matches_policy(models, tmp_path):
    policy, ref = models
    trainer = _trainer(policy, ref, "sigmoid", tmp_path)
    ds = trainer.train_dataset
    assert ds["prompt_ids"] == policy.prompt_ids(DOCS)
    assert ds["chosen_ids"] == policy.response_ids(CHOSEN)
    assert ds["rejected_ids"] == policy.response_ids(REJECTED)
    assert all(ids[-1] == policy.eos_id for ids in list(ds["chosen_ids"]) + list(ds["rejected_ids"]))

    batch = trainer.data_collator([ds[i] for i in range(len(DOCS))])
    rows = [p + c for p, c in zip(policy.prompt_ids(DOCS), policy.response_ids(CHOSEN))]
    rows += [p + r for p, r in zip(policy.prompt_ids(DOCS), policy.response_ids(REJECTED))]
    for i, row in enumerate(rows):  # right-padded [chosen; rejected], completion_mask marks response + EOS
        assert batch["input_ids"][i, : len(row)].tolist() == row
        assert batch["attention_mask"][i].sum().item() == len(row)
    n_resp = [len(t) for t in policy.response_ids(CHOSEN) + policy.response_ids(REJECTED)]
    assert batch["completion_mask"].sum(1).tolist() == n_resp


def test_dpo_loss_and_gradients_match_trl(models, tmp_path):
    policy, ref = models
    trainer = _trainer(policy, ref, "sigmoid", tmp_path)
    trl_loss, trl_grads, _, _ = _trl_loss_and_grads(trainer)

    policy.model.zero_grad(set_to_none=True)
    pi_w, pi_l, ref_w, ref_l, _, _ = _our_logprobs(policy, ref, grad=True)
    ours, stats = preference_loss("dpo", pi_w, pi_l, ref_w, ref_l, BETA)
    ours.backward()

    # TRL's own batch-mean log-probs and reward margin (logged as metrics) equal ours too
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    assert metrics["logps/chosen"][-1] == pytest.approx(pi_w.mean().item(), abs=1e-4)
    assert metrics["logps/rejected"][-1] == pytest.approx(pi_l.mean().item(), abs=1e-4)
    assert metrics["rewards/margins"][-1] == pytest.approx(BETA * stats["margin"], abs=1e-5)
    # the batch is not degenerate: the margins are far from 0, so the loss is far from log 2
    h = (pi_w - ref_w) - (pi_l - ref_l)
    assert h.abs().min().item() > 0.5 and abs(ours.item() - math.log(2)) > 0.01
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-5)

    ours_grads = {n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None}
    assert ours_grads.keys() == trl_grads.keys() and len(ours_grads) > 0
    for name, g in ours_grads.items():
        torch.testing.assert_close(g, trl_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    policy.model.zero_grad(set_to_none=True)


def test_ipo_matches_trl_with_length_normalisation(models, tmp_path):
    """TRL's IPO: ((Δ_w / |y_w| − Δ_l / |y_l|) − 1/(2β))², |y| = completion tokens (response + EOS); ours (spec):
    ((Δ_w − Δ_l) − 1/(2β))² on summed log-ratios. Feeding ours per-token means reproduces TRL's exactly."""
    policy, ref = models
    trainer = _trainer(policy, ref, "ipo", tmp_path)
    trl_loss, trl_grads, _, _ = _trl_loss_and_grads(trainer)

    policy.model.zero_grad(set_to_none=True)
    pi_w, pi_l, ref_w, ref_l, n_w, n_l = _our_logprobs(policy, ref, grad=True)
    normalised, _ = preference_loss("ipo", pi_w / n_w, pi_l / n_l, ref_w / n_w, ref_l / n_l, BETA)
    summed, _ = preference_loss("ipo", pi_w.detach(), pi_l.detach(), ref_w, ref_l, BETA)
    assert normalised.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-5)
    assert abs(summed.item() - trl_loss.item()) > 1e-2  # the documented convention difference is real here

    normalised.backward()
    for name, p in policy.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, trl_grads[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    policy.model.zero_grad(set_to_none=True)
