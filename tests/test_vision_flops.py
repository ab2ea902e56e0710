"""Per-family vision-token counts and FLOPs (`lvpeft.tuner.vision_tokens`, `lvpeft.tuner.vision_flops`):
the token counts against transformers' own processors and models, the analytic FLOPs of every counted
family against `torch.utils.flop_counter.FlopCounterMode` on a tiny random model, part by part, with the
pixel inputs `lvpeft bench` builds for that family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lvpeft.measure.bench_models import _finish, _pixel_inputs
from lvpeft.tuner.flops import estimate_flops
from lvpeft.tuner.vision_flops_qwen import qwen_window_sizes
from lvpeft.tuner.vision_tokens import anyres_grid, flops_family, image_tokens
from test_families import _config as family_config

IMAGE, VOCAB = 120, 128
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's
SIZES = [(672, 672), (480, 640), (300, 1000), (1000, 300), (336, 336), (100, 900), (720, 1280)]


def _text(config_class: type = tf.LlamaConfig, **overrides) -> tf.PreTrainedConfig:
    kwargs = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    return config_class(**{**kwargs, **overrides})


def _tower(config_class: type = tf.CLIPVisionConfig, **overrides) -> tf.PreTrainedConfig:
    kwargs = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    return config_class(**{**kwargs, "image_size": 32, "patch_size": 8, **overrides})


def _qwen(version: str) -> tf.PreTrainedConfig:
    text = _text(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2]})
    tokens = dict(image_token_id=IMAGE, video_token_id=121, vision_start_token_id=122)
    shape = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision = dict(embed_dim=32, hidden_size=64, mlp_ratio=2, **shape)
        return tf.Qwen2VLConfig(text_config=text.to_dict(), vision_config=vision, **tokens)
    # windows of 16 px = 2 x 2 merged tokens = 4 x 4 patches; block 1 attends over the whole image
    vision = dict(
        hidden_size=32, out_hidden_size=64, intermediate_size=40, window_size=16, fullatt_block_indexes=[1]
    )
    return tf.Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config={**vision, **shape}, **tokens)


def tiny_config(family: str) -> tf.PreTrainedConfig:
    """A tiny config of each counted family: 2 vision layers, 2 decoder layers, 32 px views."""
    anyres = dict(image_token_index=IMAGE, vision_feature_layer=-2)
    if family == "llava-next":
        return tf.LlavaNextConfig(
            vision_config=_tower(),
            text_config=_text(tf.MistralConfig),
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64], [32, 96]],
            vision_feature_select_strategy="default",
            **anyres,
        )
    if family == "llava-onevision":  # at most 1 view's worth of tile features: reduced above 1.1x
        return tf.LlavaOnevisionConfig(
            vision_config=_tower(tf.SiglipVisionConfig),
            text_config=_text(tf.Qwen2Config),
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            vision_aspect_ratio="anyres_max_1",
            vision_feature_select_strategy="full",
            **anyres,
        )
    if family == "llava-siglip":  # "default" drops the first token although SigLIP has no CLS: 15 tokens
        return tf.LlavaConfig(
            vision_config=_tower(tf.SiglipVisionConfig),
            text_config=_text(),
            image_token_index=IMAGE,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    if family == "vipllava":
        return tf.VipLlavaConfig(
            vision_config=_tower(),
            text_config=_text(),
            image_token_index=IMAGE,
            vision_feature_layers=[-2, -1],
        )
    if family in ("qwen2-vl", "qwen2.5-vl"):
        return _qwen("2" if family == "qwen2-vl" else "2.5")
    if family == "gemma3":  # 8 x 8 patches pooled 2 x 2 into 16 tokens; sliding window of 8 < the prompt
        text = _text(tf.Gemma3TextConfig, head_dim=24, sliding_window=8)
        vision = _tower(tf.SiglipVisionConfig, patch_size=4, vision_use_head=False)
        return tf.Gemma3Config(
            vision_config=vision, text_config=text, mm_tokens_per_image=16, image_token_index=IMAGE
        )
    if family == "paligemma":  # SigLIP with its pooling head, which PaliGemma computes and ignores
        vision = _tower(tf.SiglipVisionConfig, vision_use_head=True)
        return tf.PaliGemmaConfig(
            vision_config=vision,
            text_config=_text(tf.GemmaConfig, head_dim=16),
            image_token_index=IMAGE,
            projection_dim=64,
            hidden_size=64,
        )
    raise ValueError(family)


MODEL_CLASSES = {
    "llava-siglip": tf.LlavaForConditionalGeneration,
    "llava-next": tf.LlavaNextForConditionalGeneration,
    "llava-onevision": tf.LlavaOnevisionForConditionalGeneration,
    "vipllava": tf.VipLlavaForConditionalGeneration,
    "qwen2-vl": tf.Qwen2VLForConditionalGeneration,
    "qwen2.5-vl": tf.Qwen2_5_VLForConditionalGeneration,
    "gemma3": tf.Gemma3ForConditionalGeneration,
    "paligemma": tf.PaliGemmaForConditionalGeneration,
}
FAMILY_TEST_CONFIGS = (
    "qwen3-vl",
    "qwen3-vl-moe",
    "idefics3",
    "smolvlm",
    "mistral3",
    "internvl",
    "aya-vision",
)
"""Families whose tiny config is test_families.py's (1-3 vision layers, 4 decoder layers, 64 wide)."""
FAMILIES = [*MODEL_CLASSES, *FAMILY_TEST_CONFIGS]
# family -> image (H, W) in pixels for the cross-check: odd sizes, so that tiles are unpadded, reduced
# (OneVision), Qwen windows are cut at the edges, images are split into tiles (Idefics3, SmolVLM: 2 x 4
# and a global image; InternVL, AyaVision: 1 x 2 and a thumbnail) and scaled down (Mistral3's Pixtral)
IMAGE_SIZES = {
    "llava-next": (40, 90),
    "llava-onevision": (50, 60),
    "qwen2-vl": (40, 56),
    "qwen2.5-vl": (40, 56),
    **dict.fromkeys(FAMILY_TEST_CONFIGS, (40, 90)),
}


