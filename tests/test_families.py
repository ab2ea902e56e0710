"""Every described family (`lvpeft.pruning.families`), on a tiny random model built from its config.

Per supported family (eager and sdpa where marked): the adapter loads through the family's
description; adapter disabled == base, bit for bit; keep=1 == base (<= 1e-5); removal == the masked
reference (<= 1e-5; left-padded prefill and a 5-step greedy generate, right-padded prefill); batched ==
one by one; a late layer's KV cache holds fewer slots than the base's; training gradients reach the
decision modules only. Video frames (Qwen-VL family, LLaVA-NeXT-Video, LLaVA-OneVision) are pruned
like images, in one budget, exactly (Qwen-VL: M-RoPE).
Refused families and unknown classes get an error that names them and says why.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
import transformers as tf
from transformers import DynamicCache

from helpers import randomize_heads, tiny_text_kwargs, tiny_vision_kwargs
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.architecture import find_llava_parts
from lvpeft.pruning.decisions import keep_counts
from lvpeft.pruning.families import FAMILIES, describe_family, supported_families

VOCAB, IMAGE, VIDEO, VISION_START, PAD = 128, 120, 121, 122, 0
WINDOW = 8  # Gemma 3's sliding window: shorter than every prompt, so the window is exercised


def _qwen_vl(version: str) -> tuple[type, tf.PretrainedConfig]:
    text = tiny_text_kwargs(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    )
    tokens = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START)
    shape = dict(depth=1, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision = dict(embed_dim=32, hidden_size=64, mlp_ratio=2, **shape)
        return tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLConfig(
            text_config=text, vision_config=vision, **tokens
        )
    if version == "3":  # DeepStack: vision layers 0-2's features are added after decoder layers 0-2
        vision = dict(
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            deepstack_visual_indexes=[0, 1, 2],
            num_position_embeddings=16,
            **{**shape, "depth": 3},
        )
        text = {**text, "head_dim": 16}
        return tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLConfig(
            text_config=text, vision_config=vision, **tokens
        )
    if version == "3-moe":  # the same, with a mixture-of-experts decoder (4 experts, 2 per token)
        _, dense = _qwen_vl("3")
        vision = {k: v for k, v in dense.vision_config.to_dict().items() if k != "model_type"}
        text = {k: v for k, v in dense.text_config.to_dict().items() if k != "model_type"}
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        return tf.Qwen3VLMoeForConditionalGeneration, tf.Qwen3VLMoeConfig(
            text_config=text, vision_config=vision, **tokens
        )
    vision = dict(
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=64,
        window_size=16,
        fullatt_block_indexes=[0],
        **shape,
    )
    return tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, **tokens
    )


def _config(family: str) -> tuple[type, tf.PretrainedConfig]:
    """The model class and a tiny config of each family (1 vision layer, 4 decoder layers, 64 wide)."""
    backbones = {
        "llava-llama": tf.LlamaConfig,
        "llava-qwen2": tf.Qwen2Config,
        "llava-mistral": tf.MistralConfig,
    }
    if family in backbones:
        text = backbones[family]
        return tf.LlavaForConditionalGeneration, tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**tiny_vision_kwargs()),
            text_config=text(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    if family == "llava-next":
        return tf.LlavaNextForConditionalGeneration, tf.LlavaNextConfig(
            vision_config=tf.CLIPVisionConfig(**tiny_vision_kwargs()),
            text_config=tf.MistralConfig(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            image_grid_pinpoints=[[32, 32], [32, 64]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    if family == "llava-next-video":
        return tf.LlavaNextVideoForConditionalGeneration, tf.LlavaNextVideoConfig(
            vision_config=tf.CLIPVisionConfig(**tiny_vision_kwargs()),
            text_config=tf.MistralConfig(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            video_token_index=VIDEO,
            image_grid_pinpoints=[[32, 32], [32, 64]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    if family == "vipllava":
        return tf.VipLlavaForConditionalGeneration, tf.VipLlavaConfig(
            vision_config=tf.CLIPVisionConfig(**tiny_vision_kwargs(num_hidden_layers=2)),
            text_config=tf.LlamaConfig(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            vision_feature_layers=[-2, -1],
        )
    if family == "llava-onevision":
        return tf.LlavaOnevisionForConditionalGeneration, tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(**tiny_vision_kwargs()),
            text_config=tf.Qwen2Config(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            video_token_index=VIDEO,
            image_grid_pinpoints=[[32, 32]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    if family == "mistral3":
        vision = tf.PixtralVisionConfig(**tiny_vision_kwargs(image_size=64, head_dim=16))
        return tf.Mistral3ForConditionalGeneration, tf.Mistral3Config(
            vision_config=vision,
            text_config=tf.MistralConfig(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            spatial_merge_size=2,
            vision_feature_layer=-1,
        )
    if family == "internvl":
        vision = tf.InternVLVisionConfig(**tiny_vision_kwargs(image_size=[32, 32], patch_size=[4, 4]))
        return tf.InternVLForConditionalGeneration, tf.InternVLConfig(
            vision_config=vision,
            text_config=tf.Qwen2Config(**tiny_text_kwargs()),
            image_token_id=IMAGE,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
        )
    if family == "aya-vision":
        return tf.AyaVisionForConditionalGeneration, tf.AyaVisionConfig(
            vision_config=tf.SiglipVisionConfig(**tiny_vision_kwargs(patch_size=4)),
            text_config=tf.Cohere2Config(**tiny_text_kwargs()),
            image_token_index=IMAGE,
            downsample_factor=2,
            vision_feature_layer=-1,
        )
    if family == "qwen2-vl":
        return _qwen_vl("2")
    if family == "qwen2.5-vl":
        return _qwen_vl("2.5")
    if family in ("idefics3", "smolvlm"):
        idefics = family == "idefics3"
        vision_config = tf.Idefics3VisionConfig if idefics else tf.SmolVLMVisionConfig
        vision = vision_config(**tiny_vision_kwargs(patch_size=4))
        config = (tf.Idefics3Config if idefics else tf.SmolVLMConfig)(
            vision_config=vision,
            text_config=tf.LlamaConfig(**tiny_text_kwargs()),
            image_token_id=IMAGE,
            scale_factor=2,
        )
        model = tf.Idefics3ForConditionalGeneration if idefics else tf.SmolVLMForConditionalGeneration
        return model, config
    if family == "gemma3":  # sliding-window layers with a window shorter than the prompts
        text = tf.Gemma3TextConfig(
            **tiny_text_kwargs(
                head_dim=16, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"] * 2
            )
        )
        vision = tf.SiglipVisionConfig(**tiny_vision_kwargs())
        return tf.Gemma3ForConditionalGeneration, tf.Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=16, image_token_index=IMAGE
        )
    if family == "paligemma":
        text = tf.GemmaConfig(**tiny_text_kwargs(head_dim=16))
        vision = tf.SiglipVisionConfig(**tiny_vision_kwargs())
        return tf.PaliGemmaForConditionalGeneration, tf.PaliGemmaConfig(
            text_config=text, vision_config=vision, image_token_index=IMAGE, projection_dim=64
        )
    if family == "qwen3-vl":
        return _qwen_vl("3")
    if family == "qwen3-vl-moe":
        return _qwen_vl("3-moe")
    raise ValueError(family)


# family -> (description name, image tokens per image)
CASES = {
    "llava-llama": ("LLaVA", 16),
    "llava-qwen2": ("LLaVA", 16),
    "llava-mistral": ("LLaVA", 16),
    "llava-next": ("LLaVA-NeXT", 36),
    "llava-next-video": ("LLaVA-NeXT-Video", 36),
    "llava-onevision": ("LLaVA-OneVision", 36),
    "vipllava": ("VipLlava", 16),
    "mistral3": ("Mistral3", 16),
    "internvl": ("InternVL", 16),
    "aya-vision": ("AyaVision", 16),
    "qwen2-vl": ("Qwen2-VL", 16),
    "qwen2.5-vl": ("Qwen2.5-VL", 16),
    "idefics3": ("Idefics3", 16),
    "smolvlm": ("SmolVLM", 16),
    "gemma3": ("Gemma 3", 16),
    "paligemma": ("PaliGemma", 16),
    "qwen3-vl": ("Qwen3-VL", 16),
    "qwen3-vl-moe": ("Qwen3-VL", 16),
}


ATTENTION = ["eager", "sdpa"]


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A random tiny model of `family`, in eval mode."""
    model_class, config = _config(family)
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if family == "gemma3":  # its init zeroes the projector: every image token would be the same
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model


