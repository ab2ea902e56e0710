"""Packing and gathering token slots: the index arithmetic shared by scoring and removal.

Shapes: B batch, L slots in, K slots out, d hidden size.
"""

from __future__ import annotations

import torch


def pack(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True slots of each row, in order, right-aligned (left padding).

    Right alignment keeps every row's last real slot in the last column, which is where
    `generate()` reads the next-token logits.

    Args:
        mask: (B, L) bool.

    Returns:
        index: (B, K) long with K = max row count; padding columns hold 0.
        valid: (B, K) bool, False on the padding columns.
    """
    length = mask.shape[1]
    arange = torch.arange(length, device=mask.device)
    keyed = torch.where(mask, arange, -1)  # (B, L): kept slots keep their index, others sort first
    k = int(mask.sum(dim=1).max()) if mask.numel() else 0
    index = torch.sort(keyed, dim=1).values[:, length - k :]
    valid = index >= 0
    return index.clamp(min=0), valid


def gather_slots(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along dim 1: x (B or 1, L, *rest) and index (B, K) -> (B, K, *rest), on x's device."""
    index = index.to(x.device)  # x may sit on another device of a multi-device model
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    if x.dim() == 2:
        return x.gather(1, index)
    expanded = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)


def scatter_slots(
    values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, length: int
) -> torch.Tensor:
    """Inverse of `gather_slots` on valid slots: (B, K, *rest) -> (B, length, *rest), zeros elsewhere."""
    index, valid = index.to(values.device), valid.to(values.device)
    out = values.new_zeros(values.shape[0], length, *values.shape[2:])
    values = values * valid.view(*valid.shape, *([1] * (values.dim() - 2))).to(values.dtype)
    # padding columns point at slot 0; add (not copy) so they contribute zeros instead of overwriting
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return out.scatter_add(1, expanded, values)
