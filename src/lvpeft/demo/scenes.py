"""Synthetic language-guided VQA: coloured shapes on a grid, questions about a small region.

Every image is ``image_size`` x ``image_size`` RGB pixels (96 by default) holding a few coloured shapes,
one per cell of a ``grid`` x ``grid`` layout (3 x 3 by default). The vision tower cuts the image into
``patch_size`` x ``patch_size`` patches (8 px, so 12 x 12 = 144 vision tokens). Each question's answer
depends on a few of those patches only, which is what a language-guided pruner has to find:

====================  ========================================  ==========================
kind                  question                                  answer
====================  ========================================  ==========================
``colour_of_shape``   ``what colour is the triangle ?``         ``red`` (shape is unique)
``shape_at``          ``what shape is at the top left ?``       ``circle``
``exists``            ``is there a blue circle ?``              ``yes`` / ``no``
``count``             ``how many red shapes ?``                 ``zero`` ... ``five``
====================  ========================================  ==========================

The generator knows what every patch shows, so each example carries

* ``patch_labels`` (``(grid_patches, grid_patches)`` int64): the class of the object drawn in the patch
  (``1 + colour * n_shapes + shape``) or 0 for background; use it for an auxiliary per-patch
  classification loss on the vision tower;
* ``region`` (sorted flat patch indices, row-major like the vision tokens): the patches that hold the
  evidence for the answer.

Questions, examples, splits and the LLaVA-format export are in :mod:`lvpeft.demo.questions`.

Splits are disjoint by construction: a scene's layout (which shape of which colour in which cell)
is hashed, and the hash decides the one split it may appear in. Everything is deterministic given
``(split, seed)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""Split names; a scene belongs to exactly one of them (see :func:`split_of_layout`)."""

QUESTION_KINDS: tuple[str, ...] = ("colour_of_shape", "shape_at", "exists", "count")
"""The four question families, sampled uniformly (a kind a scene cannot support is re-drawn)."""

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
"""Answers of ``count`` questions, indexed by the count."""

# Share of the 100 hash buckets that each split owns: train 80 %, validation 10 %, test 10 %.
_SPLIT_BUCKETS: dict[str, range] = {
    "train": range(0, 80),
    "validation": range(80, 90),
    "test": range(90, 100),
}
SPLIT_STREAMS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}
"""The random stream of each split (examples of one split never share draws with another)."""


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and asked about.

    Attributes:
        image_size: Side of the square RGB image in pixels.
        patch_size: Side of one vision patch in pixels; ``image_size`` must be a multiple of it.
        grid: Cells per side; one shape at most per cell. ``image_size`` must be a multiple of it.
        colours: Colour names, each mapped to its RGB value in ``rgb``.
        shapes: Shape names; drawn by :func:`render_scene` (``circle``, ``square``, ``triangle``,
            ``diamond`` are supported).
        rgb: RGB value of every colour name.
        background: RGB value of the background.
        min_objects: Fewest shapes in a scene.
        max_objects: Most shapes in a scene (at most ``grid * grid``).
        object_fraction: Shape size as a fraction of the cell side. The default (0.5 of a 32 px cell)
            with ``jitter=0`` puts every shape on exactly the 2 x 2 patches at its cell's centre, so
            each patch shows one quadrant of one shape: shape is visible locally and every object
            covers the same number of vision tokens (which keeps counting learnable for a tiny model).
        jitter: Largest random offset (pixels) of a shape's centre from its cell's centre.
        position_names: Name of every cell, row-major; used in ``shape_at`` questions.
    """

    image_size: int = 96
    patch_size: int = 8
    grid: int = 3
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    rgb: dict[str, tuple[int, int, int]] = field(
        default_factory=lambda: {
            "red": (220, 40, 40),
            "green": (40, 170, 60),
            "blue": (50, 90, 235),
            "yellow": (235, 205, 30),
            "purple": (150, 60, 190),
            "white": (245, 245, 245),
        }
    )
    background: tuple[int, int, int] = (40, 40, 40)
    min_objects: int = 2
    max_objects: int = 5
    object_fraction: float = 0.5
    jitter: int = 0
    position_names: tuple[str, ...] = (
        "top left",
        "top middle",
        "top right",
        "middle left",
        "center",
        "middle right",
        "bottom left",
        "bottom middle",
        "bottom right",
    )

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or self.image_size % self.grid:
            raise ValueError("image_size must be a multiple of both patch_size and grid")
        if len(self.position_names) != self.grid * self.grid:
            raise ValueError(f"need {self.grid * self.grid} position names, got {len(self.position_names)}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError("need 1 <= min_objects <= max_objects <= grid * grid")
        if self.max_objects >= len(NUMBER_WORDS):
            raise ValueError(f"count answers go up to {NUMBER_WORDS[-1]}")
        missing = [c for c in self.colours if c not in self.rgb]
        if missing:
            raise ValueError(f"no RGB value for colours {missing}")

    @property
    def patches_per_side(self) -> int:
        """Vision patches per image side (12 for 96 px and patch 8)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Vision tokens per image (144 for 96 px and patch 8), CLS not counted."""
        return self.patches_per_side**2

    @property
    def num_patch_classes(self) -> int:
        """Classes of :attr:`VQAExample.patch_labels`: background plus every (colour, shape) pair."""
        return 1 + len(self.colours) * len(self.shapes)

    def patch_class(self, colour: str, shape: str) -> int:
        """Class id of a patch showing a ``colour`` ``shape`` (0 is background)."""
        return 1 + self.colours.index(colour) * len(self.shapes) + self.shapes.index(shape)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    Attributes:
        shape: Shape name (one of ``SceneConfig.shapes``).
        colour: Colour name (one of ``SceneConfig.colours``).
        cell: Row-major cell index in ``[0, grid * grid)``.
        dx: Horizontal offset of the centre from the cell centre, pixels.
        dy: Vertical offset of the centre from the cell centre, pixels.
    """

    shape: str
    colour: str
    cell: int
    dx: int = 0
    dy: int = 0


