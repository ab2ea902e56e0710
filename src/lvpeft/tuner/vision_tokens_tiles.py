"""How the image processors of the tiling and native-resolution families resize and cut one image, re-derived
from the image's size alone (no pixels): Idefics3 / SmolVLM's split into tiles plus a global image, the
GOT-OCR2 processor's tiles plus a thumbnail (InternVL, AyaVision) and Pixtral's resize to whole patches
(Mistral3). Each function mirrors the transformers 5.24 image processor named in its docstring, step for
step, including its integer truncations; `lvpeft.tuner.vision_tokens.image_tokens` turns the result into
vision-token counts.
"""

from __future__ import annotations

import math

IDEFICS3_MAX_SIDE = 4096
"""The Idefics3 / SmolVLM image processor's cap on either side after its first resize (`MAX_IMAGE_SIZE`)."""
GOT_OCR2_MIN_TILES = 1
"""The GOT-OCR2 image processor's default `min_patches` (InternVL, AyaVision)."""
GOT_OCR2_MAX_TILES = 12
"""The GOT-OCR2 image processor's default `max_patches`, also the InternVL and AyaVision checkpoints'."""


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Idefics3's `_resize_output_size_rescale_to_max_len`: the longest side becomes `max_len` (up or down),
    the other keeps the aspect ratio, truncated and rounded up to an even number, at least 1."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        height += height % 2
    else:
        height = max_len
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Idefics3's `_resize_output_size_scale_below_upper_bound`: the longest side capped at `max_len`."""
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def idefics3_split(
    height: int, width: int, *, tile: int, longest_edge: int
) -> tuple[int, int, tuple[int, int]]:
    """(rows, columns, (H', W')) of an H x W image in the Idefics3 / SmolVLM image processor (image splitting
    on, as in the public checkpoints).

    The image's longest side is resized to `longest_edge` (the processor's `size["longest_edge"]`, up or
    down), then both sides are rounded up to multiples of `tile` (`max_image_size["longest_edge"]`, the
    tower's input side), giving H' x W'. If that is larger than one tile it is cut into (H'/tile) x
    (W'/tile) tiles and a global image (the whole image resized to tile x tile) is added; else (0, 0): the
    image alone, at tile x tile. Every view the tower sees is tile x tile.
    """
    h, w = _rescale_to_max_len(height, width, longest_edge)
    h, w = _scale_below(h, w, IDEFICS3_MAX_SIDE)
    aspect = w / h  # resize_for_vision_encoder
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    if h > tile or w > tile:
        return (h - tile) // tile + 1, (w - tile) // tile + 1, (h, w)
    return 0, 0, (h, w)


def tiled_canvas(
    height: int,
    width: int,
    *,
    tile: int,
    min_tiles: int = GOT_OCR2_MIN_TILES,
    max_tiles: int = GOT_OCR2_MAX_TILES,
) -> tuple[int, int]:
    """(rows, columns) of `tile` x `tile` tiles the GOT-OCR2 image processor cuts an H x W image into
    (`get_optimal_tiled_canvas`; InternVL, AyaVision): among the grids of `min_tiles` to `max_tiles`
    tiles, the one whose aspect ratio is closest to the image's; on a tie, the one with more tiles while
    the image's area is over half of the grid's. The processor adds a thumbnail (the whole image at
    tile x tile) when the grid has more than one tile."""
    grids = sorted(
        (
            (cols, rows)
            for cols in range(1, max_tiles + 1)
            for rows in range(1, max_tiles + 1)
            if min_tiles <= cols * rows <= max_tiles
        ),
        key=lambda grid: grid[0] * grid[1],
    )
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), math.inf
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best[1], best[0]


def pixtral_resize(height: int, width: int, *, longest_edge: int, factor: int) -> tuple[int, int]:
    """(H', W') the Pixtral image processor resizes an H x W image to (Mistral3): scaled down (never up)
    so that its longest side fits `longest_edge` (the processor's `size["longest_edge"]`), each side
    truncated, then rounded up to a multiple of `factor` (patch size x spatial merge: 28 for Mistral3)."""
    ratio = max(height / longest_edge, width / longest_edge)
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return ((height - 1) // factor + 1) * factor, ((width - 1) // factor + 1) * factor
