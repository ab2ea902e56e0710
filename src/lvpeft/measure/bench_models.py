"""The models and inputs `lvpeft bench` times: random models built from configs (no download), by default
a LLaVA with LLaVA-1.5's token counts, or a preset's architecture (`lvpeft.measure.presets`: LLaVA-1.5,
LLaVA-NeXT, Qwen2.5-VL, Gemma 3), and inputs shaped as each family's processor shapes them (`lvpeft bench`,
`lvpeft bench --serve`). Shapes: B (or N) batch, L = text + vision tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..tuner.vision_tokens import ImageTokens, image_tokens
from .presets import PRESET_CONFIGS, SPECIAL_TOKEN_KEYS, preset_config, shrunk_config

QWEN_VL = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
"""The Qwen-VL families: flattened patches + `image_grid_thw`, and `mm_token_type_ids` for M-RoPE."""

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


PRESETS: tuple[str, ...] = (*PRESET_CONFIGS, "tiny")
"""Architectures `lvpeft bench --preset` builds with random weights: those of `lvpeft flops --model`
(`lvpeft.measure.presets`) and a tiny LLaVA for smoke runs (`TINY_CONFIG`)."""

TINY_CONFIG = dict(hidden=64, layers=4, heads=4, kv_heads=4, mlp=172, vocab=1000, image=112, patch=14)
"""`--preset tiny`: 64 vision tokens per image, a 4 x 64 Llama decoder; seconds on a CPU."""


def check_prunable(config: Any, what: str) -> None:
    """Raise a ValueError naming the family if `get_lvpruning_model` refuses `config`'s model family
    (checked before building a model of billions of random weights); `what` names the model in it."""
    from ..pruning.families import FAMILIES

    for family in FAMILIES:
        if config.model_type in family.model_types and not family.supported:
            raise ValueError(
                f"{what} is a {family.name} model, which LVPruning does not prune yet ({family.refused}), "
                f"so there is nothing to time; `lvpeft flops --model` still counts its FLOPs."
            )


def build_preset(
    name: str,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    shrink: bool = False,
) -> Any:
    """A preset architecture (`PRESETS`) with random weights, in eval mode, on `device`.

    The presets are created directly on `device` in `dtype` (no float32 copy on the host, no download);
    `llava-1.5-7b`: CLIP ViT-L/14 at 336 px (24 x 1024, 576 vision tokens), Llama-2-7B / Vicuna-7B decoder
    (32 x 4096, MLP 11008, vocabulary 32064), 7.1 B parameters, 14 GB in bfloat16; `llava-v1.6-mistral-7b`
    7.6 B, `qwen2.5-vl-7b` 8.3 B, `gemma-3-4b` 4.3 B (see `lvpeft.measure.presets`). `shrink`: the same
    token geometry with tiny layers (`presets.shrunk_config`), for a CPU. Random weights have no end of
    sequence: the generation config has no EOS, so every `generate()` runs to its full length.

    Raises:
        ValueError: an unknown preset, or one whose family LVPruning refuses (`check_prunable`).
    """
    if name == "tiny":
        model = build_llava(**TINY_CONFIG, attn=attn, dtype=dtype, seed=seed).to(device)
    else:
        from transformers import AutoModelForImageTextToText

        if name not in PRESET_CONFIGS:
            raise ValueError(f"unknown preset {name!r}; expected one of {list(PRESETS)}.")
        config = preset_config(name)
        check_prunable(config, f"--preset {name}")
        if shrink:
            config = shrunk_config(config)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    model.generation_config.eos_token_id = None
    return model.eval()


def build_default_model(attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """`lvpeft bench`'s default model: LLaVA-1.5's token counts (576 vision tokens) and a small decoder,
    8 x 512 (SwiGLU 1376), vocabulary 32064 (`DEFAULT_CONFIG`)."""
    return build_llava(**DEFAULT_CONFIG, attn=attn, dtype=dtype, seed=seed)


def _special_ids(config: Any) -> list[int]:
    """The multimodal placeholder and marker token ids of `config` (never drawn as text tokens)."""
    return [v for k in SPECIAL_TOKEN_KEYS if isinstance(v := getattr(config, k, None), int)]


def _pixel_inputs(
    config: Any, image: ImageTokens, images: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random pixel inputs of `images` images encoded as `image`, shaped as the family's processor shapes
    them: (images, 3, S, S); anyres (images, views, 3, S, S) + `image_sizes` (images, 2); Qwen-VL families
    (images * h * w, 3 * 2 * P * P) flattened patches + `image_grid_thw` (images, 3); Idefics3 / SmolVLM
    (images, views, 3, S, S); InternVL / AyaVision (images * views, 3, S, S); Mistral3 (images, 3, H', W')
    at the resized size + `image_sizes` (images, 2)."""
    vc = config.vision_config
    if config.model_type in QWEN_VL:
        width = getattr(vc, "in_channels", 3) * vc.temporal_patch_size * vc.patch_size**2
        patches = image.grid[0] * image.grid[1]
        return {
            "pixel_values": torch.randn(images * patches, width, generator=generator),
            "image_grid_thw": torch.tensor([[1, *image.grid]] * images),
        }
    if config.model_type == "mistral3":
        return {
            "pixel_values": torch.randn(images, 3, *image.resized, generator=generator),
            "image_sizes": torch.tensor([list(image.resized)] * images),
        }
    side = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    if config.model_type in ("internvl", "aya_vision"):
        return {"pixel_values": torch.randn(images * image.views, 3, side, side, generator=generator)}
    if config.model_type in ("idefics3", "smolvlm"):
        return {"pixel_values": torch.randn(images, image.views, 3, side, side, generator=generator)}
    if image.views > 1:
        return {
            "pixel_values": torch.randn(images, image.views, 3, side, side, generator=generator),
            "image_sizes": torch.tensor([list(image.image_size)] * images),
        }
    return {"pixel_values": torch.randn(images, 3, side, side, generator=generator)}


