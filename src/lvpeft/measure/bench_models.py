"""The models and inputs `lvpeft bench` times by default: random LLaVAs built from configs (no download)
with LLaVA-1.5's token counts. Shapes: B batch, L = text + vision tokens."""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CONFIG = dict(hidden=512, layers=8, heads=8, kv_heads=8, mlp=1376, vocab=32064, image=336, patch=14)
"""`lvpeft bench`'s default model: LLaVA-1.5's token counts (576 vision tokens) and a small decoder."""


def build_llava(
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    mlp: int,
    vocab: int,
    image: int,
    patch: int,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """A random LLaVA (CLIP vision tower of one small layer + Llama decoder) built from a config.

    The vision tower runs identically for base and pruned models and is not what pruning changes;
    `(image // patch) ** 2` vision tokens per image; the image placeholder is the last vocabulary id.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image,
            patch_size=patch,
        ),
        text_config=LlamaConfig(
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=vocab,
            max_position_embeddings=4096,
        ),
        image_token_id=vocab - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.config.text_config._attn_implementation = attn
    return model


def build_default_model(attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """`lvpeft bench`'s default model: LLaVA-1.5's token counts (576 vision tokens) and a small decoder,
    8 x 512 (SwiGLU 1376), vocabulary 32064 (`DEFAULT_CONFIG`)."""
    return build_llava(**DEFAULT_CONFIG, attn=attn, dtype=dtype, seed=seed)


def make_inputs(model: Any, batch: int, text_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of prompts: a few text tokens, one image, a question (`text_tokens` text tokens in all)."""
    config = model.config
    image = config.vision_config.image_size
    n_vision = (image // config.vision_config.patch_size) ** 2
    g = torch.Generator().manual_seed(seed)
    before = min(5, text_tokens)
    ids = torch.randint(3, config.text_config.vocab_size - 2, (batch, text_tokens + n_vision), generator=g)
    ids[ids == config.image_token_id] = 3  # text tokens are never the image placeholder
    ids[:, before : before + n_vision] = config.image_token_id
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, image, image, generator=g).to(device, dtype),
    }
