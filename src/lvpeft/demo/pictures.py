"""The demo's two kinds of pictures, drawn with PIL (no plotting dependency):

- an accuracy-vs-keep plot (one line per scorer, the unpruned model as a dashed line);
- for one test image and two questions, the image as each decision module leaves it: patches still
  alive are shown as they are, dropped ones faded (one panel per module, one row per question).

They only render what `lvpeft.demo.pipeline` measured; nothing is computed from the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WASH = 0.8
"""How far a dropped patch is faded towards light grey in the kept-patch pictures (0: not at all)."""
SCALE = 3
"""Up-scaling of the 96 px scene images in the pictures (nearest neighbour, patches stay crisp)."""
COLOURS: dict[str, tuple[int, int, int]] = {
    "lvpruning": (214, 39, 40),
    "random": (127, 127, 127),
    "uniform": (31, 119, 180),
    "fastv": (44, 160, 44),
}
"""Line colour of each scorer in the plot."""
LABELS: dict[str, str] = {
    "base": "unpruned model",
    "lvpruning": "LVPruning (trained)",
    "random": "random",
    "uniform": "uniform",
    "fastv": "FastV-style",
}
"""Display name of each scorer."""


@dataclass
class PictureRow:
    """One question about the pictured image and what each module kept for it.

    Attributes:
        question: the question text.
        answer: the true answer.
        prediction: the pruned model's answer.
        region: row-major patch indices that hold the evidence for the answer.
        kept: per module, the row-major patch indices still alive after it (sorted).
    """

    question: str
    answer: str
    prediction: str
    region: Sequence[int]
    kept: Sequence[Sequence[int]]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


# -- kept patches -----------------------------------------------------------------------------------


def draw_kept_patches(
    image: Image.Image,
    rows: Sequence[PictureRow],
    patch_size: int,
    layers: Sequence[int],
    path: str | Path,
) -> Path:
    """Draw `image` once per module and question with the dropped patches faded; save a PNG.

    The first panel of each row is the image with the evidence patches outlined; panel `s + 1`
    shows what is alive after module `s` (placed before decoder layer `layers[s]`).
    """
    image = image.convert("RGB")
    side = image.width * SCALE
    per_side = image.width // patch_size
    cell = patch_size * SCALE
    gap, header, caption = 12, 46, 22
    columns = 1 + len(layers)
    width = columns * side + (columns + 1) * gap
    height = len(rows) * (header + caption + side + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(15), _font(13)
    large = image.resize((side, side), Image.NEAREST)
    faded = Image.blend(large, Image.new("RGB", large.size, (236, 236, 236)), WASH)
    y = gap
    for row in rows:
        mark = "correct" if row.prediction == row.answer else "wrong"
        draw.text((gap, y), f"Q: {row.question}", fill=(0, 0, 0), font=big)
        draw.text(
            (gap, y + 22),
            f"answer: {row.answer}   pruned model says: {row.prediction or '(nothing)'} ({mark})",
            fill=(60, 60, 60),
            font=small,
        )
        top = y + header + caption
        panels = [("image, evidence outlined", large.copy(), None)]
        panels += [
            (f"after module {s + 1} (layer {p}): {len(kept)} kept", None, kept)
            for s, (p, kept) in enumerate(zip(layers, row.kept))
        ]
        for c, (title, panel, kept) in enumerate(panels):
            left = gap + c * (side + gap)
            if panel is None:
                panel = faded.copy()
                for index in kept or ():
                    r, q = divmod(int(index), per_side)
                    box = (q * cell, r * cell, (q + 1) * cell, (r + 1) * cell)
                    panel.paste(large.crop(box), box[:2])
            else:
                outline = ImageDraw.Draw(panel)
                for index in row.region:
                    r, q = divmod(int(index), per_side)
                    outline.rectangle(
                        (q * cell, r * cell, (q + 1) * cell - 1, (r + 1) * cell - 1), outline=(255, 255, 255)
                    )
            draw.text((left, top - caption + 2), title, fill=(0, 0, 0), font=small)
            canvas.paste(panel, (left, top))
        y = top + side + gap
    path = Path(path)
    canvas.save(path)
    return path


# -- accuracy vs keep -------------------------------------------------------------------------------


def plot_accuracy_vs_keep(
    series: Mapping[str, Mapping[float, float]],
    base_accuracy: float,
    path: str | Path,
    title: str = "Test accuracy vs keep ratio",
) -> Path:
    """Line plot of accuracy (y) against the final keep ratio (x), one line per scorer; save a PNG.

    `series` maps a scorer name (see `LABELS`) to {keep: accuracy}; the unpruned model is drawn as a
    dashed horizontal line at `base_accuracy`.
    """
    width, height = 760, 500
    left, right, top, bottom = 70, 190, 50, 60
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    plot_w, plot_h = width - left - right, height - top - bottom

    # the y axis spans the measured accuracies, rounded out to tenths (differences stay visible)
    values = [base_accuracy, *(float(v) for points in series.values() for v in points.values())]
    low = max(0.0, math.floor((min(values) - 0.02) * 10) / 10)
    high = min(1.0, math.ceil((max(values) + 0.02) * 10) / 10)
    step = 0.1 if high - low <= 0.5 else 0.2

    def xy(keep: float, accuracy: float) -> tuple[float, float]:
        return left + keep * plot_w, top + (high - accuracy) / (high - low) * plot_h

    for i in range(6):
        x, _ = xy(0.2 * i, low)
        draw.line([(x, top), (x, top + plot_h)], fill=(228, 228, 228))
        draw.text((x - 9, top + plot_h + 6), f"{0.2 * i:.1f}", fill=(0, 0, 0), font=small)
    for i in range(round((high - low) / step) + 1):
        _, y = xy(0.0, low + step * i)
        draw.line([(left, y), (left + plot_w, y)], fill=(228, 228, 228))
        draw.text((left - 34, y - 7), f"{low + step * i:.1f}", fill=(0, 0, 0), font=small)
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(0, 0, 0))
    draw.text((left, 16), title, fill=(0, 0, 0), font=font)
    draw.text(
        (left + plot_w // 2 - 140, height - 28),
        "keep (vision tokens left after the last module)",
        fill=(0, 0, 0),
        font=small,
    )
    draw.text((8, top - 24), "accuracy", fill=(0, 0, 0), font=small)

    _, base_y = xy(0.0, base_accuracy)
    for x in range(left, left + plot_w, 12):
        draw.line([(x, base_y), (min(x + 6, left + plot_w), base_y)], fill=(0, 0, 0), width=2)
    legend = [("unpruned model", (0, 0, 0), True)]
    for name, points in series.items():
        colour = COLOURS.get(name, (148, 103, 189))
        ordered = sorted((float(k), float(v)) for k, v in points.items())
        coords = [xy(k, a) for k, a in ordered]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=3 if name == "lvpruning" else 2, joint="curve")
        for x, y in coords:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        legend.append((LABELS.get(name, name), colour, False))
    for i, (label, colour, dashed) in enumerate(legend):
        y = top + 10 + 22 * i
        x = left + plot_w + 14
        if dashed:
            draw.line([(x, y + 7), (x + 8, y + 7)], fill=colour, width=2)
            draw.line([(x + 14, y + 7), (x + 22, y + 7)], fill=colour, width=2)
        else:
            draw.line([(x, y + 7), (x + 22, y + 7)], fill=colour, width=3)
        draw.text((x + 28, y), label, fill=(0, 0, 0), font=small)
    path = Path(path)
    canvas.save(path)
    return path


# -- report files and the printed table -------------------------------------------------------------
