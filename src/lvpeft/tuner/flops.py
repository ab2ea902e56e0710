"""Analytic FLOPs of a multimodal model at prefill, without and with LVPruning.

Counts one prefill forward pass (what `generate()` runs before the first new token) of a LLaVA-like
model on `num_images` images of a given size and `text_tokens` language tokens, from its config alone:
no weights, no forward pass. The pruned count adds the decision modules, which are also reported on
their own. Families: LLaVA 1.5, VipLlava, LLaVA-NeXT (anyres), LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and
Qwen3-VL (dense and MoE; dynamic resolution), Gemma 3, PaliGemma, Idefics3, SmolVLM, InternVL, AyaVision
(tiles), Mistral3 (native resolution); others are refused with their name.

Counting conventions (they reproduce the paper's FLOPs table within 1 %, see METHOD.md):

- 2 FLOPs per multiply-add; only matrix products are counted (linear layers, the patch-embedding
  convolution, attention score and value products). Norms, activations, softmax, RoPE, residual
  additions, pooling and biases are ignored: together they are well under 1 % of the total. This is
  also what `torch.utils.flop_counter.FlopCounterMode` counts.
- Vision side: how many views and tokens each image becomes is `lvpeft.tuner.vision_tokens` (anyres
  tiles with unpadding and newline tokens, Qwen's `smart_resize`, Gemma 3's pooled 256, the tiled
  families' tiles after their pixel shuffle, Pixtral's patches after its merger), the tower and
  projector FLOPs per family are `lvpeft.tuner.vision_flops`. For LLaVA-1.5 (CLIP-L/336): the patch
  embedding, then ALL 24 encoder layers on 577 tokens (CLS included; transformers runs every layer
  even when `vision_feature_layer=-2` reads the second-to-last one: the last is ~16 GFLOPs, 0.2 % of
  LLaVA-1.5-7B), and the Linear -> GELU -> Linear projector on the 576 selected features.
- Decoder layer on n tokens: q/k/v/o projections (with `num_key_value_heads` and `head_dim`), the
  n x n score and value products counted in full although the mask is causal (the paper's formula
  `2*(4nd^2 + 2n^2 d + 3ndm)` does the same), and the three-matrix gated MLP (SwiGLU; Gemma's GeGLU).
  Sliding-window layers (Gemma 3: 5 of every 6, window 1,024; Mistral-v0.1) are counted in full in the
  same way: for a prompt shorter than the window that is exact, for a longer one it is the causal
  convention's upper bound. Gemma 3's bidirectional attention among image tokens does not change the count.
  Mixture-of-experts layers (Qwen3-VL-MoE) count the router and the `num_experts_per_tok` experts each
  token is routed to (what transformers' "eager" and "batched_mm" expert kernels compute; FlopCounterMode
  does not count the default "grouped_mm" kernel's products).
- LM head: once, for the last position only (d x V), as `generate()` runs prefill
  (`logits_to_keep=1`). Counting it over every position would add ~0.16 TFLOPs to LLaVA-1.5-7B.
- Pruning: the modules sit at `layers` (number of decoder layers before each). Layers before the
  first module see every token; layers from position p_s on see T + k_s tokens, with
  k_s = round(schedule[s] * n_vision), at least 1, computed by the adapter's own
  `lvpeft.pruning.decisions.keep_counts`, and n_vision the ORIGINAL number of vision tokens.
- Decision module s (`lvpeft.tuner.layer.DecisionModule`) scores the n_v vision tokens alive when it runs
  (all of them for the first module, k_{s-1} afterwards) against the T language tokens. Per block:
  Q projection on n_v tokens (input width d for block 0, C after), K and V projections d -> C on T
  tokens, n_v x T x C scores and values, FFN C -> mult*C -> C on n_v tokens; then a C -> 2 head.
  The pruned total includes the modules.
- Merging the dropped tokens (`merge_dropped`, `lvpeft.pruning.mass`) is NOT counted: its one matrix
  product per module, the dropped x kept cosine similarities, is 2 * d * n_dropped * n_kept FLOPs
  (about 0.9 GFLOPs in all for LLaVA-1.5-7B at keep 0.1, 0.03 % of the pruned prefill).

Relation to the paper's table (LLaVA-1.5-7B, 1 image + 30 text tokens, modules after layers 1, 8, 16,
C = d): base 8.45 vs 8.38, rho = 0.6 / 0.5 / 0.45 -> 3.93 / 3.17 / 2.78 vs 3.97 / 3.18 / 2.79. The
modules cost 0.34-0.40 TFLOPs in this count; the paper's sentence "the modules add 0.71 TFLOPs" is
not reproduced (the architecture as described costs about half that, and adding 0.71 to this count
of the rest would overshoot the table's pruned rows by 7-13 %). The table can also be matched within
2 % the other way round: no vision tower, LM head over all 606 positions and a flat 0.71 TFLOPs for
the modules (base 8.22). We keep the count above: it is what actually runs, it fits the table better
(largest error 0.9 % vs 1.9 %) and it matches `FlopCounterMode` exactly on real models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
from transformers import PreTrainedConfig

from ..pruning.decisions import keep_counts
from ..pruning.placement import default_layers
from .layer import PAPER_PRUNER_DIM, default_pruner_dim
from .vision_flops import vision_side_flops
from .vision_tokens import image_tokens

_TERA = 1e12


@dataclass(frozen=True)
class PartFlops:
    """FLOPs of one prefill pass split by part of the model (raw counts, not TFLOPs)."""

    vision: int
    """Vision tower: patch embedding and every encoder layer, for all images."""
    projector: int
    """Multi-modal projector on the selected image features."""
    decoder: int
    """All decoder layers of the language model."""
    lm_head: int
    """Output projection for the last position only."""
    pruner: int = 0
    """Decision modules (0 for the base model)."""

    @property
    def total(self) -> int:
        """Sum of all parts."""
        return self.vision + self.projector + self.decoder + self.lm_head + self.pruner

    def to_dict(self) -> dict[str, int]:
        """The parts and their total as a plain dict."""
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of a multimodal prefill pass, base vs pruned (see the module docstring for conventions)."""

    base_tflops: float
    """Base model, TFLOPs."""
    pruned_tflops: float
    """Pruned model INCLUDING the decision modules, TFLOPs (equals `base_tflops` without pruning)."""
    pruner_tflops: float
    """The decision modules alone, TFLOPs."""
    base: PartFlops
    """Per-part FLOPs of the base model."""
    pruned: PartFlops
    """Per-part FLOPs of the pruned model (its `pruner` part holds the modules)."""
    module_tflops: tuple[float, ...] = ()
    """TFLOPs of each decision module, in order."""
    text_tokens: int = 0
    """Language (non-vision) tokens T."""
    vision_tokens: int = 0
    """Vision tokens entering the language model (all images)."""
    layers: tuple[int, ...] = ()
    """Module positions (decoder layers before each module)."""
    schedule: tuple[float, ...] = ()
    """Keep ratio after each module, relative to `vision_tokens`."""
    kept_tokens: tuple[int, ...] = ()
    """Vision tokens kept after each module."""
    decoder_tokens: tuple[int, ...] = ()
    """Sequence length each decoder layer runs on in the pruned model."""
    pruner_dim: int | None = None
    """Inner width C of the modules (None when there are no modules)."""
    family: str = ""
    """The model family counted ("LLaVA", "LLaVA-NeXT", "Qwen2.5-VL", "Gemma 3", ...)."""
    image_size: tuple[int, int] = (0, 0)
    """(H, W) of each image, pixels (what the processor sees before resizing or tiling)."""
    vision_tokens_per_image: int = 0
    """Vision tokens one image becomes in the language model."""
    resized_size: tuple[int, int] = (0, 0)
    """(H, W) the processor resizes each image to (`lvpeft.tuner.vision_tokens.ImageTokens.resized`)."""

    @property
    def flops_reduction(self) -> float:
        """Fraction of the base FLOPs saved by pruning, modules included (0.62 means -62 %)."""
        return 1.0 - self.pruned_tflops / self.base_tflops

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field, `flops_reduction` and per-part counts."""
        out = asdict(self)
        out["flops_reduction"] = self.flops_reduction
        out["base"] = self.base.to_dict()
        out["pruned"] = self.pruned.to_dict()
        for key in (
            "module_tflops",
            "layers",
            "schedule",
            "kept_tokens",
            "decoder_tokens",
            "image_size",
            "resized_size",
        ):
            out[key] = list(out[key])
        return out


# -- per-part counts ----------------------------------------------------------------------------------


def decoder_layer_flops(text_config: PreTrainedConfig, n: int, layer: int = 0) -> int:
    """FLOPs of decoder layer `layer` on `n` tokens: q/k/v/o, full n x n attention, SwiGLU MLP; in a
    mixture-of-experts layer (Qwen3-VL-MoE: `num_experts` > 0, every `decoder_sparse_step`-th layer not in
    `mlp_only_layers`) the router (d -> experts) and `num_experts_per_tok` SwiGLU experts of
    `moe_intermediate_size` per token instead of the MLP."""
    d, m = text_config.hidden_size, text_config.intermediate_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    projections = 2 * n * d * head_dim * (2 * heads + 2 * kv_heads)  # q and o: h heads; k and v: kv heads
    attention = 2 * 2 * n * n * heads * head_dim  # scores and values
    mlp = 2 * 3 * n * d * m
    experts = getattr(text_config, "num_experts", 0) or 0
    step = getattr(text_config, "decoder_sparse_step", 1) or 1
    dense = getattr(text_config, "mlp_only_layers", None) or []
    sparse = experts > 0 and layer not in dense and (layer + 1) % step == 0
    if sparse and hasattr(text_config, "moe_intermediate_size"):
        routed = n * text_config.num_experts_per_tok
        mlp = 2 * n * d * experts + 2 * 3 * routed * d * text_config.moe_intermediate_size
    return projections + attention + mlp


def lm_head_flops(text_config: PreTrainedConfig, positions: int = 1) -> int:
    """FLOPs of the output projection for `positions` positions (1 at prefill in `generate()`)."""
    return 2 * positions * text_config.hidden_size * text_config.vocab_size


def decision_module_flops(
    hidden_size: int,
    dim: int | None,
    *,
    vision_tokens: int,
    text_tokens: int,
    blocks: int = 2,
    ffn_mult: int = 2,
) -> int:
    """FLOPs of one `DecisionModule` scoring `vision_tokens` tokens against `text_tokens` tokens.

    Args:
        hidden_size: d, the language model's width (the module's input width).
        dim: C, the module's inner width; None means C = d (the paper).
        vision_tokens: n_v, vision tokens scored (alive when the module runs).
        text_tokens: T, language tokens attended to.
        blocks: cross-attention blocks (paper: 2).
        ffn_mult: FFN expansion (paper: 2).

    The number of heads does not change the count. Norms, SiLU and softmax are not counted.
    """
    d, c, nv, t = hidden_size, dim or hidden_size, vision_tokens, text_tokens
    total = 0
    for i in range(blocks):
        q_in = d if i == 0 else c
        total += 2 * nv * q_in * c  # Q projection
        total += 2 * 2 * t * d * c  # K and V projections
        total += 2 * 2 * nv * t * c  # scores and values
        total += 2 * 2 * nv * c * ffn_mult * c  # FFN up and down
    return total + 2 * nv * c * 2  # keep/drop head


# -- the estimate -------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _resolve_pruning(
    num_layers: int, layers: Sequence[int] | None, schedule: Sequence[float] | None
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Validated (layers, schedule); empty when there is no pruning."""
    if schedule is None:
        if layers is not None:
            raise ValueError(f"layers={list(layers)} given without a keep schedule: pass schedule= as well.")
        return (), ()
    sched = list(schedule)
    if not sched or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0.0 < r <= 1.0
        for r in sched
    ):
        raise ValueError(f"schedule={sched} must be a non-empty list of keep ratios in (0, 1].")
    if any(b > a for a, b in pairwise(sched)):
        raise ValueError(f"schedule={sched} must be non-increasing (a dropped token stays dropped).")
    # None: the adapter's own default placement
    pos = default_layers(num_layers, len(sched)) if layers is None else list(layers)
    if not pos or not all(_is_int(p) for p in pos):
        raise ValueError(f"layers={pos} must be a non-empty list of integers.")
    if len(pos) != len(sched):
        raise ValueError(
            f"layers={pos} and schedule={sched} must have the same length (one keep ratio per module)."
        )
    if any(b <= a for a, b in pairwise(pos)):
        raise ValueError(f"layers={pos} must be strictly increasing.")
    bad = [p for p in pos if not 1 <= p <= num_layers - 1]
    if bad:
        raise ValueError(
            f"layers={pos} places a module after layer {bad[0]}, but the language model has {num_layers} "
            f"decoder layers: each position must be in [1, {num_layers - 1}]."
        )
    return tuple(pos), tuple(float(r) for r in sched)


