"""Tiny processors configured like the public checkpoints of each family, built offline, for the chat
template tests (`test_chat_templates.py`) and the per-family `lvpeft train` tests.

Every tokenizer is byte-level with no merges (one token per byte, the family's special tokens whole), so a
rendered text round-trips exactly through its tokens and a label span decodes to exactly the text it
covers. Where the public tokenizer prepends a BOS (Llama / Mistral / Gemma / Llama 3), this one does too.
The public chat templates are fixtures in `fixtures/public_chat_templates/`, named after the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers as tf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

PUBLIC_TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "public_chat_templates"
IMAGE_SIDE = 32


def public_template(checkpoint: str) -> str:
    """The public chat template of `checkpoint` (e.g. "Qwen2.5-VL-7B-Instruct"), as the fixture holds it."""
    return (PUBLIC_TEMPLATES / f"{checkpoint}.jinja").read_text()


def byte_tokenizer(
    specials: list[str], *, add_bos: str | None = None, **tokens: Any
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: `specials` get ids 0.. in order, the 256 bytes follow.

    `add_bos` names a token the tokenizer prepends when `add_special_tokens=True` (as Llama's does);
    `tokens` are the `PreTrainedTokenizerFast` special-token arguments (bos_token, eos_token, ...).
    """
    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if add_bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{add_bos} $A", special_tokens=[(add_bos, vocab[add_bos])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=core, **tokens)


VIDEO_PROCESSORS = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen3VLProcessor", "LlavaOnevisionProcessor")


def skip_video_processors(setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Let the processors that also take a video processor be built, saved and loaded without one.

    transformers' video processors need torchvision, which this machine lacks; these tests use images only.
    Pass `monkeypatch.setattr` to undo it after a test.
    """

    def images_only(cls: type) -> list[str]:
        return [a for a in ProcessorMixin.get_attributes.__func__(cls) if a != "video_processor"]

    for name in VIDEO_PROCESSORS:
        setattr_(getattr(tf, name), "get_attributes", classmethod(images_only))


# -- one builder per family: (chat template) -> processor, configured like the public checkpoint ----------


def _llava_tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>"],
        add_bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def llava_processor(chat_template: str) -> Any:
    """llava-hf/llava-1.5-7b-hf's shape: CLIP (32 px, patch 8 + CLS, "default" drops it: 16 tokens)."""
    from transformers import CLIPImageProcessorPil

    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIDE}, crop_size=side)
    return tf.LlavaProcessor(
        image_processor=images,
        tokenizer=_llava_tokenizer(),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def llava_next_processor(chat_template: str) -> Any:
    """llava-hf/llava-v1.6-mistral-7b-hf's shape: anyres with one 32 px grid (base + one tile)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIDE}, crop_size=side, image_grid_pinpoints=[[IMAGE_SIDE, IMAGE_SIDE]]
    )
    return tf.LlavaNextProcessor(
        image_processor=images,
        tokenizer=_llava_tokenizer(),
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=chat_template,
    )


QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2's special tokens (no BOS; `<|im_end|>` ends a turn, `<|endoftext|>` pads)."""
    return byte_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def qwen_image_processor() -> Any:
    """Qwen2-VL's image processor at tiny scale: patch 4, merge 2 -> 16 tokens for a 32 px image."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = IMAGE_SIDE * IMAGE_SIDE
    return Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels
    )


def qwen2_5_vl_processor(chat_template: str) -> Any:
    """Qwen/Qwen2.5-VL-7B-Instruct's shape (call `skip_video_processors` first)."""
    return tf.Qwen2_5_VLProcessor(
        image_processor=qwen_image_processor(), tokenizer=qwen_tokenizer(), chat_template=chat_template
    )


def qwen3_vl_processor(chat_template: str) -> Any:
    """Qwen/Qwen3-VL-8B-Instruct's shape (call `skip_video_processors` first)."""
    return tf.Qwen3VLProcessor(
        image_processor=qwen_image_processor(), tokenizer=qwen_tokenizer(), chat_template=chat_template
    )


def llava_onevision_processor(chat_template: str) -> Any:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf's shape (call `skip_video_processors` first)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = byte_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    images = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_grid_pinpoints=[[IMAGE_SIDE, IMAGE_SIDE]]
    )
    return tf.LlavaOnevisionProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=chat_template,
    )


GEMMA3_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
GEMMA3_IMAGE_TOKENS = 16  # 32 px, patch 8, no pooling (as tests/test_families.py's tiny Gemma 3)


def gemma3_processor(chat_template: str) -> Any:
    """google/gemma-3-4b-it's shape: BOS prepended by the tokenizer, 4 soft tokens per 32 px image."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = byte_tokenizer(
        GEMMA3_SPECIALS,
        add_bos="<bos>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    return tf.Gemma3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
        chat_template=chat_template,
    )


def _idefics3_processor(chat_template: str, tokenizer: PreTrainedTokenizerFast) -> Any:
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    edge = {"longest_edge": IMAGE_SIDE}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=edge, max_image_size=edge)
    return tf.Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=4, chat_template=chat_template
    )


_IDEFICS_IMAGE_TOKENS = ["<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]


def idefics3_processor(chat_template: str) -> Any:
    """HuggingFaceM4/Idefics3-8B-Llama3's shape: Llama 3 tokens, BOS prepended, no image splitting."""
    tokenizer = byte_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", *_IDEFICS_IMAGE_TOKENS],
        add_bos="<|begin_of_text|>",
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|end_of_text|>",
    )
    return _idefics3_processor(chat_template, tokenizer)


def smolvlm_processor(chat_template: str) -> Any:
    """HuggingFaceTB/SmolVLM-Instruct's shape (an Idefics3 processor; SmolLM2's tokens, no BOS added)."""
    tokenizer = byte_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_IDEFICS_IMAGE_TOKENS],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
    )
    return _idefics3_processor(chat_template, tokenizer)


@dataclass(frozen=True)
class Family:
    """A family's processor as the public checkpoint has it, and what training on it must look like.

    Attributes:
        model_type: `config.model_type` of the checkpoint.
        checkpoint: the public checkpoint (its template is `public_template(checkpoint)`).
        build: chat template -> processor.
        answer: an answer's trained text, with `{}` for the answer (its end-of-turn token included).
    """

    model_type: str
    checkpoint: str
    build: Callable[[str], Any]
    answer: str


FAMILIES: dict[str, Family] = {
    "llava-1.5": Family("llava", "llava-1.5-7b-hf", llava_processor, "{}</s>"),
    "llava-next": Family("llava_next", "llava-v1.6-mistral-7b-hf", llava_next_processor, " {}</s>"),
    "llava-onevision": Family(
        "llava_onevision", "llava-onevision-qwen2-7b-ov-hf", llava_onevision_processor, "{}<|im_end|>"
    ),
    "qwen2.5-vl": Family("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct", qwen2_5_vl_processor, "{}<|im_end|>"),
    "qwen3-vl": Family("qwen3_vl", "Qwen3-VL-8B-Instruct", qwen3_vl_processor, "{}<|im_end|>"),
    "gemma3": Family("gemma3", "gemma-3-4b-it", gemma3_processor, "{}<end_of_turn>"),
    "idefics3": Family("idefics3", "Idefics3-8B-Llama3", idefics3_processor, " {}<end_of_utterance>"),
    "smolvlm": Family("idefics3", "SmolVLM-Instruct", smolvlm_processor, " {}<end_of_utterance>"),
}
"""The families whose training templates lvpeft ships, each as its public checkpoint has it."""
