"""Turning keep/drop logits into decisions (top-k at inference, hard Gumbel-Softmax in training),
and the training losses on them.

Shapes: B batch, L slots of the current sequence. Candidates are the vision slots still alive;
everything else is never selected here (the caller keeps language tokens unconditionally).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def keep_counts(num_vision: torch.Tensor, ratio: float) -> torch.Tensor:
    """Number of vision tokens to keep per sample: round-half-up(ratio * n), at least 1 if n > 0.

    Args:
        num_vision: (B,) long, each sample's ORIGINAL number of vision tokens.
        ratio: keep ratio relative to that original count.

    Returns:
        (B,) long. With n = 576: 0.5 -> 288, 0.3 -> 173, 0.1 -> 58, as in the paper.
    """
    k = torch.floor(num_vision.double() * ratio + 0.5 + 1e-9).long()
    return torch.where(num_vision > 0, k.clamp(min=1), torch.zeros_like(k))


def select_top_k(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep the `k[b]` highest-scoring candidates of each row.

    Ties are broken by slot order (stable sort), so the choice is deterministic.

    Args:
        scores: (B, L) float keep scores.
        candidates: (B, L) bool, the slots that may be kept (alive vision tokens).
        k: (B,) long, how many to keep per row (clamped to the number of candidates).

    Returns:
        (B, L) bool, True for the kept candidates.
    """
    masked = scores.float().masked_fill(~candidates, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (B, L)
    k = torch.minimum(k, candidates.sum(dim=1))
    rank_ok = torch.arange(scores.shape[1], device=scores.device)[None, :] < k[:, None]  # (B, L)
    kept = torch.zeros_like(candidates)
    return kept.scatter(1, order, rank_ok) & candidates


def gumbel_keep(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hard keep decisions with a straight-through gradient.

    Args:
        logits: (B, L, 2) float (keep, drop) logits.
        temperature: Gumbel-Softmax temperature.

    Returns:
        (B, L) float in {0, 1} (1 = keep) whose gradient is that of the soft sample.
    """
    return F.gumbel_softmax(logits.float(), tau=temperature, hard=True, dim=-1)[..., 0]


def gumbel_top_k(
    scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Keep exactly the inference budget in training: Gumbel-top-k with a straight-through gradient.

    Perturbs the scores with Gumbel noise (sampling `k` tokens without replacement in proportion to
    softmax(scores)), keeps the `k[b]` highest, and passes the gradient of
    sigmoid((perturbed - threshold) / temperature), the threshold lying halfway between the last kept
    and the first dropped perturbed score of the row.

    Args:
        scores: (B, L) float keep scores.
        candidates: (B, L) bool, the slots that may be kept.
        k: (B,) long, how many to keep per row.
        temperature: softness of the straight-through surrogate.

    Returns:
        (B, L) float in {0, 1} (1 = keep, 0 outside the candidates) whose gradient is the surrogate's.
    """
    uniform = torch.rand_like(scores, dtype=torch.float32).clamp(1e-10, 1.0 - 1e-7)
    perturbed = scores.float() - torch.log(-torch.log(uniform))
    hard = select_top_k(perturbed, candidates, k)  # (B, L) bool
    masked = perturbed.masked_fill(~candidates, float("-inf"))
    lowest_kept = perturbed.masked_fill(~hard, float("inf")).amin(dim=1, keepdim=True)
    highest_dropped = masked.masked_fill(hard, float("-inf")).amax(dim=1, keepdim=True)
    threshold = torch.where(
        torch.isfinite(highest_dropped) & torch.isfinite(lowest_kept),
        (lowest_kept + highest_dropped) / 2,
        torch.where(torch.isfinite(lowest_kept), lowest_kept - 1.0, highest_dropped + 1.0),
    ).detach()
    soft = torch.sigmoid((perturbed - threshold) / temperature) * candidates
    return hard.float() + soft - soft.detach()


def ratio_loss(decisions: list[torch.Tensor], vision: torch.Tensor, ratios: list[float]) -> torch.Tensor:
    """Keep-ratio loss (1/S) sum_s mean_b (rho_s - mean_i D_s,i)^2 over samples with vision tokens.

    Args:
        decisions: S tensors (B, L), the cumulative keep decision of each module (0 for non-vision).
        vision: (B, L) bool, the original vision slots.
        ratios: S target keep ratios relative to the original vision-token count.

    Returns:
        A scalar float32 tensor (zero if no sample has vision tokens).
    """
    counts = vision.sum(dim=1)  # (B,)
    has_vision = counts > 0
    if not bool(has_vision.any()):
        return decisions[0].new_zeros((), dtype=torch.float32)
    losses = []
    for d, rho in zip(decisions, ratios):
        realised = (d.float() * vision).sum(dim=1)[has_vision] / counts[has_vision]
        losses.append(((rho - realised) ** 2).mean())
    return torch.stack(losses).mean()


def attention_rank_loss(
    scores: torch.Tensor, attention: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """Listwise loss mean_b KL(a_b || softmax(s_b)) over each row's candidates.

    Args:
        scores: (B, L) float keep scores of a module (the gradient flows into these).
        attention: (B, L) float non-negative target weights (renormalised over the candidates; no gradient).
        candidates: (B, L) bool, the slots the module ranks.

    Returns:
        A scalar float32 tensor, 0 when softmax(scores) equals the normalised attention (zero if no row
        has candidates).
    """
    rows = candidates.any(dim=1)
    if not bool(rows.any()):
        return scores.new_zeros((), dtype=torch.float32)
    target = attention.detach().float().masked_fill(~candidates, 0.0)
    target = target / target.sum(dim=1, keepdim=True).clamp(min=1e-12)
    log_q = torch.log_softmax(scores.float().masked_fill(~candidates, float("-inf")), dim=1)
    log_q = log_q.masked_fill(~candidates, 0.0)
    kl = (target * (torch.log(target.clamp(min=1e-12)) - log_q)).sum(dim=1)  # (B,)
    return kl[rows].mean()
