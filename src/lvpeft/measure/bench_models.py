"""The models and inputs `lvpeft bench` times by default: random LLaVAs built from configs (no download)
with LLaVA-1.5's token counts, and their inputs (`lvpeft bench`, `lvpeft bench --serve`). Shapes: B (or N)
batch, L = text + vision tokens."""

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


PRESETS: tuple[str, ...] = ("llava-1.5-7b", "tiny")
"""Architectures `lvpeft bench --preset` builds with random weights: LLaVA-1.5-7B's (`llava-1.5-7b`, the
`lvpeft flops` preset) and a tiny one for smoke runs (`TINY_CONFIG`)."""

TINY_CONFIG = dict(hidden=64, layers=4, heads=4, kv_heads=4, mlp=172, vocab=1000, image=112, patch=14)
"""`--preset tiny`: 64 vision tokens per image, a 4 x 64 Llama decoder; seconds on a CPU."""


def build_preset(
    name: str,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """A preset architecture (`PRESETS`) with random weights, in eval mode, on `device`.

    `llava-1.5-7b` is created directly on `device` in `dtype` (no float32 copy on the host, no download):
    CLIP ViT-L/14 at 336 px (24 x 1024, 576 vision tokens), Llama-2-7B / Vicuna-7B decoder (32 x 4096,
    MLP 11008, vocabulary 32064); 7.1 B parameters, 14 GB in bfloat16. Random weights have no end of
    sequence: the generation config has no EOS, so every `generate()` runs to its full length.
    """
    if name == "tiny":
        model = build_llava(**TINY_CONFIG, attn=attn, dtype=dtype, seed=seed).to(device)
    elif name == "llava-1.5-7b":
        from transformers import LlavaForConditionalGeneration

        from .flops_command import llava_1_5_7b_config

        torch.manual_seed(seed)
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(
                llava_1_5_7b_config(), dtype=dtype, attn_implementation=attn
            )
    else:
        raise ValueError(f"unknown preset {name!r}; expected one of {list(PRESETS)}.")
    model.generation_config.eos_token_id = None
    return model.eval()


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


def serve_text_lengths(prompts: int, text_tokens: tuple[int, int], seed: int = 0) -> list[int]:
    """Text tokens of each of `prompts` prompts: evenly spread over `text_tokens` = (least, most),
    in a shuffled order (a batch of mixed lengths, not sorted ones)."""
    least, most = text_tokens
    spread = torch.linspace(least, most, prompts).round().long()
    order = torch.randperm(prompts, generator=torch.Generator().manual_seed(seed))
    return spread[order].tolist()


def make_serve_inputs(model: Any, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch of prompts of mixed lengths, one image each, as a processor pads it.

    Prompt i is `min(5, lengths[i])` text tokens, one image's placeholders, then the rest of its
    `lengths[i]` text tokens; shorter prompts are padded on the left with the pad id (0 if the model
    has none) and attention-mask zeros.

    Returns:
        input_ids and attention_mask (N, L) long with L = max(lengths) + vision tokens, and
        pixel_values (N, 3, H, W) in the model's dtype, on the model's device.
    """
    config = model.config
    image = config.vision_config.image_size
    n_vision = (image // config.vision_config.patch_size) ** 2
    pad = config.text_config.pad_token_id
    pad = 0 if pad is None else pad
    g = torch.Generator().manual_seed(seed)
    length = max(lengths) + n_vision
    ids = torch.full((len(lengths), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(lengths):
        row = torch.randint(3, config.text_config.vocab_size - 2, (text + n_vision,), generator=g)
        row[row == config.image_token_id] = 3  # text tokens are never the image placeholder
        before = min(5, text)
        row[before : before + n_vision] = config.image_token_id
        ids[i, length - row.numel() :] = row
        mask[i, length - row.numel() :] = 1
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "pixel_values": torch.randn(len(lengths), 3, image, image, generator=g).to(device, dtype),
    }
