"""Baseline scorer in the style of FastV: the attention the last token pays to each vision token.

Shapes: B batch, L slots.
"""

from __future__ import annotations

import torch

from .base_scorer import ScoringContext, as_logits, query_attention


class FastVScorer:
    """Baseline in the style of FastV: the attention the last token pays to each vision token.

    Computed at the pruning layer by the layer's own attention module (its norms, RoPE and scaling,
    `layer_attention.py`; heads averaged after the softmax), over all real tokens.
    """

    def __call__(self, context: ScoringContext) -> torch.Tensor:
        last = torch.full_like(context.valid[:, 0], context.valid.shape[1] - 1, dtype=torch.long)
        return as_logits(query_attention(context, last, context.valid))
