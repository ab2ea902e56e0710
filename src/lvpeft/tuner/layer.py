"""The decision module of LVPruning and the PEFT layer that holds it.

A decision module looks at the vision tokens still alive after decoder layer `l` and, through
cross-attention to the language tokens, predicts two logits (keep, drop) per vision token
(METHOD.md, "The decision module"). Shapes: B batch, Nv vision slots, T language slots,
d the language model's hidden size, C the module's inner width.

Where the paper is silent we chose, and say so here:
- attention heads use the usual per-head scaling 1/sqrt(C / heads), no output projection;
- the FFN (LayerNorm -> Linear(C, mult*C) -> SiLU -> Linear(mult*C, C) -> LayerNorm) is added to
  its input as a residual, so a block can pass its attention output through unchanged;
- no dropout; PyTorch's default Linear initialisation, except the keep/drop head, which starts at
  zero so every token starts at p(keep) = 0.5 (a neutral start, like LoRA's zero B matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

PAPER_PRUNER_DIM = "paper"
"""`pruner_dim` value for the paper's full-width modules (C = d)."""
LIGHT_PRUNER_MIN_DIM = 64
"""Narrowest default module width (`default_pruner_dim`)."""


def default_pruner_dim(hidden_size: int, heads: int = 8) -> int:
    """The light default module width C for a language model of width `hidden_size` (d).

    C = d / 8, at least 64 and at most d, rounded down to a multiple of `heads`: 512 for
    LLaVA-1.5-7B (d = 4096), where the three modules then cost 0.13 % of a prefill's FLOPs (the
    paper's C = d: 4.3 %); 64 for lvpeft's tiny demo model (d = 128), where it matched the paper's
    width in accuracy (see docs/demo-findings.md).
    """
    dim = min(hidden_size, max(LIGHT_PRUNER_MIN_DIM, hidden_size // 8))
    return max(heads, dim - dim % heads)


def resolve_pruner_dim(pruner_dim: int | str | None, hidden_size: int, heads: int = 8) -> int:
    """The module width C for a `pruner_dim` setting (None: the light default, "paper": C = d, or C)."""
    if pruner_dim is None:
        return default_pruner_dim(hidden_size, heads)
    if pruner_dim == PAPER_PRUNER_DIM:
        return hidden_size
    return int(pruner_dim)


class CrossAttentionBlock(nn.Module):
    """Vision queries attend to language keys/values; then a residual FFN.

    O = softmax(Q K^T / sqrt(C/h)) V + Q with Q = W_q x, K = W_k H_T, V = W_v H_T (METHOD.md).
    """

    def __init__(self, query_dim: int, key_dim: int, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(query_dim, dim)
        self.k_proj = nn.Linear(key_dim, dim)
        self.v_proj = nn.Linear(key_dim, dim)
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ffn_mult * dim),
            nn.SiLU(),
            nn.Linear(ffn_mult * dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """queries (B, Nv, query_dim), keys (B, T, key_dim), key_mask (B, T) bool -> (B, Nv, C)."""
        b, nv, _ = queries.shape
        t = keys.shape[1]
        q = self.q_proj(queries)
        k = self.k_proj(keys).view(b, t, self.heads, -1).transpose(1, 2)  # (B, h, T, C/h)
        v = self.v_proj(keys).view(b, t, self.heads, -1).transpose(1, 2)
        qh = q.view(b, nv, self.heads, -1).transpose(1, 2)  # (B, h, Nv, C/h)
        attn = F.scaled_dot_product_attention(qh, k, v, attn_mask=key_mask[:, None, None, :])
        out = attn.transpose(1, 2).reshape(b, nv, -1) + q
        return out + self.ffn(out)


class DecisionModule(nn.Module):
    """Predicts keep/drop logits for vision tokens from their cross-attention to language tokens.

    Args:
        hidden_size: d, the language model's hidden size (input width).
        dim: C, the module's inner width (the paper uses C = d).
        heads: attention heads per block (paper: 8).
        blocks: cross-attention blocks in sequence (paper: 2).
        ffn_mult: FFN expansion (paper: 2).
    """

    def __init__(
        self, hidden_size: int, dim: int, heads: int = 8, blocks: int = 2, ffn_mult: int = 2
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size if i == 0 else dim, hidden_size, dim, heads, ffn_mult)
            for i in range(blocks)
        )
        self.head = nn.Linear(dim, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, vision: torch.Tensor, language: torch.Tensor, language_mask: torch.Tensor
    ) -> torch.Tensor:
        """Keep/drop logits.

        Args:
            vision: (B, Nv, d) hidden states of the vision tokens to score.
            language: (B, T, d) hidden states of the language (non-vision) tokens.
            language_mask: (B, T) bool, True where `language` holds a real token.

        Returns:
            (B, Nv, 2) float32 logits gamma = (keep, drop), on the device of `vision`.
        """
        # The module lives on its decoder layer's device; lvpeft's pre-hook runs before accelerate moves
        # the layer's inputs there, so the hidden states may still be on the previous layer's device.
        weight = self.head.weight
        # A row with no language token at all would make the softmax NaN; let it attend to its padding
        # (its scores are never used) so that nothing non-finite can leak into a batch reduction.
        language_mask = language_mask.to(weight.device)
        language_mask = language_mask | ~language_mask.any(dim=-1, keepdim=True)
        x, keys = vision.to(weight.device, weight.dtype), language.to(weight.device, weight.dtype)
        for block in self.blocks:
            x = block(x, keys, language_mask)
        return self.head(x).float().to(vision.device)


class DecisionLayer(nn.Module, BaseTunerLayer):
    """PEFT tuner layer holding, per adapter, the decision module that runs before one decoder layer.

    It wraps nothing (the decoder layer it sits in is untouched); it is a `BaseTunerLayer` so that
    PEFT's machinery (adapter enable/disable, set/delete adapter, trainable-parameter marking,
    state-dict selection) sees the decision modules.
    """

    adapter_layer_names = ("lvpruning_module",)
    other_param_names = ()

    def __init__(self) -> None:
        super().__init__()
        self.lvpruning_module = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter: str | list[str] = "default"

    def update_layer(self, adapter_name: str, module: DecisionModule) -> None:
        """Add (or replace) the decision module of `adapter_name`."""
        self.lvpruning_module[adapter_name] = module

    def forward(self, *args: object, **kwargs: object) -> None:
        """Never called: the decision modules run inside the pruning hooks (`lvpeft.pruning.hooks`)."""
        raise RuntimeError("DecisionLayer is driven by lvpeft's pruning hooks; it is never called directly.")