def _finish(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, pixels: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The model's inputs on its device: ids, mask, pixels (in its dtype), and the per-token types some
    families need (Qwen-VL families: `mm_token_type_ids` for M-RoPE; Gemma 3: `token_type_ids`, which
    make each image's tokens attend to each other both ways)."""
    config = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = {"input_ids": ids, "attention_mask": mask}
    if config.model_type in QWEN_VL:
        out["mm_token_type_ids"] = (ids == config.image_token_id).int()
    if config.model_type == "gemma3":
        out["token_type_ids"] = (ids == config.image_token_id).long()
    out = {key: value.to(device) for key, value in out.items()}
    for key, value in pixels.items():
        out[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
    return out


def make_inputs(
    model: Any, batch: int, text_tokens: int, seed: int = 0, image_size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """A batch of prompts: a few text tokens, one image of `image_size` = (H, W) pixels (None: 672 x 672;
    fixed-size families resize it), a question (`text_tokens` text tokens in all).

    Returns:
        input_ids and attention_mask (B, L) long, L = text_tokens + the image's vision tokens
        (`lvpeft.tuner.vision_tokens.image_tokens`), the family's pixel inputs (`_pixel_inputs`) and token
        types, on the model's device.
    """
    config = model.config
    image = image_tokens(config, image_size)
    n_vision = image.llm_tokens
    g = torch.Generator().manual_seed(seed)
    before = min(5, text_tokens)
    ids = torch.randint(3, config.text_config.vocab_size - 2, (batch, text_tokens + n_vision), generator=g)
    ids[torch.isin(ids, torch.tensor(_special_ids(config)))] = 3  # text tokens are never placeholders
    ids[:, before : before + n_vision] = config.image_token_id
    return _finish(model, ids, torch.ones_like(ids), _pixel_inputs(config, image, batch, g))


def serve_text_lengths(prompts: int, text_tokens: tuple[int, int], seed: int = 0) -> list[int]:
    """Text tokens of each of `prompts` prompts: evenly spread over `text_tokens` = (least, most),
    in a shuffled order (a batch of mixed lengths, not sorted ones)."""
    least, most = text_tokens
    spread = torch.linspace(least, most, prompts).round().long()
    order = torch.randperm(prompts, generator=torch.Generator().manual_seed(seed))
    return spread[order].tolist()


def make_serve_inputs(
    model: Any, lengths: list[int], seed: int = 0, image_size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """A left-padded batch of prompts of mixed lengths, one image each, as a processor pads it.

    Prompt i is `min(5, lengths[i])` text tokens, one image's placeholders, then the rest of its
    `lengths[i]` text tokens; shorter prompts are padded on the left with the pad id (0 if the model
    has none) and attention-mask zeros.

    Returns:
        input_ids and attention_mask (N, L) long with L = max(lengths) + vision tokens, and the
        family's pixel inputs (e.g. pixel_values (N, 3, H, W)) in the model's dtype, on the model's device.
    """
    config = model.config
    image = image_tokens(config, image_size)
    n_vision = image.llm_tokens
    pad = config.text_config.pad_token_id
    pad = 0 if pad is None else pad
    special = torch.tensor(_special_ids(config))
    g = torch.Generator().manual_seed(seed)
    length = max(lengths) + n_vision
    ids = torch.full((len(lengths), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(lengths):
        row = torch.randint(3, config.text_config.vocab_size - 2, (text + n_vision,), generator=g)
        row[torch.isin(row, special)] = 3  # text tokens are never placeholders
        before = min(5, text)
        row[before : before + n_vision] = config.image_token_id
        ids[i, length - row.numel() :] = row
        mask[i, length - row.numel() :] = 1
    return _finish(model, ids, mask, _pixel_inputs(config, image, len(lengths), g))
