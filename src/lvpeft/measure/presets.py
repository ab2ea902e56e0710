"""Model presets of `lvpeft flops --model` and `lvpeft bench --preset`: the architectures of popular
checkpoints, written from their public `config.json` (and, for the vision-token counts, their
`preprocessor_config.json`) as transformers configs, so that no download is needed.

| preset | checkpoint | vision tokens per image |
|---|---|---|
| `llava-1.5-7b` | `llava-hf/llava-1.5-7b-hf` | 576 (CLIP-L/336) |
| `llava-v1.6-mistral-7b` | `llava-hf/llava-v1.6-mistral-7b-hf` | anyres: 2,928 for 672 x 672 |
| `qwen2.5-vl-7b` | `Qwen/Qwen2.5-VL-7B-Instruct` | dynamic: 576 for 672 x 672 |
| `gemma-3-4b` | `google/gemma-3-4b-it` | 256 (SigLIP 896 pooled 4 x 4) |

`shrunk_config` keeps a preset's token geometry (image sizes, patches, tiles, windows, pooling) and
makes every layer tiny, for CPU smoke runs and tests of the bench. `add_image_size_argument` is the
`--image-size` option both commands share.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3TextConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MistralConfig,
    PreTrainedConfig,
    Qwen2_5_VLConfig,
    SiglipVisionConfig,
)


def _clip_l_336() -> CLIPVisionConfig:
    """CLIP ViT-L/14 at 336 px: 24 layers, width 1024, 16 heads, MLP 4096 (577 tokens with CLS)."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )


def llava_1_5_7b_config() -> LlavaConfig:
    """The architecture of `llava-hf/llava-1.5-7b-hf`, built from configs only (no download).

    CLIP ViT-L/14 at 336 px (24 layers, width 1024, 16 heads, MLP 4096), projector 1024 -> 4096 ->
    4096, Vicuna-7B / Llama-2-7B decoder (32 layers, width 4096, 32 heads, MLP 11008, vocab 32064),
    features from the second-to-last CLIP layer with CLS dropped (576 image tokens).
    """
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=_clip_l_336(),
        text_config=text,
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def llava_v1_6_mistral_7b_config() -> LlavaNextConfig:
    """The architecture of `llava-hf/llava-v1.6-mistral-7b-hf` (LLaVA-NeXT), no download.

    CLIP ViT-L/14 at 336 px as LLaVA-1.5, anyres tiles of 336 px on the grids 336 x 672, 672 x 336,
    672 x 672, 1008 x 336, 336 x 1008 (a base view + up to 4 tiles, 577 tokens each in the tower),
    projector 1024 -> 4096 -> 4096, Mistral-7B-Instruct-v0.2 decoder (32 layers, width 4096, 32 heads,
    8 KV heads, MLP 14336, vocab 32064, no sliding window).
    """
    text = MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32064,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        sliding_window=None,
    )
    return LlavaNextConfig(
        vision_config=_clip_l_336(),
        text_config=text,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def qwen2_5_vl_7b_config() -> Qwen2_5_VLConfig:
    """The architecture of `Qwen/Qwen2.5-VL-7B-Instruct`, no download.

    Vision: 14 px patches over 2 frames, 32 layers of width 1280 (16 heads, SwiGLU MLP 3420), windowed
    attention in 112 px windows except layers 7, 15, 23, 31, a 2 x 2 patch merger 5120 -> 5120 -> 3584.
    Decoder: Qwen2.5-7B (28 layers, width 3584, 28 heads, 4 KV heads, MLP 18944, vocab 152064, M-RoPE
    sections 16/24/24). The image processor's pixel bounds are `lvpeft.tuner.vision_tokens`'s defaults.
    """
    text = dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
        hidden_act="silu",
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=False,
    )


