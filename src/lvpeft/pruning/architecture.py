"""Find the parts of a LLaVA-like model that LVPruning needs, or say clearly what is missing.

Nothing here assumes a Llama decoder: the language model only needs a `ModuleList` of decoder
layers that receive `hidden_states` positionally and the causal mask, RoPE embeddings and cache as
keyword arguments, which is how every decoder in transformers 5 is called (Llama, Mistral, Qwen2,
Gemma, ...). Where a model keeps those parts (and whether its family is supported at all) comes from
its family's description in `families.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .families import FAMILIES, FamilyDescription, describe_family, refused_list, supported_list

SUPPORTED_ATTENTION = ("eager", "sdpa")


@dataclass
class LlavaParts:
    """Handles on the pieces of a LLaVA-like model.

    Attributes:
        backbone: the module that holds `vision_tower` and `language_model` and merges image
            features into the token sequence (`LlavaModel`); it receives `input_ids`.
        language_model: the decoder stack (`LlamaModel`, `Qwen2Model`, ...).
        layers: its decoder layers, in order.
        image_token_id: id of the placeholder token that image features replace.
        video_token_id: id of the video placeholder token (pruned like image tokens), or None.
        hidden_size: d, the language model's width.
        sliding_windows: per decoder layer, the sliding-window length or None for full attention.
        family: the description the parts were found through (`families.py`).
        causal: the decoder's attention is causal when it gets no mask (False for PaliGemma's, which
            attends both ways unless its mask says otherwise), so sdpa's causal fast path is exact.
    """

    backbone: nn.Module
    language_model: nn.Module
    layers: nn.ModuleList
    image_token_id: int
    hidden_size: int
    sliding_windows: list[int | None]
    family: FamilyDescription | None = None
    causal: bool = True
    video_token_id: int | None = None

    @property
    def num_layers(self) -> int:
        """Depth of the decoder."""
        return len(self.layers)

    @property
    def attn_implementation(self) -> str:
        """The attention implementation the decoder runs with ("eager", "sdpa", ...)."""
        config = self.language_model.config
        return getattr(config, "_attn_implementation", None) or "eager"


def find_llava_parts(model: nn.Module) -> LlavaParts:
    """Locate the backbone, decoder layers and image token of a LLaVA-like `model`, through its
    family's description (`families.FAMILIES`).

    Raises:
        TypeError: the model's family is not described, is refused (the message says why), or lacks a
            part its description names; the message names the class and what is missing.
    """
    name = type(model).__name__
    family = describe_family(model)
    if family is None:
        raise TypeError(_unknown_family_message(model))
    if not family.supported:
        raise TypeError(
            f"LVPruning does not support {family.name} models ({name}) yet: {family.refused}. "
            f"Supported families: {supported_list()}."
        )
    backbone = model
    if not _is_backbone(backbone, family):
        backbone = getattr(model, "model", None)
    if backbone is None or not _is_backbone(backbone, family):
        wanted = (family.vision_attr, family.language_attr)
        missing = [a for a in wanted if not hasattr(backbone or model, a)]
        raise TypeError(
            f"LVPruning needs a LLaVA-like model; {name} is a {family.name} model, but it has no "
            f"{' and no '.join(missing)} (looked on the model and on `model.model`). "
            "Load the multimodal model class, not its language model alone."
        )
    config = getattr(model, "config", None)
    image_token_id = None
    for key in family.image_token_keys:
        image_token_id = getattr(config, key, None)
        if image_token_id is not None:
            break
    if image_token_id is None:
        keys = " nor ".join(f"`{k}`" for k in family.image_token_keys)
        raise TypeError(
            f"LVPruning needs to know which token is the image placeholder, but {name}.config has no "
            f"{keys}. Set it on the config."
        )
    language_model = getattr(backbone, family.language_attr)
    layers = getattr(language_model, family.layers_attr, None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(
            f"LVPruning needs the language model's decoder layers as a ModuleList `{family.layers_attr}`, "
            f"but {type(language_model).__name__} has none."
        )
    text_config = language_model.config
    causal = not getattr(text_config, "use_bidirectional_attention", False)
    if not causal and family.attention_blocks != "prefix":  # PaliGemma's own mask makes it a prefix-LM
        raise TypeError(
            f"LVPruning prunes causal decoders, but {name}'s language model attends bidirectionally "
            "(`use_bidirectional_attention=True`, an embedding model); load a generative checkpoint."
        )
    hidden_size = getattr(text_config, "hidden_size", None)
    if hidden_size is None:
        raise TypeError(
            f"{type(text_config).__name__} has no `hidden_size`; cannot size the decision modules."
        )
    return LlavaParts(
        backbone=backbone,
        language_model=language_model,
        layers=layers,
        image_token_id=int(image_token_id),
        hidden_size=int(hidden_size),
        sliding_windows=_sliding_windows(text_config, len(layers)),
        family=family,
        causal=causal,
        video_token_id=next(
            (int(v) for k in family.video_token_keys if (v := getattr(config, k, None)) is not None), None
        ),
    )


def check_attention(parts: LlavaParts) -> None:
    """Raise `ValueError` if the decoder runs an attention implementation pruning cannot drive."""
    impl = parts.attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"LVPruning supports attn_implementation in {SUPPORTED_ATTENTION}, but the language model uses "
            f"{impl!r}. Load the model with attn_implementation='sdpa' (or 'eager')."
        )


def _is_backbone(module: nn.Module | None, family: FamilyDescription) -> bool:
    return (
        module is not None and hasattr(module, family.vision_attr) and hasattr(module, family.language_attr)
    )


def _unknown_family_message(model: nn.Module) -> str:
    """Why `model` is refused when no family description matches it: its class, the supported list, and
    whether it looks like a language model alone (no vision encoder where any family keeps one)."""
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    message = (
        f"LVPruning needs a LLaVA-like multimodal model of a described family, but {name}"
        f"{f' (model_type {model_type!r})' if model_type else ''} is none of them. Supported families: "
        f"{supported_list()}. Known and refused until they are exact: {refused_list()}."
    )
    places = [m for m in (model, getattr(model, "model", None)) if m is not None]
    vision = sorted({f.vision_attr for f in FAMILIES}, key=lambda a: a != "vision_tower")
    language = sorted({f.language_attr for f in FAMILIES}, key=lambda a: a != "language_model")
    if not any(hasattr(m, a) for m in places for a in vision):
        missing = f"no {vision[0]}"
        others = vision[1:]
        if not any(hasattr(m, a) for m in places for a in language):
            missing += f" and no {language[0]}"
            others += language[1:]
        return (
            f"{message} {name} has {missing} (nor {', '.join(others)}; looked on the model and on "
            "`model.model`). Load the multimodal model class, not its language model alone."
        )
    return (
        f"{message} If {name} is LLaVA-like, describe its family in `lvpeft.pruning.families.FAMILIES` "
        "and check it with tests/test_families.py."
    )


def _sliding_windows(text_config: object, num_layers: int) -> list[int | None]:
    window = getattr(text_config, "sliding_window", None)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        return [window if t == "sliding_attention" else None for t in layer_types[:num_layers]]
    if getattr(text_config, "use_sliding_window", True) is False:
        return [None] * num_layers
    return [window] * num_layers
