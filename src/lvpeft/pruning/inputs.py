"""What a forward brings, read by the pruning hooks: which input positions are vision placeholders,
whether image or video features come with them, and which KV cache it carries.

Shapes: B batch, L input length, d hidden size, T placeholder kinds (image, video).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architecture import LlavaParts


def vision_mask(parts: LlavaParts, backbone: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """(B, L) bool: which input positions are image (or video) placeholder tokens, from `input_ids` or,
    without them, by comparing `inputs_embeds` with the placeholders' embeddings; None if neither."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    tokens = [t for t in (parts.image_token_id, parts.video_token_id) if t is not None]
    if input_ids is not None:
        return torch.isin(input_ids, torch.tensor(tokens, device=input_ids.device))
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    table = backbone.get_input_embeddings()
    markers = table(torch.tensor(tokens, device=embeds.device)).to(embeds.dtype)  # (T, d)
    return (embeds[:, :, None, :] == markers).all(dim=-1).any(dim=-1)


def has_image_inputs(kwargs: dict) -> bool:
    """Whether this forward brings image or video features for its placeholder tokens (pixels or
    precomputed outputs). Host-side: reads no tensor."""
    if kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_videos") is not None:
        return True
    outputs = kwargs.get("mm_encoder_outputs")
    if isinstance(outputs, torch.Tensor):  # Idefics3 / SmolVLM's deprecated form: the image features
        return True
    return isinstance(outputs, dict) and any(outputs.get(kind) is not None for kind in ("image", "video"))


def cache_argument(kwargs: dict) -> Any:
    """The KV cache a forward received: `cache=` since transformers 5.24, `past_key_values=` before."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")
