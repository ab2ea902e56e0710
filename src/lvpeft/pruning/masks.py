"""The 4D attention masks of the decoder layers after a pruning module.

The decoder computes one causal mask for the full input and passes it to every layer; after a
module the layers attend over fewer (removed) or partly dead (masked, training) key slots, so the
pruning hooks swap in the mask built here. Shapes: B batch, Q query slots, K key slots.
"""

from __future__ import annotations

import torch

from .state import ForwardContext, StageKeys
from .tokens import gather_slots

# Added to attention scores of a dropped vision token in training: log(D + eps) with D in {0, 1}.
# Its gradient 1/(D + eps) times the (eps-sized) attention weight gives the paper's multiplicative
# mask gradient exp(A_ij) / sum_k exp(A_ik) M_ik.
MASK_EPS = 1e-6


def attention_blocks(kind: str | None, token_type_ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) long block id of every input position (-1: none), the model's own bidirectional blocks.

    Tokens of the same block attend to each other both ways at prefill (`FamilyDescription.attention_blocks`):
    "images" numbers each run of image tokens (`token_type_ids == 1`, as Gemma 3 does), "prefix" puts the
    whole prefix (`token_type_ids == 0`, PaliGemma) in block 0. None when the family has no blocks or the
    forward got no `token_type_ids` (the model then attends causally too).
    """
    if kind is None or token_type_ids is None:
        return None
    if kind == "prefix":
        return torch.where(token_type_ids == 0, 0, -1)
    image = token_type_ids == 1
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    return torch.where(image, starts.long().cumsum(dim=1) - 1, -1)


def stage_attention_mask(
    ctx: ForwardContext,
    keys: StageKeys,
    window: int | None,
    impl: str,
    dtype: torch.dtype,
    unpadded: bool = False,
    blocks_within_window: bool = True,
    causal: bool = True,
) -> torch.Tensor | None:
    """The 4D attention mask (B, 1, Q, K) of a pruned stage, in the form the attention expects.

    A query may attend to a key that is valid and not in its future (by ORIGINAL position), and
    within the sliding window if the layer has one (the window counts original positions); at prefill
    every slot may also attend to itself (the paper's M_ii = 1, which also keeps padding rows finite)
    and to the keys of its own bidirectional block (`ctx.blocks`; within the window if
    `blocks_within_window`, Gemma 3's rule, else regardless of it, PaliGemma's). `causal`: the attention
    is causal when given no mask (else a prefill always gets one). With merged tokens
    (`keys.bias`, `mass.py`) the mask is additive and carries log(mass) on every allowed key. Returns
    None when plain causal attention over the key slots is already exact (nothing masked).

    A sliding-window layer's cache keeps only its last `window - 1` slots between decode steps, so a
    decode step's mask covers those and the new tokens. A decode step reads no tensor on the host (no
    device synchronisation per token): what it knows of the key slots is host-side, their number,
    `keys.prompt_valid` and `unpadded` (the decoder passed its layers no mask, so its 2D attention
    mask, the new tokens included, is all ones).
    """
    blocks = None if ctx.decode else ctx.blocks
    if ctx.soft_keep is None and window is None and keys.bias is None and blocks is None:
        if ctx.decode:
            if ctx.positions.shape[1] == 1 and keys.prompt_valid and unpadded:
                return None  # one new token attends to every cached slot
        elif causal and impl == "sdpa" and ctx.removed and bool(keys.valid.all()):
            return None  # compacted, nothing padded: is_causal over slots == causal over positions
    key_positions, key_valid, key_bias = keys.positions, keys.valid, keys.bias
    if window is not None and ctx.decode:  # the sliding cache's last window - 1 slots, then the new ones
        new = ctx.positions.shape[1]
        visible = min(key_positions.shape[1] - new, window - 1) + new
        key_positions, key_valid = key_positions[:, -visible:], key_valid[:, -visible:]
        key_bias = key_bias[:, -visible:] if key_bias is not None else None
    q = ctx.positions[:, :, None]  # (B, Q, 1)
    k = key_positions[:, None, :]  # (B, 1, K)
    allowed = k <= q
    same_block = None
    if blocks is not None:  # (B, Q, K): query and key in the same block
        query_block = gather_slots(blocks, ctx.positions.clamp(min=0))[:, :, None]
        key_block = gather_slots(blocks, key_positions.clamp(min=0))[:, None, :]
        same_block = (query_block == key_block) & (query_block >= 0) & (k >= 0)
        if blocks_within_window or window is None:
            allowed = allowed | same_block
    if window is not None:
        allowed = allowed & ((q - k) < window)
        if same_block is not None and not blocks_within_window:
            allowed = allowed | same_block
    allowed = allowed & key_valid[:, None, :]
    if not ctx.decode:  # query slots are the key slots
        allowed |= torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)
    allowed = allowed[:, None]  # (B, 1, Q, K)
    if ctx.soft_keep is not None:
        return soft_mask(allowed, ctx, dtype, key_bias)
    if key_bias is not None:  # proportional attention: log(mass) on every key, (B, 1, 1, K)
        bias = key_bias[:, None, None, :].to(dtype)
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