def _pixels(family: str, images: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if family in (
        "llava-next",
        "llava-next-video",
        "llava-onevision",
    ):  # base image and one anyres tile per image
        return {
            "pixel_values": torch.randn(images, 2, 3, 32, 32, generator=g),
            "image_sizes": torch.tensor([[32, 32]] * images),
        }
    if family == "mistral3":
        return {
            "pixel_values": torch.randn(images, 3, 64, 64, generator=g),
            "image_sizes": torch.tensor([[64, 64]] * images),
        }
    if family.startswith("qwen"):  # 8x8 patches of 4 px, 2 frames, merged 2x2: 16 tokens per image
        return {
            "pixel_values": torch.randn(images * 64, 3 * 2 * 4 * 4, generator=g),
            "image_grid_thw": torch.tensor([[1, 8, 8]] * images),
        }
    if family in ("idefics3", "smolvlm"):
        return {"pixel_values": torch.randn(images, 1, 3, 32, 32, generator=g)}
    return {"pixel_values": torch.randn(images, 3, 32, 32, generator=g)}


@cache
def _inputs(family: str, rows: tuple[int, ...] = (0, 1), side: str = "left") -> dict[str, torch.Tensor]:
    """Padded prompts of different lengths, one image each (`rows` picks some, with their images)."""
    tokens = CASES[family][1]
    prompts = [
        [1, 5, 6, *[IMAGE] * tokens, 7, 8, 9, 10, 11],
        [1, 12, 13, 14, 15, *[IMAGE] * tokens, 17, 18],
    ]
    prompts = [prompts[i] for i in rows]
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), PAD)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        start = length - len(p) if side == "left" else 0
        ids[i, start : start + len(p)] = torch.tensor(p)
        mask[i, start : start + len(p)] = 1
    pixels = _pixels(family, 2)  # the same pixel values whichever rows are taken
    per_image = 64 if family.startswith("qwen") else 1  # Qwen2-VL: 64 patch rows per image
    for key, value in pixels.items():
        step = per_image if key == "pixel_values" else 1
        pixels[key] = torch.cat([value[i * step : (i + 1) * step] for i in rows])
    out = {"input_ids": ids, "attention_mask": mask, **pixels}
    if family.startswith("qwen"):
        out["mm_token_type_ids"] = (ids == IMAGE).int()
    if family == "gemma3":  # 1 marks image tokens: each image's tokens attend to each other both ways
        out["token_type_ids"] = (ids == IMAGE).long()
    if family == "paligemma":  # 0 marks the prefix (image and prompt), which attends both ways
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def _inputs_copy(family: str, rows: tuple[int, ...] = (0, 1)) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _inputs(family, rows).items()}


