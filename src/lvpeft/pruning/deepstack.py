"""Qwen3-VL's DeepStack inputs, following the kept tokens.

Qwen3-VL's decoder adds vision features to the hidden states of the vision tokens after each of its
first few layers (`_deepstack_process(hidden_states, visual_pos_masks, visual_embeds)`), selecting the
tokens with `visual_pos_masks` over the FULL input. Once a module has removed tokens the sequence is
shorter, so the pruner routes that step through `add_deepstack_features`, which adds each still-present
vision token's own features (found through its original position). Before removal, and in the masked
modes (training, the masked reference), the model's own step runs unchanged.

Shapes: B batch, L_in input length, L current slots, N vision tokens in the batch, d hidden size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import record_function

from .state import ForwardContext
from .tokens import gather_slots


def route_deepstack(language_model: nn.Module, context: Callable[[], ForwardContext | None]) -> None:
    """Send `language_model`'s DeepStack step through `add_deepstack_features` once tokens are removed.

    Args:
        language_model: the decoder stack holding `_deepstack_process` (Qwen3-VL's text model).
        context: returns the running forward's context (None outside a pruned forward).

    Raises:
        TypeError: the decoder has no `_deepstack_process` to route.
    """
    original = getattr(language_model, "_deepstack_process", None)
    if original is None:
        raise TypeError(
            f"{type(language_model).__name__} has no `_deepstack_process`, which its family's description "
            "says it adds DeepStack features with."
        )

    def deepstack_process(hidden: torch.Tensor, masks: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        ctx = context()
        if ctx is None or not ctx.removed:
            return original(hidden, masks, embeds)
        with record_function("lvpruning::deepstack"):
            return add_deepstack_features(hidden, masks, embeds, ctx.positions, ctx.valid)

    language_model._deepstack_process = deepstack_process  # an instance attribute shadows the method


def unroute_deepstack(language_model: nn.Module) -> None:
    """Undo `route_deepstack` (nothing to do if it was not routed)."""
    language_model.__dict__.pop("_deepstack_process", None)


def add_deepstack_features(
    hidden: torch.Tensor,
    visual_pos_masks: torch.Tensor,
    visual_embeds: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """`hidden` (B, L, d) plus each present vision token's DeepStack features.

    Args:
        hidden: the current slots' hidden states.
        visual_pos_masks: (B, L_in) bool, the input positions that are vision tokens (the model's own).
        visual_embeds: (N, d) the features of those positions, in row-major order of the mask.
        positions: (B, L) original position of each current slot, -1 for padding slots.
        valid: (B, L) bool, the slot holds a real token.

    Returns:
        (B, L, d): the same sum, element for element, as the model's own step on the full sequence.
    """
    visual_pos_masks = visual_pos_masks.to(hidden.device)
    visual_embeds = visual_embeds.to(hidden.device, hidden.dtype)
    rows = (visual_pos_masks.reshape(-1).long().cumsum(0) - 1).view_as(visual_pos_masks)  # (B, L_in)
    index = positions.clamp(min=0)
    present = gather_slots(visual_pos_masks, index) & valid  # (B, L)
    row = gather_slots(rows, index).clamp(min=0)  # (B, L)
    features = visual_embeds.index_select(0, row.reshape(-1)).view_as(hidden)
    return torch.where(present[..., None], hidden + features, hidden)
