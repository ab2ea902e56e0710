"""How one image is encoded, per model family: the views its vision tower runs on and the number of
vision tokens it becomes in the language model, from the model's config and the image's size alone.

The counts are those of the families' transformers processors (the number of image placeholder
tokens they write) and models (the features they produce), re-derived here without images:

- LLaVA, VipLlava: the image is resized to the tower's square input: (S/P)^2 tokens (576 for
  CLIP-L/336), plus CLS with `vision_feature_select_strategy="full"`. The image size does not matter.
- LLaVA-NeXT (and -Video) "anyres": the best of `image_grid_pinpoints` for the image's size gives a
  grid of S x S tiles; the tower runs on the base (resized) view plus every tile; the language model
  gets the base view's (S/P)^2 tokens, then the tiles' features with the padding rows or columns
  removed (unpadding, for the image's aspect ratio) and one newline token per feature row.
- LLaVA-OneVision "anyres_max_N": the same, and when the unpadded features exceed N base views by a
  factor over 1.1 they are interpolated down to about N views' worth (SigLIP: no CLS).
- Qwen2-VL, Qwen2.5-VL: dynamic resolution. The image is resized to H' x W', multiples of
  P * merge (28) keeping the aspect ratio within [min_pixels, max_pixels] (`smart_resize`); the tower
  runs on (H'/P) * (W'/P) patches and 2 x 2 patches merge into one token: (H'/28) * (W'/28) tokens.
- Gemma 3: the image is resized to the SigLIP tower's S x S (896: 4,096 patches); an average pool
  leaves `mm_tokens_per_image` (256) tokens. Pan-and-scan crops (off by default) are not counted.
- PaliGemma: SigLIP's (S/P)^2 tokens (256 at 224 px).
- Qwen3-VL (and -MoE): as Qwen2-VL with 16 px patches (`smart_resize` to multiples of 32; the public
  checkpoints' bounds are 65,536 and 16,777,216 pixels): (H'/32) * (W'/32) tokens.
- Idefics3, SmolVLM: the image's longest side is resized to `longest_edge` (the processor's
  `size["longest_edge"]`, 4 tower sides by default: 1,456 for Idefics3-8B, 2,048 for SmolVLM-256M/500M),
  both sides are rounded up to whole tiles of the tower's side S, and the image is cut into those tiles
  plus a global image (`vision_tokens_tiles.idefics3_split`); each S x S view becomes (S/P)^2 / s^2 tokens
  after the pixel shuffle (`scale_factor` s): 169 for Idefics3-8B, 64 for SmolVLM-256M.
- Mistral3 (Pixtral tower): the image is scaled down to fit `longest_edge` (default the tower's
  `image_size`, 1,540 for Mistral-Small-3.1) and rounded up to multiples of P * merge (28 px); the tower
  runs on its (H'/P) * (W'/P) patches, the patch merger leaves (H'/28) * (W'/28) tokens (the processor's
  `[IMG]` tokens; its `[IMG_BREAK]` / `[IMG_END]` are text).
- InternVL, AyaVision (GOT-OCR2 processor): a grid of at most `max_tiles` (12) S x S tiles with the aspect
  ratio closest to the image's, plus a thumbnail when there is more than one tile
  (`vision_tokens_tiles.tiled_canvas`); each view becomes (S/P)^2 * downsample_ratio^2 (InternVL: 256 at
  448 px) or (S/P)^2 / downsample_factor^2 (AyaVision: 169 at 364 px) tokens after the pixel shuffle.

Only the image placeholder tokens are counted: the markers some processors write around them
(Qwen's `<|vision_start|>`, Idefics3's `<fake_token_around_image>` and `<row_i_col_j>`, AyaVision's
`TILE_i`, Pixtral's `[IMG_BREAK]`) are text tokens, part of T in `lvpeft.tuner.flops.estimate_flops`.
Llama 4 is refused with an error naming the family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .vision_tokens_tiles import GOT_OCR2_MAX_TILES, idefics3_split, pixtral_resize, tiled_canvas

DEFAULT_IMAGE_SIZE: tuple[int, int] = (672, 672)
"""(H, W) of the image when none is given: LLaVA-NeXT tiles it 2 x 2 (2,928 tokens), Qwen2.5-VL makes 576
tokens of it; families with a fixed input size resize every image anyway."""

QWEN_MIN_PIXELS = 56 * 56
"""`min_pixels` of the Qwen2-VL / Qwen2.5-VL checkpoints' image processor (3,136)."""
QWEN_MAX_PIXELS = 12_845_056
"""`max_pixels` of the public Qwen2-VL / Qwen2.5-VL checkpoints' `preprocessor_config.json` (16,384 x 28^2;
transformers' own default is 1,003,520)."""
QWEN3_MIN_PIXELS = 65_536
"""min_pixels (`size["shortest_edge"]`) of the public Qwen3-VL checkpoints' processor (64 x 32^2)."""
QWEN3_MAX_PIXELS = 16_777_216
"""max_pixels (`size["longest_edge"]`) of the public Qwen3-VL checkpoints' processor (16,384 x 32^2)."""
IDEFICS3_LONGEST_EDGE_SIDES = 4
"""Idefics3 / SmolVLM: the processor's `size["longest_edge"]` in tower sides when not given (1,456 = 4 x 364
for Idefics3-8B, 2,048 = 4 x 512 for SmolVLM-256M/500M, 1,536 = 4 x 384 for SmolVLM-Instruct)."""