@cache
def _base_outputs(family: str, attn: str = "sdpa") -> tuple[torch.Tensor, list[int]]:
    """The base model's prefill logits and per-layer KV-cache lengths."""
    base = tiny_model(family, attn)
    inputs = _inputs_copy(family)
    cache_ = DynamicCache(config=base.config.get_text_config())
    with torch.no_grad():
        logits = base(**inputs, cache=cache_, use_cache=True).logits
    return logits, [layer.keys.shape[-2] for layer in cache_.layers]


def _pruned(family: str, keep: float = 0.25, attn: str = "sdpa") -> torch.nn.Module:
    model = get_lvpruning_model(tiny_model(family, attn), LVPruningConfig(keep=keep))
    randomize_heads(model)
    return model.eval()


GENERATE = dict(
    max_new_tokens=20, min_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True
)


def _realtiny_text_kwargs(family: str) -> torch.Tensor:
    inputs = _inputs(family)
    return (inputs["input_ids"] != IMAGE) & inputs["attention_mask"].bool()


@pytest.mark.parametrize("family", list(CASES))
def test_family_is_found_through_its_description(family: str) -> None:
    model = tiny_model(family)
    parts = find_llava_parts(model)
    assert parts.family is not None and parts.family.name == CASES[family][0]
    assert parts.image_token_id == IMAGE and parts.num_layers == 4 and parts.hidden_size == 64
    takes_video = family in ("llava-next-video", "llava-onevision") or family.startswith("qwen")
    assert parts.video_token_id == (VIDEO if takes_video else None)  # video tokens are pruned too
    assert describe_family(model) is parts.family


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", list(CASES))
def test_disabled_adapter_and_keep_one_equal_base(family: str, attn: str) -> None:
    expected, _ = _base_outputs(family, attn)
    real = _inputs(family)["attention_mask"].bool()
    model = _pruned(family, attn=attn)
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(**_inputs_copy(family)).logits, expected)
    with torch.no_grad():
        got = _pruned(family, keep=1.0, attn=attn)(**_inputs_copy(family)).logits
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    with torch.no_grad():  # one unpadded row: sdpa's causal fast path must not skip the family's own mask
        alone = _pruned(family, keep=1.0, attn=attn)(**_inputs_copy(family, (0,))).logits
        base_alone = tiny_model(family, attn)(**_inputs_copy(family, (0,))).logits
    torch.testing.assert_close(alone, base_alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", list(CASES))
def test_removal_matches_masked_reference(family: str, attn: str) -> None:
    model = _pruned(family, attn=attn)
    tuner = lvpruning_tuner(model)
    text = _realtiny_text_kwargs(family)
    with torch.no_grad():
        removed = model(**_inputs_copy(family)).logits
        with tuner.masked_inference():
            masked = model(**_inputs_copy(family)).logits
        removed_gen = model.generate(**_inputs_copy(family), **GENERATE)
        with tuner.masked_inference():
            masked_gen = model.generate(**_inputs_copy(family), **GENERATE)
    torch.testing.assert_close(removed[text], masked[text], atol=1e-5, rtol=0)
    expected, _ = _base_outputs(family, attn)
    assert not torch.allclose(removed[:, -1], expected[:, -1], atol=1e-3), "pruning had no effect"
    assert torch.equal(removed_gen.sequences, masked_gen.sequences)
    for a, b in zip(removed_gen.logits, masked_gen.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(CASES))
def test_right_padded_removal_matches_masked_reference(family: str) -> None:
    model = _pruned(family)
    inputs = _inputs(family, side="right")
    with torch.no_grad():
        removed = model(**{k: v.clone() for k, v in inputs.items()}).logits
        with lvpruning_tuner(model).masked_inference():
            masked = model(**{k: v.clone() for k, v in inputs.items()}).logits
    text = (inputs["input_ids"] != IMAGE) & inputs["attention_mask"].bool()
    torch.testing.assert_close(removed[text], masked[text], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(CASES))
def test_late_layer_kv_cache_is_pruned(family: str) -> None:
    _, base_lengths = _base_outputs(family)
    model = _pruned(family)
    cache_ = DynamicCache(config=model.get_base_model().config.get_text_config())
    with torch.no_grad():
        model(**_inputs_copy(family), cache=cache_, use_cache=True)
    lengths = [layer.keys.shape[-2] for layer in cache_.layers]
    assert lengths[0] == base_lengths[0]
    assert lengths[-1] < base_lengths[-1]


@pytest.mark.parametrize("family", list(CASES))
def test_batched_equals_one_by_one(family: str) -> None:
    model = _pruned(family)
    length = _inputs(family)["input_ids"].shape[1]
    with torch.no_grad():
        batched = model(**_inputs_copy(family)).logits[:, -1]
        tokens = model.generate(**_inputs_copy(family), max_new_tokens=5, do_sample=False)[:, length:]
        for i in (0, 1):
            single = _inputs_copy(family, (i,))
            torch.testing.assert_close(model(**single).logits[0, -1], batched[i], atol=1e-5, rtol=0)
            alone = model.generate(**single, max_new_tokens=5, do_sample=False)[
                0, single["input_ids"].shape[1] :
            ]
            assert alone.tolist() == tokens[i].tolist()


def _video_prompt(family: str, with_image: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1, L) ids and the model inputs of a prompt with one video and, or not, one image after it.

    Qwen-VL: 2 frames of 8x8 patches, 32 video tokens (Qwen3-VL: a timestamp token between the frames),
    16 image tokens. LLaVA-NeXT-Video: 4 frames of 32 px, pooled to 2x2 tokens each (16); LLaVA-OneVision:
    the same plus its newline token (17); their images: a base view and one anyres tile (36 tokens).
    """
    g = torch.Generator().manual_seed(3)
    if family.startswith("qwen"):
        video = [*[VIDEO] * 16, 4, *[VIDEO] * 16] if family.startswith("qwen3") else [VIDEO] * 32
        image = [6, *[IMAGE] * 16] if with_image else [6]
        ids = torch.tensor([[1, 5, *video, *image, 7, 8, 9]])
        inputs = {
            "pixel_values_videos": torch.randn(128, 96, generator=g),
            "video_grid_thw": torch.tensor([[2, 8, 8]]),
            "mm_token_type_ids": (ids == IMAGE).int() + 2 * (ids == VIDEO).int(),
        }
        if with_image:
            inputs.update(
                pixel_values=torch.randn(64, 96, generator=g), image_grid_thw=torch.tensor([[1, 8, 8]])
            )
    else:
        video = [VIDEO] * (16 if family == "llava-next-video" else 17)
        image = [6, *[IMAGE] * CASES[family][1]] if with_image else [6]
        ids = torch.tensor([[1, 5, *video, *image, 7, 8, 9]])
        inputs = {"pixel_values_videos": torch.randn(1, 4, 3, 32, 32, generator=g)}
        if with_image:
            inputs.update(_pixels(family, 1))
    return ids, {"input_ids": ids, "attention_mask": torch.ones_like(ids), **inputs}


@pytest.mark.parametrize("with_image", [True, False], ids=["video-and-image", "video-only"])
@pytest.mark.parametrize(
    "family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe", "llava-next-video", "llava-onevision"]
)
def test_video_frames_are_pruned_like_images(family: str, with_image: bool) -> None:
    """A prompt with a video and, or not, an image (`_video_prompt`): video and image tokens are pruned
    together, in one budget, exactly (Qwen-VL: M-RoPE positions of every kept frame token kept).

    Qwen3-VL separates a video's frames by timestamp text (one token here); its DeepStack features of
    both the video and the image follow the kept tokens."""
    ids, inputs = _video_prompt(family, with_image)

    def copy() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in inputs.items()}

    model = _pruned(family)
    tuner = lvpruning_tuner(model)
    cache_ = DynamicCache(config=model.get_base_model().config.get_text_config())
    with torch.no_grad():
        base = tiny_model(family)(**copy()).logits
        same = _pruned(family, keep=1.0)(**copy()).logits
        removed = model(**copy(), cache=cache_, use_cache=True).logits
        with tuner.masked_inference():
            masked = model(**copy()).logits
        removed_gen = model.generate(**copy(), **GENERATE)
        with tuner.masked_inference():
            masked_gen = model.generate(**copy(), **GENERATE)
    torch.testing.assert_close(same, base, atol=1e-5, rtol=0)
    vision = (ids == IMAGE) | (ids == VIDEO)
    torch.testing.assert_close(removed[~vision], masked[~vision], atol=1e-5, rtol=0)
    assert not torch.allclose(removed[0, -1], base[0, -1], atol=1e-3), "pruning had no effect"
    assert torch.equal(removed_gen.sequences, masked_gen.sequences)
    n = int(vision.sum())
    kept = [
        int(keep_counts(torch.tensor([n]), r)[0]) for r in model.peft_config["default"].resolve_schedule()
    ]
    text = ids.shape[1] - n
    assert [layer.keys.shape[-2] for layer in cache_.layers] == [text + k for k in (n, *kept)]
    assert tuner.pruning_stats.keep_ratios == pytest.approx([k / n for k in kept], abs=1e-6)


@pytest.mark.parametrize("family", list(CASES))
def test_training_gradients_reach_the_modules_only(family: str) -> None:
    model = get_lvpruning_model(tiny_model(family), LVPruningConfig(keep=0.25)).train()
    inputs = _inputs_copy(family)
    labels = inputs["input_ids"].clone()
    labels[(inputs["attention_mask"] == 0) | (labels == IMAGE)] = -100
    out = model(**inputs, labels=labels)
    assert out.logits.shape[:2] == labels.shape  # training masks, removes nothing
    (out.loss + lvpruning_tuner(model).pruning_stats.ratio_loss).backward()
    heads = {n: p.grad for n, p in model.named_parameters() if ".head." in n and "lvpruning" in n}
    assert heads and all(g is not None and g.abs().sum() > 0 for g in heads.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


@pytest.mark.parametrize("attn", ATTENTION)
def test_sliding_window_layers_past_the_window(attn: str) -> None:
    """Every layer slides (Mistral-v0.1 style) with a window of 8 over 23-24 token prompts: keep=1 equals
    the base and removal equals the masked reference through 20 decode steps, whose sliding caches keep
    only their last 7 slots (the window counts original positions)."""
    model_class, config = _config("llava-qwen2")
    text = config.text_config
    text.use_sliding_window, text.sliding_window = True, WINDOW
    text.layer_types = ["sliding_attention"] * text.num_hidden_layers
    for part in (config, text, config.vision_config):
        part._attn_implementation = attn

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return model_class(config).eval()

    with torch.no_grad():
        expected = fresh()(**_inputs_copy("llava-qwen2")).logits
        same = get_lvpruning_model(fresh(), LVPruningConfig(keep=1.0)).eval()(**_inputs_copy("llava-qwen2"))
    model = get_lvpruning_model(fresh(), LVPruningConfig(keep=0.25))
    randomize_heads(model)
    model.eval()
    tuner, text_slots = lvpruning_tuner(model), _realtiny_text_kwargs("llava-qwen2")
    with torch.no_grad():
        removed = model(**_inputs_copy("llava-qwen2")).logits
        with tuner.masked_inference():
            masked = model(**_inputs_copy("llava-qwen2")).logits
        removed_gen = model.generate(**_inputs_copy("llava-qwen2"), **GENERATE)
        with tuner.masked_inference():
            masked_gen = model.generate(**_inputs_copy("llava-qwen2"), **GENERATE)
    real = _inputs("llava-qwen2")["attention_mask"].bool()
    torch.testing.assert_close(same.logits[real], expected[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(removed[text_slots], masked[text_slots], atol=1e-5, rtol=0)
    assert not torch.allclose(removed[:, -1], expected[:, -1], atol=1e-3), "pruning had no effect"
    assert torch.equal(removed_gen.sequences, masked_gen.sequences)
    for a, b in zip(removed_gen.logits, masked_gen.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_every_supported_family_is_tested() -> None:
    assert {f.name for f in supported_families()} == {name for name, _ in CASES.values()}


# -- refused and unknown ----------------------------------------------------------------------------


class _Named(torch.nn.Module):
    """A stand-in with a refused family's parts, looked up by class name like the real class."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_tower = torch.nn.Identity()
        self.visual = torch.nn.Identity()
        self.vision_model = torch.nn.Identity()
        self.language_model = torch.nn.Identity()


REFUSED = {"Llama4ForConditionalGeneration": ("Llama 4", "cannot be checked: in transformers 5.24")}


@pytest.mark.parametrize("class_name", list(REFUSED))
def test_refused_family_names_itself_and_why(class_name: str) -> None:
    family, why = REFUSED[class_name]
    model = type(class_name, (_Named,), {})()
    with pytest.raises(
        TypeError, match=rf"does not support {family} models \({class_name}\) yet: .*{why}"
    ) as err:
        get_lvpruning_model(model)
    assert "Supported families: LLaVA (LlavaForConditionalGeneration)" in str(err.value)
    assert not any("lvpruning" in n for n, _ in model.named_modules()), "refused before touching the model"


def test_llama4_refusal_reason_still_holds() -> None:
    """Llama 4 is refused because transformers' own forward fails on a tiny model: when it no longer does,
    this test fails, and Llama 4 should get a description and the family matrix instead."""
    vision = tf.Llama4VisionConfig(
        **tiny_vision_kwargs(intermediate_size=128, patch_size=4),
        pixel_shuffle_ratio=0.5,
        projector_input_dim=64,
        projector_output_dim=64,
        vision_output_dim=64,
        rope_theta=10000,
    )
    text = tf.Llama4TextConfig(
        **tiny_text_kwargs(head_dim=16, intermediate_size=64, intermediate_size_mlp=128, num_local_experts=2)
    )
    model = tf.Llama4ForConditionalGeneration(
        tf.Llama4Config(vision_config=vision, text_config=text, image_token_index=IMAGE)
    ).eval()
    ids = torch.tensor([[1, 5, *[IMAGE] * 16, 7]])
    with pytest.raises(AttributeError, match="image_outputs"), torch.no_grad():
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))


