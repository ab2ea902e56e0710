"""Baseline scorer: a spatially uniform subsample of the vision tokens. Shapes: B batch, L slots."""

from __future__ import annotations

import torch

from .base_scorer import ScoringContext, as_logits


class UniformScorer:
    """Baseline: a spatially uniform subsample, the `k` candidates closest to evenly spaced ranks.

    Candidates are ordered by position (row-major over the image grid), so evenly spaced ranks
    spread the kept tokens over the image.
    """

    def __call__(self, context: ScoringContext) -> torch.Tensor:
        candidates = context.candidates
        rank = (torch.cumsum(candidates.long(), dim=1) - 1).float()  # (B, L): rank among the candidates
        n = candidates.sum(dim=1, keepdim=True).clamp(min=1).float()
        step = n / context.keep[:, None].clamp(min=1).float()  # ranks per kept token
        # split the ranks into k equal bins and pick, in each, the rank nearest to the bin's centre
        target = torch.floor((torch.floor(rank / step) + 0.5) * step)
        return as_logits((rank == target).float() - 1e-3 * (rank - target).abs() / n)
