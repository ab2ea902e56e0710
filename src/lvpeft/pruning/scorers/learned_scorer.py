"""The learned scorer: LVPruning's decision module, applied to the packed vision and language tokens.

Shapes: B batch, L slots, Nv vision slots, T language slots, d hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tokens import gather_slots, pack, scatter_slots
from .base_scorer import ScoringContext


class LearnedScorer:
    """LVPruning's scorer: the decision module's cross-attention from vision to language tokens.

    Args:
        module: the adapter's `lvpeft.tuner.layer.DecisionModule` (or any module mapping vision
            (B, Nv, d), language (B, T, d) and a (B, T) bool language mask to (B, Nv, 2) logits).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, context: ScoringContext) -> torch.Tensor:
        """Pack candidates and language tokens per row, score, and scatter back to slots.

        The logits come back on the device of the pruning state (`context.candidates`), wherever the
        hidden states and the module are.
        """
        hidden = context.hidden
        v_index, v_valid = pack(context.candidates)  # (B, Nv)
        t_index, t_valid = pack(context.language)  # (B, T)
        logits = self.module(gather_slots(hidden, v_index), gather_slots(hidden, t_index), t_valid)
        return scatter_slots(logits, v_index, v_valid, hidden.shape[1]).to(context.candidates.device)
