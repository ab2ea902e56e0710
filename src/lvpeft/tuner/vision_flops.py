"""FLOPs of a multimodal model's vision side on one image, per family: the vision tower and the projector.

Same conventions as `lvpeft.tuner.flops` (2 FLOPs per multiply-add, matrix products only: norms,
activations, softmax, rotary embeddings, pooling, interpolation and biases are not counted). How many
views and tokens the tower runs on comes from `lvpeft.tuner.vision_tokens.image_tokens`.

- CLIP / SigLIP towers (LLaVA, VipLlava, LLaVA-NeXT, LLaVA-OneVision, Gemma 3, PaliGemma), per view:
  the patch-embedding convolution, then EVERY encoder layer (transformers runs all of them even when
  the features are read from an earlier one) on all tokens (CLIP's CLS included, SigLIP has none):
  q/k/v/o, n x n scores and values, a two-matrix MLP. SigLIP's attention-pooling head is counted when
  the config enables it (`vision_use_head`; Gemma 3, PaliGemma and LLaVA-OneVision checkpoints do not).
- Qwen2-VL, Qwen2.5-VL, Qwen3-VL towers and their patch mergers (the projector there, with Qwen3-VL's
  DeepStack mergers): `lvpeft.tuner.vision_flops_qwen`.
- Idefics3 / SmolVLM towers (SigLIP-like, no pooling head) run on every tile and the global image, each
  S x S: (S/P)^2 patches. InternViT (InternVL) runs on every tile and the thumbnail with a CLS token
  ((S/P)^2 + 1 tokens; q/k/v/o, two-matrix MLP). AyaVision's SigLIP tower on every tile and the thumbnail
  as above (its head when `vision_use_head`). Pixtral (Mistral3) runs once on the image's (H'/P) x (W'/P)
  patches, with a three-matrix gated MLP. With several images in one prompt, every tower is counted image
  by image: Pixtral with eager or sdpa attention runs all of a prompt's patches as one sequence under a
  block-diagonal mask, so for k > 1 images FlopCounterMode counts the cross-image score blocks too.
- Projectors: LLaVA / VipLlava / NeXT / OneVision: Linear -> GELU -> Linear on the selected features of
  every view (before NeXT's unpadding, which only drops features); Gemma 3: one d_vision x d matrix on
  the `mm_tokens_per_image` pooled tokens; PaliGemma: one Linear on every patch. After a pixel shuffle
  (a reshape: s x s neighbouring features concatenated, s^2 * d_vision wide): Idefics3 / SmolVLM one
  Linear (s^2 d_vision -> d); InternVL Linear -> GELU -> Linear (s^2 d_vision -> d -> d); AyaVision
  Linear (s^2 d_vision -> A, `alignment_intermediate_size`) -> SwiGLU halves -> Linear (A/2 -> d).
  Mistral3: its patch merger (2 x 2 patches concatenated, 4 d_vision -> d_vision) then Linear -> GELU ->
  Linear (d_vision -> d -> d) on the merged tokens.
"""

from __future__ import annotations

from typing import Any

from .vision_flops_qwen import qwen_merger_flops, qwen_tower_flops
from .vision_tokens import ImageTokens
from .vit_flops import patch_embed_flops, vit_layer_flops


def clip_siglip_tower_flops(vision_config: Any, tokens: int) -> int:
    """FLOPs of a CLIP or SigLIP tower on one S x S view: patch embedding, every layer on `tokens` tokens
    (patches, plus CLS for CLIP), and SigLIP's pooling head when `vision_use_head` is set."""
    vc = vision_config
    d, m = vc.hidden_size, vc.intermediate_size
    patches = (vc.image_size // vc.patch_size) ** 2
    embed = patch_embed_flops(patches, d, getattr(vc, "num_channels", 3) * vc.patch_size**2)
    total = embed + vc.num_hidden_layers * vit_layer_flops(tokens, d, m)
    if str(getattr(vc, "model_type", "")).startswith("siglip") and getattr(vc, "vision_use_head", False):
        # one probe query: q and out projections on 1 token, k/v on all, 1 x n attention, MLP on 1 token
        total += 2 * (2 * d * d + 2 * tokens * d * d + 2 * tokens * d + 2 * d * m)
    return total


def vit_tower_flops(vision_config: Any, patches: int, tokens: int, *, gated: bool = False) -> int:
    """FLOPs of a ViT on one view: the patch-embedding convolution on `patches` patches, then every layer on
    `tokens` tokens (patches, plus a CLS token where the tower has one), MLP of 2 (3 if `gated`) matrices."""
    vc = vision_config
    patch = vc.patch_size if isinstance(vc.patch_size, int) else vc.patch_size[0]
    d, m = vc.hidden_size, vc.intermediate_size
    embed = patch_embed_flops(patches, d, getattr(vc, "num_channels", 3) * patch**2)
    return embed + vc.num_hidden_layers * vit_layer_flops(tokens, d, m, gated=gated)


def _feature_layers(config: Any) -> int:
    layers = getattr(config, "vision_feature_layer", None)
    if layers is None:
        layers = getattr(config, "vision_feature_layers", -1)
    return 1 if isinstance(layers, int) else len(layers)


def vision_side_flops(config: Any, image: ImageTokens) -> tuple[int, int]:
    """(vision tower, projector) FLOPs of the model of `config` on one image encoded as `image`."""
    model_type = config.model_type
    vc = config.vision_config
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        tower = qwen_tower_flops(vc, image.grid, model_type)
        return tower, qwen_merger_flops(vc, image.projector_tokens, model_type)
    d_vision, d_text = vc.hidden_size, config.text_config.hidden_size
    tokens = image.projector_tokens
    if model_type == "mistral3":  # patch merger (merge^2 d_vision -> d_vision), then Linear -> GELU -> Linear
        tower = vit_tower_flops(vc, image.tower_tokens, image.tower_tokens, gated=True)
        merger = 2 * tokens * config.spatial_merge_size**2 * d_vision * d_vision
        width_in = d_vision * _feature_layers(config)
        return tower, merger + 2 * tokens * (width_in * d_text + d_text * d_text)
    if model_type == "internvl":  # InternViT with CLS; pixel shuffle, then Linear -> GELU -> Linear
        tower = image.views * vit_tower_flops(vc, image.tower_tokens - 1, image.tower_tokens)
        wide = d_vision * int(1 / config.downsample_ratio) ** 2
        return tower, 2 * tokens * (wide * d_text + d_text * d_text)
    tower = image.views * clip_siglip_tower_flops(vc, image.tower_tokens)
    if model_type in ("idefics3", "smolvlm"):  # pixel shuffle, then one Linear
        return tower, 2 * tokens * d_vision * config.scale_factor**2 * d_text
    if model_type == "aya_vision":  # pixel shuffle, then Linear -> SwiGLU (halves the width) -> Linear
        inner = getattr(config, "alignment_intermediate_size", d_text)
        wide = d_vision * config.downsample_factor**2
        return tower, 2 * tokens * (wide * inner + inner // 2 * d_text)
    if model_type == "gemma3":
        return tower, 2 * image.llm_tokens * d_vision * d_text
    if model_type == "paligemma":
        return tower, 2 * tokens * d_vision * vc.projection_dim
    width_in = d_vision * _feature_layers(config)
    return tower, 2 * tokens * (width_in * d_text + d_text * d_text)
