"""The 4D attention masks of the decoder layers after a pruning module.

The decoder computes one causal mask for the full input and passes it to every layer; after a
module the layers attend over fewer (removed) or partly dead (masked, training) key slots, so the
pruning hooks swap in the mask built here. Shapes: B batch, Q query slots, K key slots.
"""

from __future__ import annotations

import torch

from .state import ForwardContext, StageKeys

# Added to attention scores of a dropped vision token in training: log(D + eps) with D in {0, 1}.
# Its gradient 1/(D + eps) times the (eps-sized) attention weight gives the paper's multiplicative
# mask gradient exp(A_ij) / sum_k exp(A_ik) M_ik.
MASK_EPS = 1e-6


def stage_attention_mask(
    ctx: ForwardContext,
    keys: StageKeys,
    window: int | None,
    impl: str,
    dtype: torch.dtype,
    unpadded: bool = False,
) -> torch.Tensor | None:
    """The 4D attention mask (B, 1, Q, K) of a pruned stage, in the form the attention expects.

    A query may attend to a key that is valid and not in its future (by ORIGINAL position), and
    within the sliding window if the layer has one; at prefill every slot may also attend to
    itself (the paper's M_ii = 1, which also keeps padding rows finite). With merged tokens
    (`keys.bias`, `mass.py`) the mask is additive and carries log(mass) on every allowed key. Returns
    None when plain causal attention over the key slots is already exact (nothing masked).

    A decode step reads no tensor on the host (no device synchronisation per token): what it knows
    of the key slots is host-side, `keys.prompt_valid` and `unpadded` (the decoder passed its layers
    no mask, so its 2D attention mask, the new tokens included, is all ones).
    """
    if window is not None:
        top = ctx.span - 1 if ctx.decode else int(keys.positions.max())
        if top >= window:
            raise NotImplementedError(
                f"LVPruning does not support sliding-window attention over sequences longer than the window "
                f"({window}); this input reaches position {top}."
            )
    if ctx.soft_keep is None and window is None and keys.bias is None:
        if ctx.decode:
            if ctx.positions.shape[1] == 1 and keys.prompt_valid and unpadded:
                return None  # one new token attends to every cached slot
        elif impl == "sdpa" and ctx.removed and bool(keys.valid.all()):
            return None  # compacted, nothing padded: is_causal over slots == causal over positions
    q = ctx.positions[:, :, None]  # (B, Q, 1)
    k = keys.positions[:, None, :]  # (B, 1, K)
    allowed = (k <= q) & keys.valid[:, None, :]
    if window is not None:
        allowed &= (q - k) < window
    if not ctx.decode:  # query slots are the key slots
        allowed |= torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)
    allowed = allowed[:, None]  # (B, 1, Q, K)
    if ctx.soft_keep is not None:
        return soft_mask(allowed, ctx, dtype, keys.bias)
    if keys.bias is not None:  # proportional attention: log(mass) on every key, (B, 1, 1, K)
        bias = keys.bias[:, None, None, :].to(dtype)
        return bias.expand(allowed.shape).masked_fill(~allowed, torch.finfo(dtype).min)
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def soft_mask(
    allowed: torch.Tensor, ctx: ForwardContext, dtype: torch.dtype, mass_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Additive float mask with the differentiable decision term log(D_j + eps) for vision keys j != i,
    plus the proportional-attention bias log(mass_j) (B, L) on every allowed key when given."""
    length = allowed.shape[-1]
    column = torch.where(ctx.vision_orig, torch.log(ctx.soft_keep + MASK_EPS), 0.0)  # (B, L) float32
    off_diagonal = 1.0 - torch.eye(length, device=allowed.device)
    bias = column[:, None, None, :] * off_diagonal  # (B, 1, L, L)
    if mass_bias is not None:
        bias = bias + mass_bias[:, None, None, :]
    base = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    base = base.masked_fill(~allowed, torch.finfo(dtype).min)
    return (base + bias).to(dtype)
