"""The query, key and value states a decoder layer's OWN attention module computes, for any family.

The training-free FastV-style scorer, the last module's attention-ranking term and the teacher
importance all need the attention a layer would pay. Recomputing it by hand (q/k projections and
RoPE, Llama style) is wrong for every family that does more: Gemma 3 and Qwen3 normalise queries and
keys per head (`q_norm`, `k_norm`), Gemma scales by `query_pre_attn_scalar`, Gemma 2 caps the logits.
Instead `attention_states` runs the layer's own attention module on the normed hidden states with
transformers' attention interface pointed, for that one call, at a function that records what the
module passes it (queries and keys after norms and RoPE, values, its `scaling` and `softcap`) and stops
the module there (nothing after the attention function runs: no output projection).

Shapes: B batch, L slots, h query heads, h_kv key/value heads, hd head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

_RECORD = "lvpruning_record"


@dataclass
class AttentionStates:
    """What a layer's attention module computed before its attention function.

    Attributes:
        query: (B, h, L, hd) queries after the module's norms and RoPE.
        key: (B, h, L, hd) keys after norms and RoPE, repeated over grouped-query heads.
        value: (B, h, L, hd) values, repeated over grouped-query heads.
        scaling: the module's logit scale (hd**-0.5 for most families).
        softcap: the module's logit soft cap (Gemma 2), or None.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float
    softcap: float | None = None

    def logits(self, query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, h, Q, L) float32: of every query, or of one slot per row (`query_rows` (B,))."""
        query = self.query
        if query_rows is not None:
            rows = torch.arange(query.shape[0], device=query.device)
            query = query[rows, :, query_rows.to(query.device)][:, :, None]  # (B, h, 1, hd)
        logits = (query @ self.key.transpose(-1, -2)).float() * self.scaling
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _Recorded(Exception):
    """Raised by the recording attention function to stop the module once its inputs are known."""

    def __init__(self, states: AttentionStates) -> None:
        super().__init__("attention states recorded")
        self.states = states


def _record(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = query.shape[1] // key.shape[1]
    raise _Recorded(
        AttentionStates(
            query=query,
            key=key.repeat_interleave(groups, dim=1),
            value=value.repeat_interleave(groups, dim=1),
            scaling=float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
            softcap=softcap,
        )
    )


AttentionInterface.register(_RECORD, _record)


def attention_states(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
) -> AttentionStates:
    """Run `layer`'s attention module on `layer.input_layernorm(hidden)` (B, L, d) up to its attention
    function and return what it computed there (no cache is read or written, nothing is masked).

    Raises:
        TypeError: the layer has no `input_layernorm` / `self_attn`, or its attention module does not
            call transformers' attention interface (the message names the module).
    """
    attn = getattr(layer, "self_attn", None)
    norm = getattr(layer, "input_layernorm", None)
    config = getattr(attn, "config", None)
    if attn is None or norm is None or config is None:
        raise TypeError(
            f"{type(layer).__name__} has no `input_layernorm` and `self_attn` with a config; the "
            "attention-based scorers and teacher need a transformers decoder layer."
        )
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = _RECORD  # read by the module at this call only
    try:
        attn(hidden_states=norm(hidden), position_embeddings=position_embeddings, attention_mask=None)
    except _Recorded as recorded:
        return recorded.states
    finally:
        config._attn_implementation_internal = previous
    raise TypeError(
        f"{type(attn).__name__} did not call transformers' attention interface; the attention-based scorers "
        "and teacher cannot read its attention."
    )
