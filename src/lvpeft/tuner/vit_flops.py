"""FLOPs of the building blocks every vision transformer shares (patch embedding, one encoder layer).

Conventions as in `lvpeft.tuner.flops`: 2 FLOPs per multiply-add, matrix products only.
"""

from __future__ import annotations


def vit_layer_flops(
    tokens: int, width: int, mlp: int, *, gated: bool = False, attended: int | None = None
) -> int:
    """FLOPs of one pre-norm ViT layer on `tokens` tokens of `width`: q/k/v/o projections, scores and
    values against `attended` keys each (default: all `tokens`), and an MLP of 2 (3 if `gated`) matrices."""
    keys = tokens if attended is None else attended
    return 2 * (
        4 * tokens * width * width + 2 * tokens * keys * width + (3 if gated else 2) * tokens * width * mlp
    )


def patch_embed_flops(patches: int, width: int, inputs_per_patch: int) -> int:
    """FLOPs of a patch-embedding convolution: one `inputs_per_patch` -> `width` product per patch."""
    return 2 * patches * width * inputs_per_patch
