"""FLOPs of a multimodal model's vision side on one image, per family: the vision tower and the projector.

Same conventions as `lvpeft.tuner.flops` (2 FLOPs per multiply-add, matrix products only: norms,
activations, softmax, rotary embeddings, pooling, interpolation and biases are not counted). How many
views and tokens the tower runs on comes from `lvpeft.tuner.vision_tokens.image_tokens`.

- CLIP / SigLIP towers (LLaVA, VipLlava, LLaVA-NeXT, LLaVA-OneVision, Gemma 3, PaliGemma), per view:
  the patch-embedding convolution, then EVERY encoder layer (transformers runs all of them even when
  the features are read from an earlier one) on all tokens (CLIP's CLS included, SigLIP has none):
  q/k/v/o, n x n scores and values, a two-matrix MLP. SigLIP's attention-pooling head is counted when
  the config enables it (`vision_use_head`; Gemma 3, PaliGemma and LLaVA-OneVision checkpoints do not).
- Qwen2-VL tower: a Conv3d patch embedding over (temporal 2 x 14 x 14 x 3) inputs, layers with full
  attention over the image's patches and a two-matrix MLP (`mlp_ratio`); Qwen2.5-VL: windowed
  attention (windows of `window_size` px, i.e. 8 x 8 patches, smaller at the right and bottom edges)
  except in `fullatt_block_indexes`, and a three-matrix SwiGLU MLP. Both end in the patch merger, which
  is the projector here: 2 x 2 patches concatenated (4d) -> 4d -> the decoder's width.
- Projectors: LLaVA / VipLlava / NeXT / OneVision: Linear -> GELU -> Linear on the selected features of
  every view (before NeXT's unpadding, which only drops features); Gemma 3: one d_vision x d matrix on
  the `mm_tokens_per_image` pooled tokens; PaliGemma: one Linear on every patch.
"""

from __future__ import annotations

from typing import Any

from .vision_tokens import ImageTokens


def vit_layer_flops(
    tokens: int, width: int, mlp: int, *, gated: bool = False, attended: int | None = None
) -> int:
    """FLOPs of one pre-norm ViT layer on `tokens` tokens of `width`: q/k/v/o projections, scores and
    values against `attended` keys each (default: all `tokens`), and an MLP of 2 (3 if `gated`) matrices."""
    keys = tokens if attended is None else attended
    return 2 * (
        4 * tokens * width * width + 2 * tokens * keys * width + (3 if gated else 2) * tokens * width * mlp
    )


def _patch_embed_flops(patches: int, width: int, inputs_per_patch: int) -> int:
    return 2 * patches * width * inputs_per_patch


def clip_siglip_tower_flops(vision_config: Any, tokens: int) -> int:
    """FLOPs of a CLIP or SigLIP tower on one S x S view: patch embedding, every layer on `tokens` tokens
    (patches, plus CLS for CLIP), and SigLIP's pooling head when `vision_use_head` is set."""
    vc = vision_config
    d, m = vc.hidden_size, vc.intermediate_size
    patches = (vc.image_size // vc.patch_size) ** 2
    embed = _patch_embed_flops(patches, d, getattr(vc, "num_channels", 3) * vc.patch_size**2)
    total = embed + vc.num_hidden_layers * vit_layer_flops(tokens, d, m)
    if str(getattr(vc, "model_type", "")).startswith("siglip") and getattr(vc, "vision_use_head", False):
        # one probe query: q and out projections on 1 token, k/v on all, 1 x n attention, MLP on 1 token
        total += 2 * (2 * d * d + 2 * tokens * d * d + 2 * tokens * d + 2 * d * m)
    return total


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
    """FLOPs of the Qwen2-VL or Qwen2.5-VL vision transformer (without its merger) on one image of
    `grid` = (h, w) patches; Qwen2.5-VL's windowed layers attend within their window only."""
    vc = vision_config
    n = grid[0] * grid[1]
    inputs = getattr(vc, "in_channels", 3) * vc.temporal_patch_size * vc.patch_size**2
    if model_type == "qwen2_vl":
        d = vc.embed_dim
        return _patch_embed_flops(n, d, inputs) + vc.depth * vit_layer_flops(n, d, d * vc.mlp_ratio)
    d, m = vc.hidden_size, vc.intermediate_size
    merge = vc.spatial_merge_size
    windows = qwen_window_sizes(*grid, merge, vc.window_size // merge // vc.patch_size)
    full_layers = sum(1 for i in range(vc.depth) if i in set(vc.fullatt_block_indexes))
    dense = vit_layer_flops(n, d, m, gated=True, attended=0)  # everything but the attention products
    full_attention = 2 * 2 * n * n * d
    window_attention = sum(2 * 2 * s * s * d for s in windows)
    return (
        _patch_embed_flops(n, d, inputs)
        + vc.depth * dense
        + full_layers * full_attention
        + (vc.depth - full_layers) * window_attention
    )


def qwen_merger_flops(vision_config: Any, merged_tokens: int, model_type: str) -> int:
    """FLOPs of the Qwen2-VL / Qwen2.5-VL patch merger: (merge^2 * d) -> (merge^2 * d) -> decoder width."""
    vc = vision_config
    width = vc.embed_dim if model_type == "qwen2_vl" else vc.hidden_size
    out = vc.hidden_size if model_type == "qwen2_vl" else vc.out_hidden_size
    wide = width * vc.spatial_merge_size**2
    return 2 * merged_tokens * (wide * wide + wide * out)


def _feature_layers(config: Any) -> int:
    layers = getattr(config, "vision_feature_layer", None)
    if layers is None:
        layers = getattr(config, "vision_feature_layers", -1)
    return 1 if isinstance(layers, int) else len(layers)


def vision_side_flops(config: Any, image: ImageTokens) -> tuple[int, int]:
    """(vision tower, projector) FLOPs of the model of `config` on one image encoded as `image`."""
    model_type = config.model_type
    vc = config.vision_config
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        tower = qwen_tower_flops(vc, image.grid, model_type)
        return tower, qwen_merger_flops(vc, image.projector_tokens, model_type)
    tower = image.views * clip_siglip_tower_flops(vc, image.tower_tokens)
    d_text = config.text_config.hidden_size
    if model_type == "gemma3":
        return tower, 2 * image.llm_tokens * vc.hidden_size * d_text
    if model_type == "paligemma":
        return tower, 2 * image.projector_tokens * vc.hidden_size * config.vision_config.projection_dim
    width_in = vc.hidden_size * _feature_layers(config)
    return tower, 2 * image.projector_tokens * (width_in * d_text + d_text * d_text)
