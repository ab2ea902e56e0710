"""What each multimodal model family looks like to LVPruning: one description per family.

In the spirit of PEFT's per-model target-module mappings, `FAMILIES` is a table: where a family
keeps its vision encoder and its language model, which config key holds the image placeholder
token, how its decoder positions tokens (1-D RoPE or Qwen2-VL's M-RoPE) and what is known not to
work yet. `architecture.find_llava_parts` resolves a model's parts through it, so supporting a new
family is adding a description here (after checking it with `tests/test_families.py`), not an `if`
in the pruning machinery.

A family's own attention-mask rules (`attention_blocks`: Gemma 3's bidirectional image blocks,
PaliGemma's prefix-LM) and extra per-layer inputs (`deepstack`: Qwen3-VL) are described here too, and the
pruning machinery follows them over the kept tokens (`masks.py`, `hooks.py`). A description with
`refused` set names a family that is known NOT to be exact yet; loading it raises with that reason
instead of pruning it silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn


@dataclass(frozen=True)
class FamilyDescription:
    """Where a multimodal family keeps the parts LVPruning needs, and what it needs.

    Attributes:
        name: the family's name in messages ("LLaVA", "Qwen2-VL", ...).
        model_classes: transformers class names of the family (the `...ForConditionalGeneration`
            class and its backbone `...Model`); subclasses match through their MRO.
        model_types: the `config.model_type` values of the family (matched when no class does).
        vision_attr: the backbone's attribute holding the vision encoder.
        language_attr: the backbone's attribute holding the decoder stack (a `...Model`, not
            `...ForCausalLM`).
        layers_attr: the decoder stack's `ModuleList` of decoder layers.
        image_token_keys: config keys of the image placeholder token id, tried in order.
        video_token_keys: config keys of the video placeholder token id, tried in order (empty: the
            family takes no videos). Video tokens are pruned like image tokens, in one budget.
        positions: "rope" (1-D positions, `position_ids` (B, L)) or "mrope" (Qwen2-VL's 3-D
            multimodal RoPE: the decoder receives the composed (B, L, d) cos/sin tables and 2-D text
            `position_ids` or None, so gathering them per kept token is exact).
        attention_blocks: the model's own exceptions to causal attention at prefill, read from the
            `token_type_ids` the processor passes: "images" (Gemma 3: the tokens of one image attend to
            each other both ways; a sliding window still applies) or "prefix" (PaliGemma: the image and
            prompt prefix attends both ways, window or not); None for plain causal attention.
        deepstack: the decoder adds vision features to the vision tokens' hidden states after its
            first layers (Qwen3-VL's DeepStack, `_deepstack_process`); they follow the kept tokens.
        notes: what is checked, and known limits (e.g. video tokens are not pruned).
        refused: None for a supported family; else why it is refused (raised at load time).
    """

    name: str
    model_classes: tuple[str, ...]
    model_types: tuple[str, ...] = ()
    vision_attr: str = "vision_tower"
    language_attr: str = "language_model"
    layers_attr: str = "layers"
    image_token_keys: tuple[str, ...] = ("image_token_id", "image_token_index")
    video_token_keys: tuple[str, ...] = ()
    positions: Literal["rope", "mrope"] = "rope"
    attention_blocks: Literal["images", "prefix"] | None = None
    deepstack: bool = False
    notes: str = ""
    refused: str | None = None

    @property
    def supported(self) -> bool:
        """Whether LVPruning prunes this family (exactly: keep=1 == base, removal == masked)."""
        return self.refused is None


_VIDEO_NOTE = "video frames are pruned like images."
_VIDEO_KEYS = ("video_token_id", "video_token_index")

FAMILIES: tuple[FamilyDescription, ...] = (
    FamilyDescription(
        name="LLaVA",
        model_classes=("LlavaForConditionalGeneration", "LlavaModel"),
        model_types=("llava",),
        notes="Llama, Qwen2 and Mistral decoders checked.",
    ),
    FamilyDescription(
        name="LLaVA-NeXT",
        model_classes=("LlavaNextForConditionalGeneration", "LlavaNextModel"),
        model_types=("llava_next",),
        notes="anyres tiles and several image sizes in a batch.",
    ),
    FamilyDescription(
        name="LLaVA-NeXT-Video",
        model_classes=("LlavaNextVideoForConditionalGeneration", "LlavaNextVideoModel"),
        video_token_keys=_VIDEO_KEYS,
        model_types=("llava_next_video",),
        notes="video frames are pruned like images.",
    ),
    FamilyDescription(
        name="LLaVA-OneVision",
        model_classes=("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"),
        video_token_keys=_VIDEO_KEYS,
        model_types=("llava_onevision",),
        notes="video frames are pruned like images.",
    ),
    FamilyDescription(
        name="VipLlava",
        model_classes=("VipLlavaForConditionalGeneration", "VipLlavaModel"),
        model_types=("vipllava",),
    ),
    FamilyDescription(
        name="Mistral3",
        model_classes=("Mistral3ForConditionalGeneration", "Mistral3Model"),
        model_types=("mistral3",),
    ),
    FamilyDescription(
        name="InternVL",
        model_classes=("InternVLForConditionalGeneration", "InternVLModel"),
        model_types=("internvl",),
    ),
    FamilyDescription(
        name="AyaVision",
        model_classes=("AyaVisionForConditionalGeneration", "AyaVisionModel"),
        model_types=("aya_vision",),
    ),
    FamilyDescription(
        name="Qwen2-VL",
        model_classes=("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
        video_token_keys=_VIDEO_KEYS,
        model_types=("qwen2_vl",),
        vision_attr="visual",
        image_token_keys=("image_token_id",),
        positions="mrope",
        notes=_VIDEO_NOTE,
    ),
    FamilyDescription(
        name="Qwen2.5-VL",
        model_classes=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
        video_token_keys=_VIDEO_KEYS,
        model_types=("qwen2_5_vl",),
        vision_attr="visual",
        image_token_keys=("image_token_id",),
        positions="mrope",
        notes=_VIDEO_NOTE,
    ),
    FamilyDescription(
        name="Idefics3",
        model_classes=("Idefics3ForConditionalGeneration", "Idefics3Model"),
        model_types=("idefics3",),
        vision_attr="vision_model",
        language_attr="text_model",
        image_token_keys=("image_token_id",),
    ),
    FamilyDescription(
        name="SmolVLM",
        model_classes=("SmolVLMForConditionalGeneration", "SmolVLMModel"),
        model_types=("smolvlm",),
        vision_attr="vision_model",
        language_attr="text_model",
        image_token_keys=("image_token_id",),
    ),
    FamilyDescription(
        name="Gemma 3",
        model_classes=("Gemma3ForConditionalGeneration", "Gemma3Model"),
        model_types=("gemma3",),
        attention_blocks="images",
        notes="bidirectional image blocks and sliding-window layers past the window.",
    ),
    FamilyDescription(
        name="PaliGemma",
        model_classes=("PaliGemmaForConditionalGeneration", "PaliGemmaModel"),
        model_types=("paligemma",),
        attention_blocks="prefix",
        notes="prefix-LM attention over the image and prompt.",
    ),
    FamilyDescription(
        name="Qwen3-VL",
        model_classes=(
            "Qwen3VLForConditionalGeneration",
            "Qwen3VLModel",
            "Qwen3VLMoeForConditionalGeneration",
            "Qwen3VLMoeModel",
        ),
        video_token_keys=_VIDEO_KEYS,
        model_types=("qwen3_vl", "qwen3_vl_moe"),
        vision_attr="visual",
        image_token_keys=("image_token_id",),
        positions="mrope",
        deepstack=True,
        notes="DeepStack features follow the kept tokens; " + _VIDEO_NOTE,
    ),
    # -- known not to be exact yet: refused with the reason ---------------------------------------
    FamilyDescription(
        name="Llama 4",
        model_classes=("Llama4ForConditionalGeneration",),
        model_types=("llama4",),
        vision_attr="vision_model",
        refused=(
            "it cannot be checked: in transformers 5.24 `Llama4ForConditionalGeneration.forward` itself "
            "fails on any input (AttributeError: 'MoeCausalLMOutputWithPast' object has no attribute "
            "'image_outputs'); beyond that, its decoder sits one level deeper (`language_model.model`), "
            "its chunked-attention layers count chunks from the first real token, and its no-RoPE layers "
            "scale queries by slot index, none of which the pruning follows yet"
        ),
    ),
)


def supported_families() -> tuple[FamilyDescription, ...]:
    """The families LVPruning prunes, in table order."""
    return tuple(f for f in FAMILIES if f.supported)


def describe_family(model: nn.Module) -> FamilyDescription | None:
    """The description of `model`'s family, or None if no description matches.

    Matches the class names of `type(model)`'s MRO (so subclasses match) against `model_classes`, then
    `model.config.model_type` against `model_types`.
    """
    by_class = {c: f for f in FAMILIES for c in f.model_classes}
    for cls in type(model).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def supported_list() -> str:
    """The supported families and their classes, for messages."""
    return "; ".join(f"{f.name} ({f.model_classes[0]})" for f in supported_families())


def refused_list() -> str:
    """The refused families, for messages."""
    return ", ".join(f.name for f in FAMILIES if not f.supported)