def gemma_3_4b_config() -> Gemma3Config:
    """The architecture of `google/gemma-3-4b-it`, no download.

    Vision: SigLIP at 896 px, 14 px patches (4,096 tokens), 27 layers of width 1152 (16 heads, MLP 4304),
    no pooling head; a 4 x 4 average pool leaves 256 tokens, projected 1152 -> 2560. Decoder: 34 layers,
    width 2560, 8 heads of 256, 4 KV heads, GeGLU MLP 10240, vocab 262208; 5 of every 6 layers attend in
    a sliding window of 1024.
    """
    text = Gemma3TextConfig(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=262208,
        sliding_window=1024,
        query_pre_attn_scalar=256,
        max_position_embeddings=131072,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=896,
        patch_size=14,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
    )


PRESET_CONFIGS: dict[str, Callable[[], PreTrainedConfig]] = {
    "llava-1.5-7b": llava_1_5_7b_config,
    "llava-v1.6-mistral-7b": llava_v1_6_mistral_7b_config,
    "qwen2.5-vl-7b": qwen2_5_vl_7b_config,
    "gemma-3-4b": gemma_3_4b_config,
}
"""Preset name -> a function building its config (random weights, no download)."""

PRESET_CHECKPOINTS: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-v1.6-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "gemma-3-4b": "google/gemma-3-4b-it",
}
"""Preset name -> the Hub checkpoint whose architecture it reproduces."""

SPECIAL_TOKEN_KEYS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "boi_token_index",
    "eoi_token_index",
)
"""Config keys of the special token ids a family places in prompts (image, video, start/end markers)."""


def preset_config(name: str) -> PreTrainedConfig:
    """The config of preset `name` (case-insensitive); ValueError naming the presets otherwise."""
    key = name.lower()
    if key not in PRESET_CONFIGS:
        raise ValueError(f"unknown preset {name!r}; expected one of {list(PRESET_CONFIGS)}.")
    return PRESET_CONFIGS[key]()


def shrunk_config(config: PreTrainedConfig, vocab: int = 1024) -> PreTrainedConfig:
    """A copy of a preset's `config` with the same vision-token geometry (image and patch sizes, tiles,
    windows, merging, pooling) and tiny layers: 2 vision layers of width 32, 4 decoder layers of width 64,
    a `vocab`-token vocabulary with the multimodal special tokens renumbered at its end."""
    config = copy.deepcopy(config)
    vc, tc = config.vision_config, config.text_config
    if config.model_type == "qwen2_5_vl":
        _set(vc, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
        vc.fullatt_block_indexes = [1]
    elif config.model_type == "qwen2_vl":  # its vision `hidden_size` is the decoder's width
        _set(vc, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    else:
        _set(vc, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    _set(tc, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    _set(tc, num_key_value_heads=2, head_dim=16, vocab_size=vocab, pad_token_id=0)
    if getattr(tc, "layer_types", None):  # keep one full-attention layer last, as the preset has some
        types = list(tc.layer_types)[:3]
        tc.layer_types = [*types, "full_attention" if "full_attention" in tc.layer_types else types[-1]]
    if "mrope_section" in (getattr(tc, "rope_parameters", None) or {}):
        tc.rope_parameters = {**tc.rope_parameters, "mrope_section": [4, 2, 2]}  # head_dim 16
    for i, key in enumerate(k for k in SPECIAL_TOKEN_KEYS if getattr(config, k, None) is not None):
        setattr(config, key, vocab - 1 - i)
    return config


def _set(config: Any, **values: Any) -> None:
    for key, value in values.items():
        if hasattr(config, key):
            setattr(config, key, value)


def add_image_size_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--image-size H W` (also `--image_size`; default None, i.e. `DEFAULT_IMAGE_SIZE`) to `parser`."""
    parser.add_argument(
        "--image-size",
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="height and width of each image in pixels (default 672 672): the vision-token count of "
        "LLaVA-NeXT / OneVision, Idefics3, SmolVLM, InternVL, AyaVision (tiles), Qwen-VL and Mistral3 "
        "(dynamic resolution) depends on it; fixed-size families resize every image",
    )
