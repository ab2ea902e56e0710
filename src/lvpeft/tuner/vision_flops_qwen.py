"""FLOPs of the Qwen-VL vision side on one image (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the vision transformer and
its patch merger(s). Conventions as in `lvpeft.tuner.vision_flops` (matrix products only, 2 per multiply-add).

- Patch embedding: a Conv3d over (3 x temporal 2 x P x P) inputs per patch, P = 14 (Qwen2/2.5) or 16 (Qwen3).
- Qwen2-VL: every layer attends over all the image's n patches, two-matrix MLP of `mlp_ratio` x width.
- Qwen2.5-VL: attention within windows of `window_size` px (8 x 8 patches, smaller at the right and bottom
  edges) except in `fullatt_block_indexes`; three-matrix SwiGLU MLP.
- Qwen3-VL: full attention as Qwen2-VL, a two-matrix MLP of `intermediate_size`; its learned position
  embeddings are bilinearly interpolated from a `num_position_embeddings` grid by gathering and weighting
  rows (no matrix product: not counted). Besides the final merger, one DeepStack merger per index of
  `deepstack_visual_indexes` (same shapes) turns that layer's output into features that are added to the
  image tokens' hidden states after the first decoder layers (additions: not counted).
- Merger (the projector here): merge x merge patches concatenated (4d) -> 4d -> the decoder's width.
"""

from __future__ import annotations

from typing import Any

from .vit_flops import patch_embed_flops, vit_layer_flops


def qwen_window_sizes(grid_h: int, grid_w: int, merge: int, window_merged: int) -> list[int]:
    """Patches in each attention window of a Qwen2.5-VL image of `grid_h` x `grid_w` patches: windows of
    `window_merged` x `window_merged` merged tokens (merge x merge patches each), cut at the edges."""
    rows, cols = grid_h // merge, grid_w // merge
    sizes = []
    for top in range(0, rows, window_merged):
        for left in range(0, cols, window_merged):
            h, w = min(window_merged, rows - top), min(window_merged, cols - left)
            sizes.append(h * w * merge * merge)
    return sizes


def qwen_tower_flops(vision_config: Any, grid: tuple[int, int], model_type: str) -> int:
    """FLOPs of the Qwen2-VL, Qwen2.5-VL or Qwen3-VL vision transformer (without its mergers) on one image of
    `grid` = (h, w) patches; Qwen2.5-VL's windowed layers attend within their window only."""
    vc = vision_config
    n = grid[0] * grid[1]
    inputs = getattr(vc, "in_channels", 3) * vc.temporal_patch_size * vc.patch_size**2
    if model_type == "qwen2_vl":
        d = vc.embed_dim
        return patch_embed_flops(n, d, inputs) + vc.depth * vit_layer_flops(n, d, d * vc.mlp_ratio)
    d, m = vc.hidden_size, vc.intermediate_size
    if model_type.startswith("qwen3_vl"):
        return patch_embed_flops(n, d, inputs) + vc.depth * vit_layer_flops(n, d, m)
    merge = vc.spatial_merge_size
    windows = qwen_window_sizes(*grid, merge, vc.window_size // merge // vc.patch_size)
    full_layers = sum(1 for i in range(vc.depth) if i in set(vc.fullatt_block_indexes))
    dense = vit_layer_flops(n, d, m, gated=True, attended=0)  # everything but the attention products
    full_attention = 2 * 2 * n * n * d
    window_attention = sum(2 * 2 * s * s * d for s in windows)
    return (
        patch_embed_flops(n, d, inputs)
        + vc.depth * dense
        + full_layers * full_attention
        + (vc.depth - full_layers) * window_attention
    )


def qwen_merger_flops(vision_config: Any, merged_tokens: int, model_type: str) -> int:
    """FLOPs of the Qwen-VL patch merger(s) on `merged_tokens` tokens: (merge^2 * d) -> (merge^2 * d) ->
    decoder width, once, or for Qwen3-VL once plus once per DeepStack merger."""
    vc = vision_config
    width = vc.embed_dim if model_type == "qwen2_vl" else vc.hidden_size
    out = vc.hidden_size if model_type == "qwen2_vl" else vc.out_hidden_size
    wide = width * vc.spatial_merge_size**2
    mergers = 1 + len(vc.deepstack_visual_indexes) if model_type.startswith("qwen3_vl") else 1
    return mergers * 2 * merged_tokens * (wide * wide + wide * out)
