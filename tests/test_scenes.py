"""The synthetic scenes task: determinism, disjoint splits, answers that match the pixels, LLaVA export."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lvpeft.demo.questions import VQAExample, answer_vocabulary, export_llava_json, make_split, vocabulary
from lvpeft.demo.scenes import NUMBER_WORDS, QUESTION_KINDS, SceneConfig, split_of_layout

CONFIG = SceneConfig()


@pytest.fixture(scope="module")
def test_examples() -> list[VQAExample]:
    return make_split("test", 200, seed=0)


def parse_image(image: Image.Image, config: SceneConfig) -> dict[int, tuple[str, str]]:
    """Read ``{cell: (colour, shape)}`` back from the pixels alone, independently of the generator."""
    pixels = np.asarray(image)
    names = {rgb: name for name, rgb in config.rgb.items()}
    cell_px = config.image_size // config.grid
    found = {}
    for cell in range(config.grid * config.grid):
        row, col = divmod(cell, config.grid)
        block = pixels[row * cell_px : (row + 1) * cell_px, col * cell_px : (col + 1) * cell_px]
        mask = (block != np.array(config.background)).any(-1)
        if not mask.any():
            continue
        colours = {tuple(int(v) for v in p) for p in block[mask]}
        assert len(colours) == 1, f"cell {cell} holds several colours {colours}"
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        shape = "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"
        found[cell] = (names[colours.pop()], shape)
    return found


def expected_answer(question: str, drawn: dict[int, tuple[str, str]], config: SceneConfig) -> str:
    """The answer to a question, worked out from the parsed pixels."""
    words = question.removesuffix(" ?").split()
    if question.startswith("what colour is the"):
        matches = [c for c, s in drawn.values() if s == words[-1]]
        assert len(matches) == 1, "colour questions must ask about a unique shape"
        return matches[0]
    if question.startswith("what shape is at the"):
        cell = config.position_names.index(" ".join(words[5:]))
        return drawn[cell][1]
    if question.startswith("is there a"):
        return "yes" if (words[3], words[4]) in drawn.values() else "no"
    if question.startswith("how many"):
        return NUMBER_WORDS[sum(c == words[2] for c, _ in drawn.values())]
    raise AssertionError(f"unexpected question {question!r}")


def test_same_seed_same_examples_other_seed_other_examples() -> None:
    a, b, c = (
        make_split("train", 30, seed=5),
        make_split("train", 30, seed=5),
        make_split("train", 30, seed=6),
    )
    for x, y in zip(a, b, strict=True):
        assert (x.id, x.question, x.answer, x.scene, x.region) == (
            y.id,
            y.question,
            y.answer,
            y.scene,
            y.region,
        )
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert np.array_equal(x.patch_labels, y.patch_labels)
    assert [x.scene for x in a] != [x.scene for x in c]


def test_splits_are_disjoint_by_layout() -> None:
    layouts = {}
    for split, n in (("train", 600), ("validation", 200), ("test", 200)):
        examples = make_split(split, n, seed=0)
        assert all(split_of_layout(e.scene) == split and e.split == split for e in examples)
        layouts[split] = {e.scene.layout_key() for e in examples}
    assert not layouts["train"] & layouts["validation"]
    assert not layouts["train"] & layouts["test"]
    assert not layouts["validation"] & layouts["test"]


def test_answers_match_the_drawn_pixels(test_examples: list[VQAExample]) -> None:
    for e in test_examples:
        drawn = parse_image(e.image, CONFIG)
        assert drawn == {o.cell: (o.colour, o.shape) for o in e.scene.objects}
        assert e.answer == expected_answer(e.question, drawn, CONFIG), e.id


def test_every_kind_and_answer_occurs_and_yes_no_is_balanced() -> None:
    examples = make_split("train", 1000, seed=1)
    assert set(Counter(e.kind for e in examples)) == set(QUESTION_KINDS)
    answers = Counter(e.answer for e in examples)
    assert set(answers) <= set(answer_vocabulary(CONFIG))
    assert set(answers) >= {"yes", "no", "zero", "one", "two", *CONFIG.colours, *CONFIG.shapes}
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6
    assert all(w in vocabulary(CONFIG) for e in examples for w in [*e.question.split(), e.answer])


def test_patch_labels_match_the_pixels(test_examples: list[VQAExample]) -> None:
    p, n = CONFIG.patch_size, CONFIG.patches_per_side
    for e in test_examples[:50]:
        pixels = np.asarray(e.image)
        assert e.patch_labels.shape == (n, n) and e.patch_labels.dtype == np.int64
        for r in range(n):
            for c in range(n):
                block = pixels[r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(-1, 3)
                fg = block[(block != np.array(CONFIG.background)).any(-1)]
                if len(fg) == 0:
                    assert e.patch_labels[r, c] == 0
                    continue
                cell = (r * p // (CONFIG.image_size // CONFIG.grid)) * CONFIG.grid + (
                    c * p // (CONFIG.image_size // CONFIG.grid)
                )
                obj = next(o for o in e.scene.objects if o.cell == cell)
                assert tuple(fg[0]) == CONFIG.rgb[obj.colour]
                assert e.patch_labels[r, c] == CONFIG.patch_class(obj.colour, obj.shape)


def test_every_shape_sits_on_the_same_2x2_patches_of_its_cell(test_examples: list[VQAExample]) -> None:
    n, per_cell = CONFIG.patches_per_side, CONFIG.patches_per_side // CONFIG.grid
    for e in test_examples[:50]:
        for obj in e.scene.objects:
            row, col = divmod(obj.cell, CONFIG.grid)
            top, left = row * per_cell + per_cell // 2 - 1, col * per_cell + per_cell // 2 - 1
            block = e.patch_labels[top : top + 2, left : left + 2]
            assert (block == CONFIG.patch_class(obj.colour, obj.shape)).all()
        assert (e.patch_labels > 0).sum() == 4 * len(e.scene.objects)
        assert e.patch_labels.shape == (n, n)


def test_region_is_small_and_covers_the_evidence(test_examples: list[VQAExample]) -> None:
    p, n = CONFIG.patch_size, CONFIG.patches_per_side
    for e in test_examples:
        assert list(e.region) == sorted(set(e.region)) and all(0 <= i < CONFIG.num_patches for i in e.region)
        assert len(e.region) <= CONFIG.num_patches // 2
        pixels = np.asarray(e.image).reshape(n, p, n, p, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, p * p, 3)
        if e.kind == "count":  # exactly the patches showing any pixel of the asked colour
            colour = CONFIG.rgb[e.question.split()[2]]
            showing = {i for i in range(n * n) if (pixels[i] == np.array(colour)).all(-1).any()}
            assert set(e.region) == showing, e.id
        if e.kind == "colour_of_shape":  # the one object's pixels, all of the answered colour
            colour = np.array(CONFIG.rgb[e.answer])
            assert e.region and all((pixels[i] == colour).all(-1).any() for i in e.region)
        if e.kind in ("colour_of_shape", "shape_at", "exists") and e.answer != "no":
            assert e.region
    mask = test_examples[0].region_mask()
    assert mask.shape == (CONFIG.num_patches,) and mask.sum() == len(test_examples[0].region)


def test_images_give_at_least_144_vision_tokens(test_examples: list[VQAExample]) -> None:
    assert CONFIG.num_patches == (CONFIG.image_size // CONFIG.patch_size) ** 2 >= 144
    for e in test_examples[:10]:
        assert e.image.mode == "RGB" and e.image.size == (CONFIG.image_size, CONFIG.image_size)


def test_export_round_trip_is_llava_json(tmp_path, test_examples: list[VQAExample]) -> None:
    examples = test_examples[:6]
    path = export_llava_json(examples, tmp_path / "export")
    records = json.loads(path.read_text())
    assert isinstance(records, list) and len(records) == len(examples)
    for record, e in zip(records, examples, strict=True):
        assert set(record) == {"id", "image", "conversations"} and record["id"] == e.id
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": f"<image>\n{e.question}"}
        assert gpt == {"from": "gpt", "value": e.answer}
        image_file = path.parent / record["image"]
        assert image_file.is_file()
        assert np.array_equal(np.asarray(Image.open(image_file).convert("RGB")), np.asarray(e.image))


def test_export_puts_the_question_first_on_request(tmp_path, test_examples: list[VQAExample]) -> None:
    path = export_llava_json(test_examples[:2], tmp_path / "export", question_first=True)
    for record, e in zip(json.loads(path.read_text()), test_examples[:2], strict=True):
        assert record["conversations"][0] == {"from": "human", "value": f"{e.question}\n<image>"}


def test_config_rejects_inconsistent_geometry() -> None:
    with pytest.raises(ValueError):
        SceneConfig(image_size=100)
    with pytest.raises(ValueError):
        SceneConfig(max_objects=10)


def test_make_split_of_some_kinds_skips_the_others_and_checks_them() -> None:
    every = make_split("train", 40, seed=3)
    some = make_split("train", 10, seed=3, kinds=["count", "exists"])
    assert {e.kind for e in some} <= {"count", "exists"} and len(some) == 10
    assert [e.id for e in some] == [e.id for e in every if e.kind in ("count", "exists")][:10]
    with pytest.raises(ValueError, match="subset of"):
        make_split("train", 1, kinds=["counting"])
