"""Find the parts of a LLaVA-like model that LVPruning needs, or say clearly what is missing.

Nothing here assumes a Llama decoder: the language model only needs a `ModuleList` of decoder
layers that receive `hidden_states` positionally and the causal mask, RoPE embeddings and cache as
keyword arguments, which is how every decoder in transformers 5 is called (Llama, Mistral, Qwen2,
Gemma, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

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
        hidden_size: d, the language model's width.
        sliding_windows: per decoder layer, the sliding-window length or None for full attention.
    """

    backbone: nn.Module
    language_model: nn.Module
    layers: nn.ModuleList
    image_token_id: int
    hidden_size: int
    sliding_windows: list[int | None]

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
    """Locate the backbone, decoder layers and image token of a LLaVA-like `model`.

    Raises:
        TypeError: the model is not LLaVA-like; the message names what is missing.
    """
    name = type(model).__name__
    backbone = model
    if not _is_backbone(backbone):
        backbone = getattr(model, "model", None)
    if backbone is None or not _is_backbone(backbone):
        missing = [a for a in ("vision_tower", "language_model") if not hasattr(backbone or model, a)]
        raise TypeError(
            "LVPruning needs a LLaVA-like model (e.g. transformers' LlavaForConditionalGeneration), but "
            f"{name} "
            f"has no {' and no '.join(missing)} (looked on the model and on `model.model`). "
            "Load the multimodal model class, not its language model alone."
        )
    config = getattr(model, "config", None)
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    if image_token_id is None:
        raise TypeError(
            f"LVPruning needs to know which token is the image placeholder, but {name}.config has no "
            "`image_token_id` (nor `image_token_index`). Set it on the config."
        )
    language_model = backbone.language_model
    layers = getattr(language_model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(
            f"LVPruning needs the language model's decoder layers as a ModuleList `layers`, but "
            f"{type(language_model).__name__} has none."
        )
    text_config = language_model.config
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
    )


def check_attention(parts: LlavaParts) -> None:
    """Raise `ValueError` if the decoder runs an attention implementation pruning cannot drive."""
    impl = parts.attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"LVPruning supports attn_implementation in {SUPPORTED_ATTENTION}, but the language model uses "
            f"{impl!r}. Load the model with attn_implementation='sdpa' (or 'eager')."
        )


def _is_backbone(module: nn.Module | None) -> bool:
    return module is not None and hasattr(module, "vision_tower") and hasattr(module, "language_model")


def _sliding_windows(text_config: object, num_layers: int) -> list[int | None]:
    window = getattr(text_config, "sliding_window", None)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        return [window if t == "sliding_attention" else None for t in layer_types[:num_layers]]
    if getattr(text_config, "use_sliding_window", True) is False:
        return [None] * num_layers
    return [window] * num_layers
