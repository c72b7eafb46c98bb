"""Preference losses on sequence log-ratios.

h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]   (summed token log-probs)
- DPO (Rafailov et al. 2023): −log σ(β h)
- IPO (Azar et al. 2023):     (h − 1/(2β))²
- XPO (Xie et al. 2024, "Exploratory Preference Optimization", Algorithm 1): the DPO loss plus the published
  exploration bonus α·log π(ỹ|x), with ỹ a response drawn from the reference policy. Minimising it pushes
  probability mass away from what π_ref already produces (optimism). In our loop the reference is the
  previous iterate, which is also the sampling policy, so ỹ is an untransferred online sample of the same
  prompt (see online.py). The TPO reference code is known to use a different version of this term (docs/algorithms.md
  §7); we could not inspect it offline, so we implement the published term, which is also what TRL's XPO
  trainer computes (α times the policy's log-prob of reference-model completions).
- An optional NLL term on the chosen response, nll_alpha · (−log π(y_w) / |y_w|) (per token), added to any of the
  three. DPO alone can raise the margin h by pushing both log-probs down, moving mass to responses neither pair
  contains ("likelihood displacement"); the NLL term keeps the chosen response likely. Published as RPO (Pang et al.
  2024, "Iterative Reasoning Preference Optimization", α = 1); TRL calls it `rpo_alpha`. Off (0) by default, so the
  paper's losses are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_loss(kind: str, pi_w, pi_l, ref_w, ref_l, beta: float, xpo_alpha: float = 0.0,
                    pi_explore: torch.Tensor | None = None, nll_alpha: float = 0.0,
                    tokens_w: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    h = (pi_w - ref_w) - (pi_l - ref_l)
    if kind == "dpo" or kind == "xpo":
        losses = -F.logsigmoid(beta * h)
        if kind == "xpo":
            if pi_explore is None:
                raise ValueError("xpo needs pi_explore: log π of a reference-policy sample per pair")
            losses = losses + xpo_alpha * pi_explore
    elif kind == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss '{kind}'; known: dpo, ipo, xpo")
    if nll_alpha:
        if tokens_w is None:
            raise ValueError("nll_alpha needs tokens_w: the chosen responses' token counts")
        losses = losses + nll_alpha * (-pi_w / tokens_w.clamp(min=1))
    stats = {"margin": h.detach().mean().item(), "accuracy": (h.detach() > 0).float().mean().item()}
    return losses.mean(), stats