FLOPS_FAMILIES: dict[str, str] = {
    "llava": "LLaVA",
    "vipllava": "VipLlava",
    "llava_next": "LLaVA-NeXT",
    "llava_next_video": "LLaVA-NeXT-Video",
    "llava_onevision": "LLaVA-OneVision",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "gemma3": "Gemma 3",
    "paligemma": "PaliGemma",
    "qwen3_vl": "Qwen3-VL",
    "qwen3_vl_moe": "Qwen3-VL",
    "idefics3": "Idefics3",
    "smolvlm": "SmolVLM",
    "mistral3": "Mistral3",
    "internvl": "InternVL",
    "aya_vision": "AyaVision",
}
"""`config.model_type` -> family name, for the families `lvpeft flops` counts."""

_ANYRES = ("llava_next", "llava_next_video", "llava_onevision")
_QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
_TILED = ("internvl", "aya_vision")


@dataclass(frozen=True)
class ImageTokens:
    """How one image is encoded by a family's vision side (see the module docstring)."""

    family: str
    """Family name ("LLaVA-NeXT", "Qwen2.5-VL", ...)."""
    image_size: tuple[int, int]
    """(H, W) of the original image, in pixels."""
    views: int
    """Inputs the vision tower runs on: 1, the base view plus the anyres tiles, or the tiles plus the global
    image / thumbnail (Idefics3, SmolVLM, InternVL, AyaVision)."""
    tower_tokens: int
    """Tokens per view inside the tower (CLIP's and InternViT's CLS included); Qwen, Mistral3: all the
    image's patches."""
    projector_tokens: int
    """Rows the projector's matrices run on, all views together (Qwen, Mistral3: merged tokens; Idefics3,
    SmolVLM, InternVL, AyaVision: tokens after the pixel shuffle)."""
    llm_tokens: int
    """Vision tokens in the language model: the image's placeholder tokens."""
    grid: tuple[int, int] = (1, 1)
    """Anyres, Idefics3, SmolVLM, InternVL, AyaVision: (rows, columns) of tiles ((0, 0) for an Idefics3 image
    that is not split, (1, 1) for one tile); Qwen, Mistral3: (h, w) of the patch grid; else (1, 1)."""
    resized: tuple[int, int] = (0, 0)
    """(H, W) the processor resizes the image to: the tower's square input, anyres's chosen resolution
    (the image fitted and padded into it, its tiles cut from it), Qwen's `smart_resize`, the tiled
    families' whole grid of tiles, or Pixtral's whole patches."""


def flops_family(config: Any) -> str:
    """The family name of a multimodal `config` that `lvpeft flops` counts.

    Raises:
        ValueError: the family is not counted (the message names it and lists the counted ones).
    """
    model_type = getattr(config, "model_type", None)
    if model_type in FLOPS_FAMILIES:
        return FLOPS_FAMILIES[model_type]
    from ..pruning.families import FAMILIES

    names = [f.name for f in FAMILIES if model_type in f.model_types]
    name = f"{names[0]} (`{model_type}`)" if names else f"`{model_type or type(config).__name__}`"
    counted = ", ".join(dict.fromkeys(FLOPS_FAMILIES.values()))
    raise ValueError(
        f"lvpeft flops and bench do not count {name} models: their vision tokens and tower are not described "
        f"(counted families: {counted})."
    )