def _model_and_config(family: str) -> tuple[type, tf.PreTrainedConfig]:
    if family in MODEL_CLASSES:
        return MODEL_CLASSES[family], tiny_config(family)
    model_class, config = family_config(family)
    if family == "qwen3-vl-moe":  # MoE in layers 1 and 3 only; experts as a loop of matrix products
        config.text_config.decoder_sparse_step = 2  # (FlopCounterMode misses the default grouped_mm's)
        config.text_config._experts_implementation = "eager"
    return model_class, config


def _parts(family: str) -> tuple[str, list[str], str]:
    """(vision tower, projector modules, language model) under `model.`; a projector module inside the
    tower (the Qwen mergers) is taken out of the tower's count."""
    if family.startswith("qwen"):
        deepstack = ["visual.deepstack_merger_list"] if family.startswith("qwen3-vl") else []
        return "visual", ["visual.merger", *deepstack], "language_model"
    if family in ("idefics3", "smolvlm"):
        return "vision_model", ["connector"], "text_model"
    return "vision_tower", ["multi_modal_projector"], "language_model"


def _measure(family: str, text_tokens: int = 9) -> tuple[dict[str, int], object]:
    """FlopCounterMode's counts of one prefill (logits of the last position), per part, and the estimate;
    the pixel inputs are `lvpeft bench`'s for the family (`bench_models._pixel_inputs`)."""
    model_class, config = _model_and_config(family)
    size = IMAGE_SIZES.get(family, (32, 32))
    report = estimate_flops(config, text_tokens=text_tokens, image_size=size, min_pixels=64)
    torch.manual_seed(0)
    model = model_class(config).eval()
    n = report.vision_tokens
    ids = torch.cat(
        [torch.tensor([[1, 5]]), torch.full((1, n), IMAGE), torch.arange(7, 7 + text_tokens - 2)[None]], 1
    )
    image = image_tokens(config, size, min_pixels=64)
    pixels = _pixel_inputs(config, image, 1, torch.Generator().manual_seed(0))
    inputs = _finish(model, ids, torch.ones_like(ids), pixels)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(**inputs, logits_to_keep=1)
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    prefix = f"{type(model).__name__}.model."

    def flops(name: str) -> int:  # a ModuleList has no entry of its own: the sum of its children
        name = prefix + name
        children = (k for k in counts if k.startswith(name + ".") and "." not in k[len(name) + 1 :])
        return counts[name] if name in counts else sum(counts[k] for k in children)

    tower, projectors, decoder = _parts(family)
    inside = sum(flops(name) for name in projectors if name.startswith(tower + "."))
    parts = {
        "vision": flops(tower) - inside,
        "projector": sum(flops(name) for name in projectors),
        "decoder": flops(decoder),
        "lm_head": counts[f"{type(model).__name__}.lm_head"],
        "total": counter.get_total_flops(),
    }
    return parts, report


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_matches_flop_counter(family: str) -> None:
    """Every part equals what torch counts, exactly: FlopCounterMode counts matrix products only, as the
    analytic count does (Gemma 3's sliding-window layers too: their mask skips no product). The model
    also accepted exactly the estimated number of image tokens (it raises on any other)."""
    measured, report = _measure(family)
    for part in ("vision", "projector", "decoder", "lm_head"):
        assert measured[part] == getattr(report.base, part), part
    assert measured["total"] == report.base.total


