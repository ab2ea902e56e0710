"""Baseline scorer: a seeded random subset of the vision tokens, blind to content.

Shapes: B batch, L slots.
"""

from __future__ import annotations

import torch

from .base_scorer import ScoringContext, as_logits


class RandomScorer:
    """Baseline: keep a random subset, blind to content.

    The score of a token is a seeded random number drawn for its ORIGINAL position, so the choice
    is reproducible and the same whether tokens are removed or masked, batched or not.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._table = torch.empty(0)

    def __call__(self, context: ScoringContext) -> torch.Tensor:
        needed = int(context.positions.max()) + 1
        if self._table.numel() < needed:
            generator = torch.Generator().manual_seed(self.seed)
            self._table = torch.rand(max(needed, 4096), generator=generator)
        table = self._table.to(context.hidden.device)
        return as_logits(table[context.positions.clamp(min=0)])
