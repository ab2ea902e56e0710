"""What the unpruned model reads from each vision token: the target of the teacher-ranking term.

For one decoder layer, the importance of token j is how much attention output the answer-producing
positions draw from it, summed over heads:

    I_j = sum_h sum_{i in readers} alpha^h_ij * ||W_O^h v^h_j||

where alpha^h_ij is head h's attention of query i on key j (causal, over the real tokens) and
W_O^h v^h_j is what token j would add to the residual stream through head h at full attention
(value-weighted attention, as in Kobayashi et al. 2020, "Attention is not only a weight").
The readers are the positions whose next token is a label (the prompt's last token and the answer
tokens). The trainer sums I over every layer from a module's position to the last layer, so each
module learns to rank by what ALL later layers of the unpruned model read for this question.

The queries, keys, values and logit scale are the layer's own (`lvpeft.pruning.layer_attention`: its
norms, RoPE and scaling, whatever the family); the output projection is read as `self_attn.o_proj`.
The mask is causal over the real tokens (a family's own bidirectional image blocks and sliding windows
are not followed: a teacher signal, not an equivalence). Shapes: B batch, L tokens, h heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..pruning.layer_attention import attention_states


@torch.no_grad()
def read_importance(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    readers: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Value-weighted attention that the `readers` pay to every token at one decoder layer.

    Args:
        layer: a transformers decoder layer (`input_layernorm`, `self_attn` with `o_proj`).
        hidden: (B, L, d) the layer's input hidden states.
        position_embeddings: (cos, sin), each (B or 1, L, head_dim), or None (no RoPE).
        readers: (B, L) bool, the query positions whose reading counts.
        valid: (B, L) bool, the real (non-padding) tokens.

    Returns:
        (B, L) float32 non-negative importance of each key token (0 for padding).
    """
    states = attention_states(layer, hidden, position_embeddings)
    length = hidden.shape[1]
    heads, head_dim = states.query.shape[1], states.query.shape[-1]
    v = states.value.float()  # (B, h, L, hd)
    logits = states.logits()  # (B, h, L, L)
    pos = torch.arange(length, device=hidden.device)
    allowed = (pos[None, :] <= pos[:, None])[None] & valid[:, None, :]  # (B, L, L)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows of padding queries are all -inf
    read = (probs * readers[:, None, :, None].float()).sum(dim=2)  # (B, h, L)
    w_o = layer.self_attn.o_proj.weight.float().view(-1, heads, head_dim)  # (d, h, hd)
    gram = torch.einsum("dhk,dhm->hkm", w_o, w_o)  # (h, hd, hd)
    norm = torch.einsum("bhlk,hkm,bhlm->bhl", v, gram, v).clamp(min=0).sqrt()  # ||W_O^h v_j||
    return (read * norm).sum(dim=1).masked_fill(~valid, 0.0)


@contextmanager
def recording_importance(
    layers: list[nn.Module], first: int, readers: torch.Tensor, valid: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """While active, every forward of `layers[first:]` records its `read_importance` (B, L) in the
    yielded dict, keyed by layer index. Use around a full-length (unpruned) forward only."""
    recorded: dict[int, torch.Tensor] = {}

    def hook(index: int) -> Callable[[nn.Module, tuple, dict], None]:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            recorded[index] = read_importance(
                module, hidden, kwargs.get("position_embeddings"), readers, valid
            )

        return record

    handles = [
        layers[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in range(first, len(layers))
    ]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def importance_after(recorded: dict[int, torch.Tensor], position: int) -> torch.Tensor:
    """Importance summed over every recorded layer at or after `position`: (B, L) float32."""
    return torch.stack([recorded[i] for i in sorted(recorded) if i >= position]).sum(dim=0)