def test_tiny_families_token_counts() -> None:
    """The cross-checks above run on these counts (the model raises on any other placeholder count)."""
    counts = {
        f: image_tokens(_model_and_config(f)[1], IMAGE_SIZES.get(f, (32, 32)), min_pixels=64)
        for f in FAMILIES
    }
    assert counts["llava-next"].grid == (1, 3) and counts["llava-next"].views == 4
    assert counts["qwen2.5-vl"].grid == (10, 14) and counts["qwen2.5-vl"].llm_tokens == 35
    assert counts["gemma3"].llm_tokens == 16 and counts["gemma3"].tower_tokens == 64
    assert counts["paligemma"].llm_tokens == 16
    assert counts["vipllava"].llm_tokens == 16
    assert counts["llava-siglip"].llm_tokens == 15
    # OneVision: 2 x 2 tiles of 4 x 4 features, unpadded to 8 x 6 (48 > 1.1 x 16): reduced
    assert counts["llava-onevision"].llm_tokens < 16 + 48 + 8
    # Qwen3-VL: 4 px patches merged 2 x 2: 40 x 90 -> 40 x 88 px, 10 x 22 patches, 55 tokens
    assert counts["qwen3-vl"].grid == (10, 22) and counts["qwen3-vl"].llm_tokens == 55
    # Idefics3 / SmolVLM: longest side to 4 x 32 = 128, 56 -> 64 rows: 2 x 4 tiles + the global image,
    # 8 x 8 patches each shuffled 2 x 2 into 16 tokens
    for family in ("idefics3", "smolvlm"):
        assert (counts[family].grid, counts[family].views, counts[family].llm_tokens) == ((2, 4), 9, 144)
    # Mistral3: scaled into 64 px (28 x 64), rounded up to 16 px: 32 x 64, 4 x 8 patches merged into 8 tokens
    assert counts["mistral3"].resized == (32, 64) and counts["mistral3"].llm_tokens == 8
    # InternVL / AyaVision: a 1 x 2 grid (aspect 2.25) and a thumbnail, 16 tokens each; InternViT's CLS
    assert counts["internvl"].views == counts["aya-vision"].views == 3
    assert counts["internvl"].llm_tokens == counts["aya-vision"].llm_tokens == 48
    assert (counts["internvl"].tower_tokens, counts["aya-vision"].tower_tokens) == (65, 64)


# -- token counts against transformers' processors ----------------------------------------------------


def _word_tokenizer() -> tf.PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(t, special=True) for t in vocab])
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def test_llava_next_counts_match_its_processor() -> None:
    """llava-v1.6's anyres: the processor's `<image>` tokens and tiles for images of many shapes."""
    images = tf.LlavaNextImageProcessorPil(
        image_grid_pinpoints=NEXT_PINPOINTS,
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
    )
    processor = tf.LlavaNextProcessor(
        image_processor=images,
        tokenizer=_word_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    config = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(image_size=336, patch_size=14),
        text_config=tf.MistralConfig(),
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_select_strategy="default",
    )
    for height, width in SIZES:
        image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
        out = processor(images=image, text="<image>", return_tensors="pt")
        expected = image_tokens(config, (height, width))
        assert int((out["input_ids"] == 4).sum()) == expected.llm_tokens, (height, width)
        assert out["pixel_values"].shape[1] == expected.views, (height, width)
    assert image_tokens(config, (672, 672)).llm_tokens == 2928  # 576 + 48 x 48 + 48 newlines
    assert anyres_grid(480, 640, NEXT_PINPOINTS, 336) == (2, 2)


