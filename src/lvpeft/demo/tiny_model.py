"""A tiny LLaVA built from configs only, its offline processor, and the copy the package ships.

The model is a stock ``transformers.LlavaForConditionalGeneration`` with the same classes as
LLaVA-1.5 (a CLIP vision tower, a two-layer GELU projector, a Llama decoder), only small:

* vision: ``CLIPVisionModel``, 96 px images, patch 8 -> 12 x 12 = 144 patch tokens + CLS;
  ``vision_feature_select_strategy="default"`` drops CLS, so the decoder sees 144 vision tokens;
* decoder: ``LlamaForCausalLM`` over a word-level vocabulary of the synthetic scenes task
  (:mod:`lvpeft.demo.scenes`).

The processor is a ``LlavaProcessor`` made of a ``tokenizers`` WordLevel tokenizer (wrapped in
``PreTrainedTokenizerFast``) and a CLIP image processor (PIL backend, 96 px, no crop). It expands one
``<image>`` in the text into 144 image tokens and carries the chat template
``"USER: <image>\\n{question} ASSISTANT:"``. Nothing here touches the Hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .questions import vocabulary
from .scenes import SceneConfig

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
"""The shipped base models, one folder each (`tiny_llava`, `tiny_llava_image_first`)."""

SHIPPED_BASE_DIR: Path = ASSETS_DIR / "tiny_llava"
"""Folder of the shipped, trained tiny LLaVA with the question before the image (4 decoder layers;
``save_pretrained`` output: safetensors + processor)."""

IMAGE_FIRST_BASE_DIR: Path = ASSETS_DIR / "tiny_llava_image_first"
"""Folder of the shipped tiny LLaVA in LLaVA-1.5's token order, image first (8 decoder layers)."""

SHIPPED_BASES: dict[str, Path] = {"question-first": SHIPPED_BASE_DIR, "image-first": IMAGE_FIRST_BASE_DIR}
"""The shipped bases by the name `lvpeft demo --base` and `load_base` accept."""

