import math

import pytest
import torch

from pipeline.losses import preference_loss

# Three pairs worked by hand (beta = 0.5):
#   h = (pi_w - ref_w) - (pi_l - ref_l) = [1.0, -0.5, -1.0]
#   DPO: log(1 + exp(-beta h)) = [0.474077, 0.825939, 0.974077] -> mean 0.758031
#   IPO: (h - 1/(2 beta))^2 = (h - 1)^2 = [0, 2.25, 4] -> mean 2.083333
#   XPO: DPO + alpha * log pi(y~), alpha = 0.1, log pi(y~) = [-4, -5, -6] -> 0.758031 - 0.5 = 0.258031
PI_W, PI_L = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -1.0])
REF_W, REF_L = torch.tensor([-1.5, -2.0, -2.5]), torch.tensor([-1.5, -2.5, -1.5])


@pytest.mark.parametrize("kind, expected", [("dpo", 0.758031), ("ipo", 2.083333), ("xpo", 0.258031)])
def test_losses_equal_hand_worked_values(kind, expected):
    loss, stats = preference_loss(kind, PI_W, PI_L, REF_W, REF_L, beta=0.5, xpo_alpha=0.1,
                                  pi_explore=torch.tensor([-4.0, -5.0, -6.0]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["margin"] == pytest.approx((1.0 - 0.5 - 1.0) / 3)
    assert stats["accuracy"] == pytest.approx(1 / 3)


def test_nll_term_adds_the_chosen_per_token_nll():
    # tokens_w = [2, 4, 3]: -pi_w / tokens = [0.5, 0.5, 1.0] -> mean 2/3; times alpha = 1.5 -> +1.0
    tokens = torch.tensor([2.0, 4.0, 3.0])
    for kind, base in (("dpo", 0.758031), ("ipo", 2.083333)):
        loss, _ = preference_loss(kind, PI_W, PI_L, REF_W, REF_L, beta=0.5, nll_alpha=1.5, tokens_w=tokens)
        assert loss.item() == pytest.approx(base + 1.0, abs=1e-6)
    pi_w = PI_W.clone().requires_grad_()
    preference_loss("dpo", pi_w, PI_L, REF_W, REF_L, beta=0.5, nll_alpha=1.0, tokens_w=tokens)[0].backward()
    h = torch.tensor([1.0, -0.5, -1.0])
    assert torch.allclose(pi_w.grad, (-0.5 * torch.sigmoid(-0.5 * h) - 1.0 / tokens) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="nll_alpha needs tokens_w"):
        preference_loss("dpo", PI_W, PI_L, REF_W, REF_L, beta=0.5, nll_alpha=1.0)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pi_w = PI_W.clone().requires_grad_()
    pi_l = PI_L.clone().requires_grad_()
    loss, _ = preference_loss("dpo", pi_w, pi_l, REF_W, REF_L, beta=0.5)
    loss.backward()
    assert (pi_w.grad < 0).all() and (pi_l.grad > 0).all()  # descent raises log pi(y_w), lowers log pi(y_l)
    # d/dh of -log sigma(beta h) = -beta sigma(-beta h); per pair /3 for the mean
    h = torch.tensor([1.0, -0.5, -1.0])
    assert torch.allclose(pi_w.grad, -0.5 * torch.sigmoid(-0.5 * h) / 3, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unknown loss 'kto'"):
        preference_loss("kto", PI_W, PI_L, REF_W, REF_L, beta=0.1)
    with pytest.raises(ValueError, match="xpo needs pi_explore"):
        preference_loss("xpo", PI_W, PI_L, REF_W, REF_L, beta=0.1)
    assert math.isfinite(preference_loss("ipo", PI_W, PI_L, REF_W, REF_L, beta=0.1)[0].item())