@dataclass(frozen=True)
class Scene:
    """A layout of shapes, at most one per cell, sorted by cell.

    Attributes:
        objects: The shapes, sorted by ``cell``.
    """

    objects: tuple[SceneObject, ...]

    def layout_key(self) -> str:
        """Canonical text of the layout without jitter, e.g. ``"0:red:circle|4:blue:square"``."""
        return "|".join(f"{o.cell}:{o.colour}:{o.shape}" for o in self.objects)


def split_of_layout(scene: Scene) -> str:
    """The split a scene's layout belongs to, from a stable hash of :meth:`Scene.layout_key`."""
    bucket = int(hashlib.sha256(scene.layout_key().encode()).hexdigest()[:8], 16) % 100
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def sample_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """Draw a random layout: ``min_objects..max_objects`` shapes in distinct cells."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(config.grid * config.grid, size=n, replace=False))
    objects = tuple(
        SceneObject(
            shape=config.shapes[int(rng.integers(len(config.shapes)))],
            colour=config.colours[int(rng.integers(len(config.colours)))],
            cell=cell,
            dx=int(rng.integers(-config.jitter, config.jitter + 1)),
            dy=int(rng.integers(-config.jitter, config.jitter + 1)),
        )
        for cell in cells
    )
    return Scene(objects)


def _draw_shape(
    draw: ImageDraw.ImageDraw, obj: SceneObject, fill: int | tuple[int, ...], config: SceneConfig
) -> None:
    cell_px = config.image_size // config.grid
    row, col = divmod(obj.cell, config.grid)
    cx = col * cell_px + cell_px / 2 + obj.dx
    cy = row * cell_px + cell_px / 2 + obj.dy
    r = config.object_fraction * cell_px / 2
    box = (cx - r, cy - r, cx + r - 1, cy + r - 1)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        s = r * 0.85  # a square of the same side as the circle looks much bigger; even them out
        draw.rectangle((cx - s, cy - s, cx + s - 1, cy + s - 1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx - 0.5, cy - r), (cx + r - 1, cy + r - 1), (cx - r, cy + r - 1)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"cannot draw shape {obj.shape!r}")


def render_scene(scene: Scene, config: SceneConfig) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Draw a scene.

    Returns:
        image: RGB PIL image, ``image_size`` x ``image_size``.
        object_map: ``(image_size, image_size)`` int64, ``1 + index`` of the object drawn at each pixel,
            0 for background.
        patch_objects: ``(P, P)`` int64, ``1 + index`` of the object with the most pixels in each patch
            (ties to the lower index), 0 where no object has a pixel.
    """
    image = Image.new("RGB", (config.image_size, config.image_size), config.background)
    ids = Image.new("L", (config.image_size, config.image_size), 0)
    draw, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(ids)
    for i, obj in enumerate(scene.objects):
        _draw_shape(draw, obj, config.rgb[obj.colour], config)
        _draw_shape(draw_ids, obj, i + 1, config)
    object_map = np.asarray(ids, dtype=np.int64)
    p, n = config.patch_size, config.patches_per_side
    blocks = object_map.reshape(n, p, n, p).transpose(0, 2, 1, 3).reshape(n, n, p * p)
    counts = np.stack([(blocks == k).sum(-1) for k in range(1, len(scene.objects) + 1)], axis=-1)
    if not scene.objects:
        return image, object_map, np.zeros((n, n), dtype=np.int64)
    return image, object_map, np.where(counts.max(-1) > 0, counts.argmax(-1) + 1, 0).astype(np.int64)