IMAGE_SIZE: int = 96
"""Image side in pixels."""
PATCH_SIZE: int = 8
"""Vision patch side in pixels."""
NUM_IMAGE_TOKENS: int = (IMAGE_SIZE // PATCH_SIZE) ** 2
"""Vision tokens per image in the decoder (144; CLS dropped)."""

TEXT_BACKBONES: dict[str, type] = {"llama": LlamaConfig, "qwen2": Qwen2Config}
"""Decoder families :func:`build_tiny_config` can build (the shipped bases use "llama")."""

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
"""Special tokens, with ids 0..4 in this order."""
CHAT_WORDS: tuple[str, ...] = ("USER", "ASSISTANT", ":")
"""Words of the chat template (``USER: ... ASSISTANT:``)."""


def _chat_template(question_first: bool) -> str:
    image = (
        "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    )
    image_after = (
        "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '\\n' }}<image>{% endif %}"
        "{% endfor %}"
    )
    text = (
        "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}"
    )
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}" + (text + image_after if question_first else image + text) + "{% endif %} "
        "{% elif message['role'] == 'assistant' %}ASSISTANT: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{% endif %}</s>"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


CHAT_TEMPLATE: str = _chat_template(question_first=False)
"""LLaVA-1.5 style template: ``USER: <image>\\n{question} ASSISTANT:`` (images first, then text)."""
QUESTION_FIRST_CHAT_TEMPLATE: str = _chat_template(question_first=True)
"""``USER: {question}\\n<image> ASSISTANT:``: the question before the image."""


def build_tokenizer(scene_config: SceneConfig | None = None) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the scenes vocabulary (special tokens, chat words, task words).

    Text is split on whitespace and punctuation; ``<s>`` is prepended when ``add_special_tokens=True``;
    padding is on the left (for batched ``generate``). ``tokenizer.image_token`` is ``"<image>"``.
    """
    words = [*SPECIAL_TOKENS, *CHAT_WORDS, *vocabulary(scene_config)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=256,
    )


def build_processor(scene_config: SceneConfig | None = None, question_first: bool = False) -> LlavaProcessor:
    """The tiny model's ``LlavaProcessor``: tokenizer, 96 px CLIP image processor, chat template.

    ``processor(images=[img], text=["USER: <image>\\n... ASSISTANT:"])`` returns ``pixel_values``
    ``(B, 3, 96, 96)`` float32 and ``input_ids`` ``(B, T)`` where the single ``<image>`` became
    :data:`NUM_IMAGE_TOKENS` image tokens.
    """
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(scene_config),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS; "default" removes it again -> 144 tokens
        chat_template=QUESTION_FIRST_CHAT_TEMPLATE if question_first else CHAT_TEMPLATE,
    )


def build_tiny_config(
    vocab_size: int,
    vision_hidden: int = 128,
    vision_layers: int = 4,
    text_hidden: int = 192,
    text_layers: int = 6,
    text_backbone: str = "llama",
) -> LlavaConfig:
    """``LlavaConfig`` of the tiny model (CLIP ``vision_layers`` x ``vision_hidden``, decoder
    ``text_layers`` x ``text_hidden``), ids matching :func:`build_tokenizer`.

    ``text_backbone`` picks the decoder family (:data:`TEXT_BACKBONES`): "llama" (the shipped bases,
    LLaVA-1.5's) or "qwen2" (the same sizes; Qwen2 adds biases to the q/k/v projections).

    Raises:
        ValueError: ``text_backbone`` is not one of :data:`TEXT_BACKBONES`.
    """
    if text_backbone not in TEXT_BACKBONES:
        raise ValueError(
            f"text_backbone={text_backbone!r} is not a decoder family the tiny model can build; "
            f"use one of {sorted(TEXT_BACKBONES)}"
        )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden // 32),
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=vision_hidden,
        hidden_act="quick_gelu",
    )
    text = TEXT_BACKBONES[text_backbone](
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=8 * text_hidden // 3 // 32 * 32,
        num_hidden_layers=text_layers,
        num_attention_heads=max(1, text_hidden // 32),
        num_key_value_heads=max(1, text_hidden // 32),
        max_position_embeddings=256,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=SPECIAL_TOKENS.index("<image>"),
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )


def build_tiny_llava(seed: int = 0, config: LlavaConfig | None = None) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA (float32, eval mode); same ``seed`` gives the same weights."""
    if config is None:
        config = build_tiny_config(vocab_size=len(build_tokenizer()))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    generation = model.generation_config
    generation.pad_token_id = config.text_config.pad_token_id
    generation.bos_token_id = config.text_config.bos_token_id
    generation.eos_token_id = config.text_config.eos_token_id
    return model.eval()


def load_shipped_base(
    path: str | Path | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load the shipped trained tiny LLaVA (float32, eval mode) and its processor.

    ``path`` defaults to :data:`SHIPPED_BASE_DIR`; weights are read from safetensors only.
    """
    path = Path(path) if path is not None else SHIPPED_BASE_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {path}; run scripts/train_base_model.py")
    model = LlavaForConditionalGeneration.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor


def build_prompts(processor: LlavaProcessor, questions: Sequence[str]) -> list[str]:
    """Render each question through the processor's chat template with a generation prompt."""
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]


def asks_question_first(processor: LlavaProcessor) -> bool:
    """Whether the processor's chat template puts the question before the image."""
    prompt = build_prompts(processor, ["QUESTION"])[0]
    image = processor.tokenizer.image_token
    return image in prompt and prompt.index("QUESTION") < prompt.index(image)


@torch.no_grad()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int = 3,
) -> list[str]:
    """Greedy answers (stripped text of the new tokens) for one question per image, batched."""
    inputs = processor(
        images=list(images), text=build_prompts(processor, questions), padding=True, return_tensors="pt"
    )
    inputs = inputs.to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def shipped_base_name(base_dir: str | Path | None) -> str:
    """How reports name a base: a shipped one by its name and folder, another by its path."""
    if base_dir is None or str(base_dir) in SHIPPED_BASES:
        name = "question-first" if base_dir is None else str(base_dir)
        return f"lvpeft shipped tiny LLaVA, {name} (lvpeft/demo/assets/{SHIPPED_BASES[name].name})"
    return str(base_dir)


def load_base(base_dir: str | Path | None = None) -> tuple[Any, Any]:
    """A tiny LLaVA and its processor, in eval mode: the shipped question-first one (None), a shipped
    one by name (`SHIPPED_BASES`: "question-first", "image-first"), or the one saved in `base_dir`.

    Raises:
        FileNotFoundError: no saved model there; the message says how to get one.
    """
    shipped = base_dir is None or str(base_dir) in SHIPPED_BASES
    path = SHIPPED_BASES.get(str(base_dir), SHIPPED_BASE_DIR) if shipped else Path(base_dir)
    try:
        return load_shipped_base(path)
    except FileNotFoundError as error:
        where = "the tiny LLaVA base model that lvpeft ships" if shipped else "a LLaVA base model"
        raise FileNotFoundError(
            f"lvpeft demo needs {where} in {path} (config.json, model.safetensors and the processor files), "
            "and there is none. Reinstall lvpeft from a release, train it in a source checkout with "
            "`python scripts/train_base_model.py` (about an hour on a CPU), or pass --base DIR with a "
            "LLaVA model and processor saved by save_pretrained."
        ) from error