def test_unknown_multimodal_class_names_itself_and_the_supported_list() -> None:
    model = type("MysteryVLMForConditionalGeneration", (_Named,), {})()
    with pytest.raises(TypeError) as err:
        get_lvpruning_model(model)
    message = str(err.value)
    assert "MysteryVLMForConditionalGeneration is none of them" in message
    for family in supported_families():
        assert f"{family.name} ({family.model_classes[0]})" in message
    assert "Known and refused until they are exact: Llama 4" in message
    assert "describe its family in `lvpeft.pruning.families.FAMILIES`" in message


def test_subclass_of_a_described_class_is_found() -> None:
    model_class, config = _config("llava-llama")
    model = type("MyLlava", (model_class,), {})(config)
    assert find_llava_parts(model).family.name == "LLaVA"


def test_descriptions_are_consistent() -> None:
    names = [c for f in FAMILIES for c in f.model_classes]
    assert len(names) == len(set(names)), "a class is described twice"
    for family in FAMILIES:
        assert family.positions in ("rope", "mrope")
        assert family.supported == (family.refused is None)


def test_bidirectional_language_model_is_refused() -> None:
    model = tiny_model("gemma3")
    model.config.text_config.use_bidirectional_attention = True
    with pytest.raises(TypeError, match=r"attends bidirectionally \(`use_bidirectional_attention=True`"):
        get_lvpruning_model(model)


def test_described_model_without_its_parts_names_the_family_and_the_part() -> None:
    model = tiny_model("qwen2-vl")
    del model.model.visual
    with pytest.raises(
        TypeError, match=r"Qwen2VLForConditionalGeneration is a Qwen2-VL model, but it has no visual"
    ):
        get_lvpruning_model(model)


def test_precomputed_image_features_count_as_images() -> None:
    """A forward that brings image features instead of pixels is pruned too, in every form a family
    accepts them (Idefics3 / SmolVLM also take a plain tensor, their deprecated form)."""
    from lvpeft.pruning.inputs import has_image_inputs

    assert has_image_inputs({"pixel_values": torch.zeros(1, 3, 8, 8)})
    assert has_image_inputs({"mm_encoder_outputs": torch.zeros(1, 4, 8)})
    assert has_image_inputs({"mm_encoder_outputs": {"image": torch.zeros(1, 4, 8)}})
    assert not has_image_inputs({"mm_encoder_outputs": None})
    assert not has_image_inputs({"mm_encoder_outputs": {}})
    assert not has_image_inputs({})


def test_readme_families_table_is_generated_and_current() -> None:
    """The README's family table is produced by scripts/update_families_table.py, not typed."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "update_families_table.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
