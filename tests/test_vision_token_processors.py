"""Vision-token counts (`lvpeft.tuner.vision_tokens.image_tokens`) of Qwen3-VL, Idefics3, SmolVLM, InternVL,
AyaVision and Mistral3 against transformers' own processors, built offline with the public checkpoints'
settings, for images of many shapes: the number of image placeholder tokens they write and the number of
views (tiles, global image, thumbnail) they hand the tower.

Offline limits: SmolVLM's processor needs `num2words` and Pixtral's (Mistral3) needs torchvision, neither
installed here; SmolVLM's image processor is then run inside an Idefics3 processor (the same prompt
expansion), and Mistral3 is checked against Pixtral's image processor (its `image_sizes`, from which the
processor writes (H'/28) x (W'/28) `[IMG]` tokens). InternVL's and Qwen3-VL's processors are built without
their video processors (torchvision), which images do not use.
"""

from __future__ import annotations

import numpy as np
import pytest
import transformers as tf
from PIL import Image
from transformers.processing_utils import ProcessorMixin

from family_processors import byte_tokenizer, qwen_tokenizer, skip_video_processors
from lvpeft.tuner.vision_tokens import image_tokens
from lvpeft.tuner.vision_tokens_tiles import idefics3_split, tiled_canvas

SIZES = [
    (672, 672),
    (480, 640),
    (300, 1000),
    (1000, 300),
    (20, 30),
    (100, 900),
    (1080, 1920),
    (364, 364),
    (729, 364),
    (1457, 1456),
    (3000, 200),
]
"""(H, W): square, landscape, portrait, tiny, extreme aspect ratios, Full HD, exactly one tile, just over."""

