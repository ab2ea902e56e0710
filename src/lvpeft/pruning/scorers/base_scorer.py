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

    Computed from the layer's own query/key projections and RoPE (a Llama-style attention module).

    Args:
        context: the scoring context of the module (its `layer`, `hidden` and RoPE are used).
        query: (B,) long, the slot whose attention is read, per row.
        keys: (B, L) bool, the slots it may attend to (the softmax runs over these only).

    Returns:
        (B, L) float32 attention probabilities (0 outside `keys`), each row summing to 1.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layer, hidden = context.layer, context.hidden
    attn = layer.self_attn
    b, length, _ = hidden.shape
    rows = torch.arange(b, device=hidden.device)
    normed = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    q = attn.q_proj(normed[rows, query][:, None]).view(b, 1, -1, head_dim).transpose(1, 2)  # (B, h, 1, hd)
    k = attn.k_proj(normed).view(b, length, -1, head_dim).transpose(1, 2)  # (B, h_kv, L, hd)
    if context.position_embeddings is not None:
        cos, sin = (t.expand(b, -1, -1) for t in context.position_embeddings)  # (B, L, hd)
        q, _ = apply_rotary_pos_emb(q, q, cos[rows, query][:, None], sin[rows, query][:, None])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA -> (B, h, L, hd)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * head_dim**-0.5  # (B, h, L)
    logits = logits.masked_fill(~keys[:, None, :], float("-inf"))
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)  # (B, L)
