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
        logits = self.module(_gather(hidden, v_index), gather_slots(hidden, t_index), t_valid)
        return scatter_slots(logits, v_index, v_valid, hidden.shape[1]).to(context.candidates.device)


def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`gather_slots(hidden, index)`; a view, not a copy, at inference when the one row's slots are
    consecutive (a single image's tokens, on a CPU where reading the index costs nothing)."""
    if index.shape[0] == 1 and index.shape[1] and index.device.type == "cpu" and not torch.is_grad_enabled():
        first, last = int(index[0, 0]), int(index[0, -1])
        if last - first + 1 == index.shape[1]:
            return hidden[:, first : last + 1]
    return gather_slots(hidden, index)