def image_tokens(
    config: Any,
    image_size: tuple[int, int] | None = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    longest_edge: int | None = None,
    max_tiles: int | None = None,
) -> ImageTokens:
    """How one image of `image_size` = (H, W) pixels is encoded by the model of `config`.

    Args:
        config: the multimodal model's config (`LlavaConfig`, `LlavaNextConfig`, `Qwen2_5_VLConfig`, ...).
        image_size: (H, W) of the original image; None: `DEFAULT_IMAGE_SIZE`.
        min_pixels, max_pixels: Qwen2-VL family only, the image processor's pixel bounds (default
            `QWEN_MIN_PIXELS`, `QWEN_MAX_PIXELS`; Qwen3-VL: `QWEN3_MIN_PIXELS`, `QWEN3_MAX_PIXELS`).
        longest_edge: Idefics3 / SmolVLM and Mistral3 only, the image processor's `size["longest_edge"]`
            (default `IDEFICS3_LONGEST_EDGE_SIDES` tower sides; Mistral3: the tower's `image_size`).
        max_tiles: InternVL / AyaVision only, the image processor's `max_patches` (default 12; 1: no tiles).

    Raises:
        ValueError: an unknown family (`flops_family`), an image size that is not two positive integers, or
            a `longest_edge` / `max_tiles` that is not a positive integer.
    """
    family = flops_family(config)
    given = DEFAULT_IMAGE_SIZE if image_size is None else tuple(image_size)
    if len(given) != 2 or not all(_positive(s) for s in given):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}.")
    for name, value in (("longest_edge", longest_edge), ("max_tiles", max_tiles)):
        if value is not None and not _positive(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    size = (int(given[0]), int(given[1]))
    model_type = config.model_type
    if model_type in _QWEN:
        return _qwen_image(config, family, size, min_pixels, max_pixels)
    if model_type in ("idefics3", "smolvlm", "mistral3", *_TILED):
        return _tiled_image(config, family, size, longest_edge, max_tiles)
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    patches = side * side
    square = (vc.image_size, vc.image_size)
    if model_type == "gemma3":
        return ImageTokens(family, size, 1, patches, patches, config.mm_tokens_per_image, resized=square)
    cls = 1 if str(getattr(vc, "model_type", "")).startswith("clip") else 0
    selected = patches + cls
    if model_type == "vipllava" or getattr(config, "vision_feature_select_strategy", "full") == "default":
        selected -= 1  # the first token is dropped: CLS, or a patch for a tower without CLS (SigLIP)
    if model_type not in _ANYRES:
        return ImageTokens(family, size, 1, patches + cls, selected, selected, resized=square)
    height, width = size
    best = best_resolution(height, width, config.image_grid_pinpoints)
    rows, cols = anyres_grid(height, width, config.image_grid_pinpoints, vc.image_size)
    unpadded, newlines = anyres_unpadded_features(
        height, width, side * rows, side * cols, side, getattr(config, "vision_aspect_ratio", None)
    )
    views = 1 + rows * cols
    llm = selected + unpadded + newlines
    return ImageTokens(family, size, views, patches + cls, views * selected, llm, (rows, cols), best)


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _side(value: int | list[int] | tuple[int, ...]) -> int:
    """A square size given as an int or as [H, W] (InternVL's `image_size`, `patch_size`)."""
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"lvpeft flops counts square tiles and patches only, got {list(value)}.")
    return int(value[0])


