"""Questions about the synthetic scenes (see :mod:`lvpeft.demo.scenes`), the examples they make, the
splits, and their export as LLaVA-format JSON + PNGs (what `lvpeft train` reads).

Shapes: P = (image_size // patch_size) ** 2 patches per image, row-major like the vision tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import (
    NUMBER_WORDS,
    QUESTION_KINDS,
    SPLIT_STREAMS,
    SPLITS,
    Scene,
    SceneConfig,
    render_scene,
    sample_scene,
    split_of_layout,
)


@dataclass(frozen=True)
class Question:
    """A question about a scene, its single-word answer and the objects that hold the evidence.

    Attributes:
        kind: One of :data:`QUESTION_KINDS`.
        text: The question, lower case, words and ``?`` separated by single spaces.
        answer: The single-word answer.
        evidence: Indices into ``Scene.objects`` of the objects the answer depends on. For a ``no``
            answer to ``exists`` these are the near misses (same colour or same shape).
        cell: For ``shape_at`` the asked cell, else ``None``.
    """

    kind: str
    text: str
    answer: str
    evidence: tuple[int, ...]
    cell: int | None = None


@dataclass
class VQAExample:
    """One image-question-answer triple with its per-patch annotation.

    Attributes:
        id: Unique id, ``"<split>-<seed>-<index>"``.
        split: One of :data:`SPLITS`.
        scene: The drawn layout.
        image: RGB PIL image, ``image_size`` x ``image_size``.
        question: The question text (without the ``<image>`` placeholder).
        answer: The single-word answer.
        kind: One of :data:`QUESTION_KINDS`.
        patch_labels: ``(P, P)`` int64 class map (``P = image_size // patch_size``), 0 = background,
            else ``SceneConfig.patch_class(colour, shape)`` of the object with the most pixels in it.
        region: Sorted flat (row-major) indices of the patches touched by the evidence objects
            (:attr:`Question.evidence`); index ``i`` is vision token ``i`` (CLS excluded). Empty when
            the answer rests on an absence (``count`` = ``zero``, or ``exists`` = ``no`` with no near miss).
    """

    id: str
    split: str
    scene: Scene
    image: Image.Image
    question: str
    answer: str
    kind: str
    patch_labels: np.ndarray
    region: tuple[int, ...]

    def region_mask(self) -> np.ndarray:
        """``(P * P,)`` bool mask of :attr:`region` over the vision tokens."""
        mask = np.zeros(self.patch_labels.size, dtype=bool)
        mask[list(self.region)] = True
        return mask


def _touched_patches(object_map: np.ndarray, object_ids: Sequence[int], patch_size: int) -> tuple[int, ...]:
    """Flat indices of the patches holding at least one pixel of any object in ``object_ids`` (1-based)."""
    n = object_map.shape[0] // patch_size
    hit = np.isin(object_map, list(object_ids)).reshape(n, patch_size, n, patch_size).any(axis=(1, 3))
    return tuple(int(i) for i in np.flatnonzero(hit))


def ask_question(
    scene: Scene, rng: np.random.Generator, config: SceneConfig, kind: str | None = None
) -> Question:
    """Draw one question about ``scene``; if ``kind`` is None it is drawn among the kinds it supports."""
    objs = scene.objects
    unique_shapes = [s for s in config.shapes if sum(o.shape == s for o in objs) == 1]
    kinds = [k for k in QUESTION_KINDS if k != "colour_of_shape" or unique_shapes]
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    if kind not in kinds:
        raise ValueError(f"scene cannot support a {kind!r} question")
    if kind == "colour_of_shape":
        shape = unique_shapes[int(rng.integers(len(unique_shapes)))]
        i = next(i for i, o in enumerate(objs) if o.shape == shape)
        return Question(kind, f"what colour is the {shape} ?", objs[i].colour, (i,))
    if kind == "shape_at":
        i = int(rng.integers(len(objs)))
        where = config.position_names[objs[i].cell]
        return Question(kind, f"what shape is at the {where} ?", objs[i].shape, (i,), cell=objs[i].cell)
    if kind == "exists":
        present = {(o.colour, o.shape) for o in objs}
        if rng.random() < 0.5:
            colour, shape = sorted(present)[int(rng.integers(len(present)))]
        else:
            absent = sorted({(c, s) for c in config.colours for s in config.shapes} - present)
            colour, shape = absent[int(rng.integers(len(absent)))]
        answer = "yes" if (colour, shape) in present else "no"
        if answer == "yes":
            evidence = tuple(i for i, o in enumerate(objs) if (o.colour, o.shape) == (colour, shape))
        else:
            evidence = tuple(i for i, o in enumerate(objs) if o.colour == colour or o.shape == shape)
        return Question(kind, f"is there a {colour} {shape} ?", answer, evidence)
    if kind == "count":
        colour = config.colours[int(rng.integers(len(config.colours)))]
        evidence = tuple(i for i, o in enumerate(objs) if o.colour == colour)
        return Question(kind, f"how many {colour} shapes ?", NUMBER_WORDS[len(evidence)], evidence)
    raise ValueError(f"unknown question kind {kind!r}")


def make_example(
    scene: Scene, question: Question, config: SceneConfig, example_id: str, split: str
) -> VQAExample:
    """Render ``scene`` and bundle it with ``question``, its patch labels and its evidence region."""
    image, object_map, patch_objects = render_scene(scene, config)
    classes = np.array([0] + [config.patch_class(o.colour, o.shape) for o in scene.objects], dtype=np.int64)
    region = _touched_patches(object_map, [i + 1 for i in question.evidence], config.patch_size)
    return VQAExample(
        id=example_id,
        split=split,
        scene=scene,
        image=image,
        question=question.text,
        answer=question.answer,
        kind=question.kind,
        patch_labels=classes[patch_objects],
        region=region,
    )


def iter_split(split: str, seed: int = 0, config: SceneConfig | None = None) -> Iterator[VQAExample]:
    """Endless deterministic stream of examples of one split (scenes of other splits are skipped)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    config = config or SceneConfig()
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
    index = 0
    while True:
        scene = sample_scene(rng, config)
        if split_of_layout(scene) != split:
            continue
        yield make_example(scene, ask_question(scene, rng, config), config, f"{split}-{seed}-{index}", split)
        index += 1


def make_split(
    split: str,
    num_examples: int,
    seed: int = 0,
    config: SceneConfig | None = None,
    kinds: Sequence[str] | None = None,
) -> list[VQAExample]:
    """The first ``num_examples`` examples of :func:`iter_split` as a list; with ``kinds``, the first
    ``num_examples`` whose question is of one of those kinds (the others are skipped)."""
    if kinds is not None and (not kinds or set(kinds) - set(QUESTION_KINDS)):
        raise ValueError(f"kinds must be a non-empty subset of {QUESTION_KINDS}, got {list(kinds)}")
    stream = (e for e in iter_split(split, seed, config) if kinds is None or e.kind in kinds)
    return [next(stream) for _ in range(num_examples)]


def vocabulary(config: SceneConfig | None = None) -> list[str]:
    """Every word and punctuation token that questions and answers use, sorted."""
    config = config or SceneConfig()
    words = {"what", "colour", "is", "the", "shape", "at", "there", "a", "how", "many", "shapes", "?"}
    words |= {"yes", "no", *config.colours, *config.shapes, *NUMBER_WORDS[: config.max_objects + 1]}
    words |= {w for name in config.position_names for w in name.split()}
    return sorted(words)


def answer_vocabulary(config: SceneConfig | None = None) -> list[str]:
    """Every possible answer word, sorted."""
    config = config or SceneConfig()
    return sorted({"yes", "no", *config.colours, *config.shapes, *NUMBER_WORDS[: config.max_objects + 1]})


def export_llava_json(
    examples: Sequence[VQAExample],
    folder: str | Path,
    json_name: str = "data.json",
    question_first: bool = False,
) -> Path:
    """Write ``examples`` as LLaVA-format JSON plus one PNG per example into ``folder``.

    The JSON is a list of ``{"id", "image": "<file name>", "conversations": [{"from": "human",
    "value": "<image>\\n<question>"}, {"from": "gpt", "value": "<answer>"}]}`` (``"<question>\\n<image>"``
    with ``question_first``); image file names are relative to ``folder``. Returns the path of the JSON
    file.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for ex in examples:
        name = f"images/{ex.id}.png"
        ex.image.save(folder / name)
        records.append(
            {
                "id": ex.id,
                "image": name,
                "conversations": [
                    {
                        "from": "human",
                        "value": f"{ex.question}\n<image>" if question_first else f"<image>\n{ex.question}",
                    },
                    {"from": "gpt", "value": ex.answer},
                ],
            }
        )
    path = folder / json_name
    path.write_text(json.dumps(records, indent=1))
    return path
