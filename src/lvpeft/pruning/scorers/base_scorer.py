"""The scorer interface: who decides which vision tokens are worth keeping.

A scorer looks at the tokens entering decoder layer `p_s` (a `ScoringContext`) and returns
keep/drop logits for every slot; only the candidate slots (alive vision tokens) are read, and the
pruning machinery keeps the top `k` of each sample by `keep - drop`. The machinery in `lvpeft.pruning.hooks`
is the same whatever the scorer, so the learned LVPruning module and the training-free baselines
(one per file beside this one) differ only here, at the same positions and the same token budget.

Shapes: B batch, L slots, d hidden size, h heads, hd head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..layer_attention import attention_states


@dataclass
class ScoringContext:
    """What a scorer may look at before decoder layer `p_s`.

    Attributes:
        hidden: (B, L, d) hidden states entering the layer.
        candidates: (B, L) bool, alive vision tokens (the ones to rank).
        language: (B, L) bool, real non-vision tokens.
        valid: (B, L) bool, real tokens (not padding).
        positions: (B, L) long original positions (-1 on padding slots).
        keep: (B,) long, how many candidates each sample keeps at this module.
        layer: the decoder layer about to run (for attention-based baselines).
        position_embeddings: the RoPE (cos, sin), each (B, L, hd), of the current slots, if the decoder
            passes them to its layers.
    """

    hidden: torch.Tensor
    candidates: torch.Tensor
    language: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    keep: torch.Tensor
    layer: nn.Module
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None


class Scorer(Protocol):
    """Maps a `ScoringContext` to (keep, drop) logits, (B, L, 2) float32."""

    def __call__(self, context: ScoringContext) -> torch.Tensor: ...


def as_logits(scores: torch.Tensor) -> torch.Tensor:
    """(B, L) keep scores -> (B, L, 2) logits (keep = score, drop = 0)."""
    scores = scores.float()
    return torch.stack([scores, torch.zeros_like(scores)], dim=-1)


def query_attention(context: ScoringContext, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The attention one token per row pays to the others at the pruning layer, heads averaged.

    Computed by the layer's own attention module (`layer_attention.attention_states`: its norms, RoPE,
    scaling and soft cap, whatever the family).

    Args:
        context: the scoring context of the module (its `layer`, `hidden` and RoPE are used).
        query: (B,) long, the slot whose attention is read, per row.
        keys: (B, L) bool, the slots it may attend to (the softmax runs over these only).

    Returns:
        (B, L) float32 attention probabilities (0 outside `keys`), each row summing to 1.
    """
    states = attention_states(context.layer, context.hidden, context.position_embeddings)
    logits = states.logits(query).squeeze(2)  # (B, h, L)
    logits = logits.masked_fill(~keys[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)  # (B, L)