def _qwen_image(
    config: Any, family: str, size: tuple[int, int], min_pixels: int | None, max_pixels: int | None
) -> ImageTokens:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `smart_resize`, one token per merge x merge patches."""
    vc = config.vision_config
    qwen3 = config.model_type.startswith("qwen3_vl")
    if min_pixels is None:
        min_pixels = QWEN3_MIN_PIXELS if qwen3 else QWEN_MIN_PIXELS
    if max_pixels is None:
        max_pixels = QWEN3_MAX_PIXELS if qwen3 else QWEN_MAX_PIXELS
    grid_h, grid_w = qwen_patch_grid(
        *size,
        patch_size=vc.patch_size,
        merge_size=vc.spatial_merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    merged = grid_h * grid_w // vc.spatial_merge_size**2
    resized = (grid_h * vc.patch_size, grid_w * vc.patch_size)
    return ImageTokens(family, size, 1, grid_h * grid_w, merged, merged, (grid_h, grid_w), resized)


def _tiled_image(
    config: Any, family: str, size: tuple[int, int], longest_edge: int | None, max_tiles: int | None
) -> ImageTokens:
    """Idefics3 / SmolVLM (tiles + global image), InternVL / AyaVision (tiles + thumbnail), Mistral3
    (Pixtral's native resolution); see the module docstring."""
    vc = config.vision_config
    tile, patch = _side(vc.image_size), _side(vc.patch_size)
    patches = (tile // patch) ** 2
    if config.model_type == "mistral3":
        merge = config.spatial_merge_size
        edge = tile if longest_edge is None else longest_edge
        res_h, res_w = pixtral_resize(*size, longest_edge=edge, factor=patch * merge)
        grid = (res_h // patch, res_w // patch)
        merged = grid[0] * grid[1] // merge**2
        return ImageTokens(family, size, 1, grid[0] * grid[1], merged, merged, grid, (res_h, res_w))
    if config.model_type in ("idefics3", "smolvlm"):
        edge = IDEFICS3_LONGEST_EDGE_SIDES * tile if longest_edge is None else longest_edge
        rows, cols, resized = idefics3_split(*size, tile=tile, longest_edge=edge)
        views = rows * cols + 1
        tokens = views * (patches // config.scale_factor**2)
        return ImageTokens(family, size, views, patches, tokens, tokens, (rows, cols), resized)
    tiles = GOT_OCR2_MAX_TILES if max_tiles is None else max_tiles
    rows, cols = tiled_canvas(*size, tile=tile, max_tiles=tiles) if tiles > 1 else (1, 1)
    views = rows * cols + (1 if rows * cols > 1 else 0)
    if config.model_type == "internvl":  # InternViT has a CLS token, dropped before the pixel shuffle
        per_view = int(patches * config.downsample_ratio**2)
        tower = patches + 1
    else:
        per_view, tower = patches // config.downsample_factor**2, patches
    resized = (rows * tile, cols * tile)
    return ImageTokens(family, size, views, tower, views * per_view, views * per_view, (rows, cols), resized)


def best_resolution(height: int, width: int, resolutions: list[list[int]]) -> tuple[int, int]:
    """The (H, W) of `resolutions` an anyres image is resized and padded to: the one keeping the most of
    the image's pixels after fitting it inside (at most its own count), then the one wasting the least."""
    best, best_kept, best_waste = (0, 0), -1, math.inf
    for res_h, res_w in resolutions:
        scale = min(res_w / width, res_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = res_h * res_w - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (res_h, res_w), kept, waste
    return best


def anyres_grid(height: int, width: int, pinpoints: list[list[int]], tile: int) -> tuple[int, int]:
    """(rows, columns) of `tile` x `tile` crops of the anyres resolution chosen for an H x W image."""
    res_h, res_w = best_resolution(height, width, pinpoints)
    return math.ceil(res_h / tile), math.ceil(res_w / tile)


def anyres_unpadded_features(
    height: int, width: int, rows: int, cols: int, base_side: int, max_views: str | None = None
) -> tuple[int, int]:
    """(features, newline tokens) of the tiles' `rows` x `cols` feature grid once the padding added to fit
    an H x W image is removed (rows or columns, evenly on both sides); with `max_views` = "anyres_max_N"
    (LLaVA-OneVision), reduced to about N base views of `base_side` x `base_side` features when larger
    by a factor over 1.1."""
    if width / height > cols / rows:  # wider than the grid: padding rows above and below
        new_rows = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - new_rows) // 2)
    else:
        new_cols = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - new_cols) // 2)
    if max_views and max_views.startswith("anyres_max_"):
        ratio = math.sqrt(rows * cols / (int(max_views.removeprefix("anyres_max_")) * base_side**2))
        if ratio > 1.1:
            return int(rows // ratio) * int(cols // ratio), int(rows // ratio)
    return rows * cols, rows


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """(H', W') the Qwen2-VL image processor resizes an H x W image to: each side rounded to a multiple
    of `factor` (patch x merge), then scaled (keeping the aspect ratio) into [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"an image of {height} x {width} is refused by Qwen2-VL's processor (aspect ratio > 200)."
        )
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def qwen_patch_grid(
    height: int, width: int, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(h, w) patches of an H x W image in the Qwen2-VL family (the processor's `image_grid_thw[1:]`)."""
    h, w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return h // patch_size, w // patch_size