@pytest.mark.parametrize("max_pixels", [12_845_056, 200_000])
def test_qwen_grid_matches_its_image_processor(max_pixels: int) -> None:
    """Qwen2-VL's `smart_resize`: the image processor's `image_grid_thw` (both pixel bounds exercised)."""
    processor = tf.Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=max_pixels)
    config = tf.Qwen2_5_VLConfig()
    for height, width in [*SIZES, (20, 30), (1080, 1920)]:
        out = processor(images=Image.fromarray(np.zeros((height, width, 3), np.uint8)))
        expected = image_tokens(config, (height, width), max_pixels=max_pixels)
        assert out["image_grid_thw"].tolist() == [[1, *expected.grid]], (height, width)
        assert expected.llm_tokens == expected.grid[0] * expected.grid[1] // 4
    assert image_tokens(config, (672, 672)).llm_tokens == 576


def test_fixed_size_families_ignore_the_image_size() -> None:
    from lvpeft.measure.presets import gemma_3_4b_config, llava_1_5_7b_config

    for config, tokens in ((llava_1_5_7b_config(), 576), (gemma_3_4b_config(), 256)):
        counts = {image_tokens(config, size).llm_tokens for size in SIZES}
        assert counts == {tokens}
    assert image_tokens(gemma_3_4b_config()).tower_tokens == 64 * 64


def test_qwen_windows_cover_the_image() -> None:
    # 10 x 14 patches merged 2 x 2 into 5 x 7, windows of 2 x 2 merged tokens: 3 x 4 windows, cut at edges
    sizes = qwen_window_sizes(10, 14, 2, 2)
    assert len(sizes) == 12 and sum(sizes) == 140 and max(sizes) == 16 and min(sizes) == 4
    # Qwen2.5-VL at 672 x 672: 48 x 48 patches in 36 full windows of 8 x 8
    assert qwen_window_sizes(48, 48, 2, 4) == [64] * 36


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (tf.Llama4Config(), "Llama 4"),
        (tf.LlamaConfig(), "`llama`"),
    ],
)
def test_uncounted_families_are_refused_by_name(config: tf.PreTrainedConfig, name: str) -> None:
    with pytest.raises(ValueError, match=rf"do not count {name}.*counted families: LLaVA, VipLlava"):
        flops_family(config)
    with pytest.raises(ValueError, match=name):
        estimate_flops(config)


def test_bad_image_size_is_refused() -> None:
    config = tiny_config("qwen2.5-vl")
    for bad in [(0, 10), (10,), (10.5, 10)]:
        with pytest.raises(ValueError, match="image_size"):
            image_tokens(config, bad)
    for name, bad in [("longest_edge", 0), ("max_tiles", True)]:
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            estimate_flops(_model_and_config("internvl")[1], **{name: bad})
    internvl = _model_and_config("internvl")[1]
    internvl.vision_config.image_size = [32, 48]
    with pytest.raises(ValueError, match="square tiles"):
        image_tokens(internvl)


def test_onevision_counts_match_its_processors_formula() -> None:
    """LLaVA-OneVision's processor cannot be built offline here (its video processor needs torchvision):
    its own counting methods are called on a stand-in holding the checkpoints' settings (384 px SigLIP
    tiles, 729 tokens each, grids up to 6 x 6, anyres_max_9), for sizes below and above the reduction."""
    from types import SimpleNamespace

    processor = tf.LlavaOnevisionProcessor
    config = tf.LlavaOnevisionConfig(text_config=tf.Qwen2Config())
    stand_in = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints),
        num_image_tokens=729,
        vision_aspect_ratio="anyres_max_9",
    )
    stand_in._get_unpadded_features = lambda *args: processor._get_unpadded_features(stand_in, *args)
    for height, width in [*SIZES, (384, 384), (2000, 3000), (3000, 800), (1080, 1920)]:
        expected = processor._get_number_of_features(stand_in, height, width, 384, 384)
        assert image_tokens(config, (height, width)).llm_tokens == expected, (height, width)
    assert image_tokens(config, (2000, 3000)).views == 1 + 4 * 6  # reduced to about 9 views' worth
    assert image_tokens(config, (2000, 3000)).llm_tokens < 729 + 10 * 729
