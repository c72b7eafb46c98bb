"""policy.autocast: bfloat16 mixed precision for every forward pass, float32 weights and optimizer state."""
import pytest
import torch

from pipeline.config import ConfigError, load_recipe
from tests.test_models import DOCS, RESPONSES

SHAPES = ["t5-tiny", "llama-tiny"]


def _pair(make_policy, shape):
    """The same random weights twice: float32 throughout, and under bfloat16 autocast."""
    full = make_policy(shape)
    mixed = make_policy(shape, autocast="bfloat16")
    mixed.model.load_state_dict(full.model.state_dict())
    return full, mixed


@pytest.mark.parametrize("shape", SHAPES)
def test_logprobs_under_autocast_track_float32_within_bfloat16_precision(make_policy, shape):
    full, mixed = _pair(make_policy, shape)
    want, _, n = full.logprobs(DOCS, RESPONSES, batch_size=2)
    got, _, n_mixed = mixed.logprobs(DOCS, RESPONSES, batch_size=2)
    assert got.dtype == torch.float32 and n_mixed.tolist() == n.tolist()
    per_token = (got - want).abs() / n
    # bfloat16 keeps 8 bits of mantissa: the matmuls really ran in it (not equal), and stay within its precision
    assert per_token.max() > 0
    assert per_token.max() < 0.02, per_token
    # the update's layout (document encoded once, 3 responses) agrees with the plain rows under autocast too
    groups = [[RESPONSES[i], RESPONSES[(i + 1) % 5], RESPONSES[(i + 3) % 5]] for i in range(5)]
    shared = mixed.shared_logprobs(DOCS, groups, batch_size=2)
    flat, _, _ = mixed.logprobs([d for d in DOCS for _ in range(3)], [y for ys in groups for y in ys], batch_size=2)
    torch.testing.assert_close(shared, flat.view(5, 3), atol=0.05, rtol=0.01)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_training_step_under_autocast_keeps_float32_weights_and_moves_them(make_policy, shape):
    _, policy = _pair(make_policy, shape)
    policy.model.train()
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(3):
        total, _, count = policy.logprobs(DOCS, RESPONSES, batch_size=5, grad=True)
        loss = -total.sum() / count.sum()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in policy.parameters() if p.grad is not None)
        opt.step()
    after = policy.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the loss went down: the bfloat16 gradients point the right way
    total, _, count = policy.logprobs(DOCS, RESPONSES, batch_size=5)
    assert -total.sum() / count.sum() < loss.item()


@pytest.mark.parametrize("shape", SHAPES)
def test_sampling_under_autocast_is_deterministic(make_policy, shape):
    _, policy = _pair(make_policy, shape)
    a = policy.sample(DOCS[:3], 3, max_new_tokens=8, batch_size=4, seed=7)
    assert a == policy.sample(DOCS[:3], 3, max_new_tokens=8, batch_size=4, seed=7)
    assert len({x for s in a for x in s}) > 3


def test_autocast_is_a_checked_option(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npolicy: {autocast: float16}\n")
    with pytest.raises(ConfigError, match="'policy.autocast' must be one of none, bfloat16"):
        load_recipe(recipe)
    recipe.write_text("name: r\npolicy: {autocast: bfloat16}\n")
    assert load_recipe(recipe).policy.autocast == "bfloat16"