def estimate_flops(
    config: PreTrainedConfig,
    *,
    text_tokens: int = 30,
    layers: Sequence[int] | None = None,
    schedule: Sequence[float] | None = None,
    pruner_dim: int | str | None = None,
    pruner_heads: int = 8,
    pruner_blocks: int = 2,
    pruner_ffn_mult: int = 2,
    num_images: int = 1,
    image_size: tuple[int, int] | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    longest_edge: int | None = None,
    max_tiles: int | None = None,
) -> FlopsReport:
    """Prefill FLOPs of a multimodal model on `num_images` images + `text_tokens` tokens, base vs pruned.

    Args:
        config: the multimodal model's config, of a family `lvpeft.tuner.vision_tokens.FLOPS_FAMILIES`
            lists (`LlavaConfig`, `LlavaNextConfig`, `LlavaOnevisionConfig`, `Qwen2VLConfig`,
            `Qwen2_5_VLConfig`, `Qwen3VLConfig`, `Gemma3Config`, `PaliGemmaConfig`, `Idefics3Config`,
            `SmolVLMConfig`, `Mistral3Config`, `InternVLConfig`, `AyaVisionConfig`, ...).
        text_tokens: T, language (non-vision) tokens in the prompt.
        layers: module positions, as decoder layers before each module (paper: [1, 8, 16]).
            None with a `schedule` uses the adapter's default placement (`lvpeft.pruning.placement`).
        schedule: keep ratio after each module relative to the original vision-token count,
            non-increasing, in (0, 1] (paper, rho = 0.5: [0.5, 0.3, 0.1]). None: no pruning.
        pruner_dim: C, the modules' inner width: an integer, "paper" (C = d) or None (lvpeft's light
            default, `lvpeft.tuner.layer.default_pruner_dim`).
        pruner_heads: heads per block (only checked: C must be divisible by it).
        pruner_blocks: cross-attention blocks per module.
        pruner_ffn_mult: FFN expansion of each block.
        num_images: images in the prompt, all of `image_size`; ratios apply to all their vision tokens
            together.
        image_size: (H, W) of each image in pixels, for the families whose token count depends on it
            (LLaVA-NeXT / OneVision, Idefics3, SmolVLM, InternVL, AyaVision tiles; Qwen-VL and Mistral3
            dynamic resolution); None: 672 x 672 (`lvpeft.tuner.vision_tokens.DEFAULT_IMAGE_SIZE`).
            Fixed-size families resize every image.
        min_pixels, max_pixels: Qwen-VL families only, the image processor's pixel bounds (default: the
            public checkpoints' 3,136 and 12,845,056; Qwen3-VL: 65,536 and 16,777,216).
        longest_edge: Idefics3 / SmolVLM and Mistral3 only, the image processor's `size["longest_edge"]`
            (default: 4 tower sides; Mistral3: the tower's `image_size`).
        max_tiles: InternVL / AyaVision only, the image processor's `max_patches` (default 12).

    Raises:
        ValueError: a family that is not counted (named), a position past the decoder's depth, a
            schedule whose length differs from `layers`, a ratio outside (0, 1], or another invalid
            argument (the message names it).
    """
    image = image_tokens(  # the family first: an uncounted one is refused before anything else
        config,
        image_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        longest_edge=longest_edge,
        max_tiles=max_tiles,
    )
    tc = config.text_config
    _check_positive_int("text_tokens", text_tokens)
    _check_positive_int("num_images", num_images)
    _check_positive_int("pruner_heads", pruner_heads)
    _check_positive_int("pruner_blocks", pruner_blocks)
    _check_positive_int("pruner_ffn_mult", pruner_ffn_mult)
    if pruner_dim is None:
        dim = default_pruner_dim(tc.hidden_size, pruner_heads)
    elif pruner_dim == PAPER_PRUNER_DIM:
        dim = tc.hidden_size
    else:
        _check_positive_int("pruner_dim", pruner_dim)
        dim = pruner_dim
    if dim % pruner_heads:
        raise ValueError(f"pruner_dim={dim} must be divisible by pruner_heads={pruner_heads}.")
    num_layers = tc.num_hidden_layers
    pos, sched = _resolve_pruning(num_layers, layers, schedule)

    tower, projector = vision_side_flops(config, image)
    n_vision = num_images * image.llm_tokens
    vision, projector = num_images * tower, num_images * projector
    lm_head = lm_head_flops(tc)
    full = n_vision + text_tokens
    decoder = sum(decoder_layer_flops(tc, full, i) for i in range(num_layers))
    base = PartFlops(vision, projector, decoder, lm_head)

    kept = tuple(int(keep_counts(torch.tensor([n_vision]), r)[0]) for r in sched)
    tokens = [full] * num_layers
    for p, k in zip(pos, kept, strict=True):
        tokens[p:] = [text_tokens + k] * (num_layers - p)
    alive = (n_vision, *kept[:-1])
    modules = tuple(
        decision_module_flops(
            tc.hidden_size,
            dim,
            vision_tokens=nv,
            text_tokens=text_tokens,
            blocks=pruner_blocks,
            ffn_mult=pruner_ffn_mult,
        )
        for nv in alive[: len(pos)]
    )
    pruned = PartFlops(
        vision,
        projector,
        sum(decoder_layer_flops(tc, n, i) for i, n in enumerate(tokens)),
        lm_head,
        sum(modules),
    )
    return FlopsReport(
        base_tflops=base.total / _TERA,
        pruned_tflops=pruned.total / _TERA,
        pruner_tflops=pruned.pruner / _TERA,
        base=base,
        pruned=pruned,
        module_tflops=tuple(m / _TERA for m in modules),
        text_tokens=text_tokens,
        vision_tokens=n_vision,
        layers=pos,
        schedule=sched,
        kept_tokens=kept,
        decoder_tokens=tuple(tokens),
        pruner_dim=dim if pos else None,
        family=image.family,
        image_size=image.image_size,
        vision_tokens_per_image=image.llm_tokens,
        resized_size=image.resized,
    )
