"""Tiny LLaVA models and inputs built from configs, for tests (no Hub access)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
)

IMAGE_TOKEN = 120
PAD = 0
VOCAB = 128
PATCHES = 16  # 32 px images, patch 8 -> 16 vision tokens per image


def tiny_text_kwargs(**overrides) -> dict:
    """Keyword arguments of a tiny decoder config (4 layers, 64 wide, vocabulary 128), with `overrides`."""
    config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {**config, **overrides}


def tiny_vision_kwargs(**overrides) -> dict:
    """Keyword arguments of a tiny vision-tower config (1 layer, 32 wide, 32 px images in 8 px patches)."""
    config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return {**config, "image_size": 32, "patch_size": 8, **overrides}


def tiny_llava(
    backbone: str = "llama", attn: str = "eager", layers: int = 4, seed: int = 0, dtype=torch.float32
) -> LlavaForConditionalGeneration:
    """A random tiny LLaVA: CLIP 1x32 on 32 px images (16 tokens/image), 4-layer 64-wide decoder."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**tiny_vision_kwargs())
    text_kwargs = tiny_text_kwargs(num_hidden_layers=layers)
    if backbone == "llama":
        text = LlamaConfig(**text_kwargs)
    elif backbone == "qwen2":
        text = Qwen2Config(**text_kwargs)
    else:
        raise ValueError(backbone)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.config.text_config._attn_implementation = attn
    model.config.vision_config._attn_implementation = attn
    return model


def prompt_ids(num_images: int, text_before: int, text_after: int, seed: int) -> list[int]:
    """Token ids: some text, `num_images` blocks of image tokens, a question."""
    g = torch.Generator().manual_seed(seed)
    ids = [1, *torch.randint(3, 100, (text_before,), generator=g).tolist()]
    for _ in range(num_images):
        ids += [IMAGE_TOKEN] * PATCHES + torch.randint(3, 100, (1,), generator=g).tolist()
    ids += torch.randint(3, 100, (text_after,), generator=g).tolist()
    return ids


def batch(prompts: list[list[int]], seed: int = 0, side: str = "left") -> dict[str, torch.Tensor]:
    """Pad prompts into a batch with pixel values for every image they contain."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        if side == "left":
            ids[i, length - len(p) :] = torch.tensor(p)
            mask[i, length - len(p) :] = 1
        else:
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
    n_images = int((ids == IMAGE_TOKEN).sum()) // PATCHES
    out = {"input_ids": ids, "attention_mask": mask}
    if n_images:
        g = torch.Generator().manual_seed(seed + 1)
        out["pixel_values"] = torch.randn(n_images, 3, 32, 32, generator=g)
    return out


def randomize_heads(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every decision module's zero-initialised head random weights, so scores are not all tied."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lvpruning_module" in name and ".head." in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))


def tiny_processor(chat_template: str | None = None):
    """A LlavaProcessor matching `tiny_llava`: word-level tokens w4..w119, <image> = 120, 32 px images,
    and lvpeft's LLaVA-1.5 training chat template (answers marked for `assistant_only_loss`)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    from lvpeft.training.data.llava_format import LLAVA_TRAINING_CHAT_TEMPLATE

    vocab = {"<pad>": PAD, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, IMAGE_TOKEN)})
    vocab.update({"<image>": IMAGE_TOKEN, "USER:": 121, "ASSISTANT:": 122})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(
        [AddedToken(t, special=True) for t in ("<pad>", "<s>", "</s>", "<unk>", "<image>")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=chat_template or LLAVA_TRAINING_CHAT_TEMPLATE,
    )


def write_tiny_model_dir(path) -> str:
    """Save a random tiny LLaVA (Llama decoder) and its processor to `path`, like a Hub checkpoint."""
    tiny_llava().save_pretrained(path, safe_serialization=True)
    tiny_processor().save_pretrained(path)
    return str(path)


def write_llava_json(folder, n: int = 12, seed: int = 0) -> tuple[str, str]:
    """A LLaVA-format JSON file of `n` single-image rows with one-word answers; returns (json, image dir)."""
    import json
    import os

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(os.path.join(images, name))
        question = " ".join(f"w{rng.integers(4, 100)}" for _ in range(3))
        rows.append(
            {
                "id": f"row{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": f"w{rng.integers(4, 100)}"},
                ],
            }
        )
    path = os.path.join(folder, "data.json")
    with open(path, "w") as handle:
        json.dump(rows, handle)
    return path, images


def unbatch(inputs: dict[str, torch.Tensor], prompts: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    """The one-by-one inputs of `batch(prompts)`, each with its own images (same pixel values)."""
    out, offset = [], 0
    for p in prompts:
        n = sum(t == IMAGE_TOKEN for t in p) // PATCHES
        single = batch([p])
        if n:
            single["pixel_values"] = inputs["pixel_values"][offset : offset + n]
        offset += n
        out.append(single)
    return out


def cache_lengths(cache) -> list[int]:
    """Number of cached key slots of every decoder layer of a `DynamicCache`."""
    return [layer.keys.shape[-2] for layer in cache.layers]


def expected_cache_lengths(
    prompts: list[list[int]], layers: list[int], ratios: list[float], num_layers: int = 4
) -> list[int]:
    """Per decoder layer, the prefill KV-cache length the keep schedule implies for `batch(prompts)`.

    Layers before the first module hold the padded input; a layer after module s holds, per sample,
    its text tokens plus `keep_counts(n_vision, ratios[s])` vision tokens, re-packed with left padding
    (so the batch holds the maximum over samples). Text-only batches are never pruned.
    """
    from lvpeft.pruning.decisions import keep_counts

    padded = max(len(p) for p in prompts)
    n_vision = torch.tensor([sum(t == IMAGE_TOKEN for t in p) for p in prompts])
    n_text = torch.tensor([len(p) for p in prompts]) - n_vision
    if not bool(n_vision.any()):
        return [padded] * num_layers
    out = []
    for i in range(num_layers):
        stage = max((s for s, p in enumerate(layers) if p <= i), default=-1)
        if stage < 0:
            out.append(padded)
        else:
            out.append(int((n_text + keep_counts(n_vision, ratios[stage])).max()))
    return out