_SPECIALS = ["<pad>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
_AYA_SPECIALS = ["<|IMG_PATCH|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_LINE_BREAK|>"]


def _image(height: int, width: int) -> Image.Image:
    return Image.fromarray(np.zeros((height, width, 3), np.uint8))


def _placeholders(processor, tokenizer, text: str, token: str, size: tuple[int, int]) -> tuple[int, object]:
    out = processor(images=_image(*size), text=text, return_tensors="pt")
    return int((out["input_ids"] == tokenizer.convert_tokens_to_ids(token)).sum()), out["pixel_values"]


def test_qwen3_vl_counts_match_its_processor(monkeypatch) -> None:
    """Qwen3-VL: 16 px patches merged 2 x 2 within the public bounds 65,536 and 16,777,216 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    skip_video_processors(monkeypatch.setattr)
    size = {"shortest_edge": 65_536, "longest_edge": 16_777_216}
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, size=size)
    tokenizer = qwen_tokenizer()
    processor = tf.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer)
    config = tf.Qwen3VLConfig()
    text = "<|vision_start|><|image_pad|><|vision_end|>"
    for height, width in SIZES:
        count, _ = _placeholders(processor, tokenizer, text, "<|image_pad|>", (height, width))
        expected = image_tokens(config, (height, width))
        assert count == expected.llm_tokens, (height, width)
        assert expected.tower_tokens == 4 * expected.llm_tokens
    assert image_tokens(config, (672, 672)).llm_tokens == 441  # 21 x 21 merged tokens of 32 px
    assert image_tokens(config, (20, 30)).grid == (14, 20)  # scaled up past min_pixels (64 x 32^2)


@pytest.mark.parametrize(
    ("family", "tile", "patch", "scale", "edge"),
    [("idefics3", 364, 14, 2, 1456), ("smolvlm", 512, 16, 4, 2048)],  # Idefics3-8B, SmolVLM-256M/500M
)
def test_idefics3_and_smolvlm_counts_match_their_processor(family, tile, patch, scale, edge) -> None:
    """Tiles of the tower's side plus the global image, (S/P)^2 / s^2 `<image>` tokens each (169; 64)."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    image_processor = Idefics3ImageProcessorPil if family == "idefics3" else SmolVLMImageProcessorPil
    images = image_processor(size={"longest_edge": edge}, max_image_size={"longest_edge": tile})
    seq = (tile // patch) ** 2 // scale**2
    tokenizer = byte_tokenizer(_SPECIALS, pad_token="<pad>")
    processor = tf.Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=seq)
    config_class = tf.Idefics3Config if family == "idefics3" else tf.SmolVLMConfig
    config = config_class(vision_config={"image_size": tile, "patch_size": patch}, scale_factor=scale)
    for height, width in SIZES:
        count, pixels = _placeholders(processor, tokenizer, "<image>", "<image>", (height, width))
        expected = image_tokens(config, (height, width))
        assert count == expected.llm_tokens, (height, width)
        assert pixels.shape[1] == expected.views and pixels.shape[-2:] == (tile, tile), (height, width)
    assert image_tokens(config, (672, 672)).grid == (4, 4)  # every image's longest side goes to 4 tiles
    assert idefics3_split(300, 1000, tile=364, longest_edge=1456) == (2, 4, (728, 1456))


@pytest.mark.parametrize(
    ("family", "tile", "seq"), [("internvl", 448, 256), ("aya_vision", 364, 169)]
)  # InternVL3 (448 px, pixel shuffle 0.5), aya-vision-8b (364 px SigLIP, downsample 2)
def test_internvl_and_aya_vision_counts_match_their_processor(monkeypatch, family, tile, seq) -> None:
    """GOT-OCR2's tiles (at most 12, the grid closest to the image's aspect ratio) plus a thumbnail."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    images = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile})
    if family == "internvl":

        def images_only(cls: type) -> list[str]:
            return [a for a in ProcessorMixin.get_attributes.__func__(cls) if a != "video_processor"]

        monkeypatch.setattr(tf.InternVLProcessor, "get_attributes", classmethod(images_only))
        markers = {"start_image_token": "<img>", "end_image_token": "</img>", "video_token": "<video>"}
        tokenizer = byte_tokenizer(
            ["<pad>", "<IMG_CONTEXT>", "<img>", "</img>", "<video>"],
            pad_token="<pad>",
            extra_special_tokens={**markers, "context_image_token": "<IMG_CONTEXT>"},
        )
        processor = tf.InternVLProcessor(image_processor=images, tokenizer=tokenizer, image_seq_length=seq)
        text = token = "<IMG_CONTEXT>"
        vision = {"image_size": [tile, tile], "patch_size": [14, 14]}
        config = tf.InternVLConfig(vision_config=vision, downsample_ratio=0.5)
    else:
        tokenizer = byte_tokenizer([*_SPECIALS, *_AYA_SPECIALS], pad_token="<pad>")
        processor = tf.AyaVisionProcessor(
            image_processor=images, tokenizer=tokenizer, patch_size=14, downsample_factor=2, img_size=tile
        )
        text, token = "<image>", "<|IMG_PATCH|>"
        vision = {"model_type": "siglip_vision_model", "image_size": tile, "patch_size": 14}
        config = tf.AyaVisionConfig(vision_config=vision, downsample_factor=2)
    for height, width in SIZES:
        count, pixels = _placeholders(processor, tokenizer, text, token, (height, width))
        expected = image_tokens(config, (height, width))
        assert count == expected.llm_tokens and expected.llm_tokens == seq * expected.views, (height, width)
        assert pixels.shape[0] == expected.views, (height, width)
    assert image_tokens(config, (672, 672)).views == 5  # 2 x 2 tiles (a tie with 1 x 1) and a thumbnail
    assert image_tokens(config, (tile, tile)).views == 1  # one tile: no thumbnail
    assert image_tokens(config, (1080, 1920), max_tiles=1).views == 1
    assert tiled_canvas(1080, 1920, tile=tile) == (2, 4)


def test_mistral3_counts_match_pixtrals_image_processor() -> None:
    """Mistral-Small-3.1's Pixtral: scaled down into 1,540 px, rounded up to 28 px (14 px patches, 2 x 2
    merge): the image processor's `image_sizes` are the resized sizes the count uses."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    # PixtralProcessor passes patch_size x spatial_merge_size = 28 to its image processor
    images = PixtralImageProcessorPil(size={"longest_edge": 1540}, patch_size={"height": 28, "width": 28})
    vision = {"model_type": "pixtral", "image_size": 1540, "patch_size": 14}
    config = tf.Mistral3Config(vision_config=vision, spatial_merge_size=2)
    for height, width in SIZES:
        out = images(images=_image(height, width), return_tensors="pt")
        expected = image_tokens(config, (height, width))
        assert out["image_sizes"].tolist() == [list(expected.resized)], (height, width)
        assert expected.llm_tokens == (expected.resized[0] // 28) * (expected.resized[1] // 28)
        assert expected.tower_tokens == 4 * expected.llm_tokens
    assert image_tokens(config, (1080, 1920)).resized == (868, 1540)
    assert image_tokens(config, (1080, 1920), longest_edge=1024).llm_tokens == 21 * 37
