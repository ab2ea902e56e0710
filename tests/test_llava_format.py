"""Tests for :mod:`lvpeft.training.data.llava_format`: loading, validation, TRL's label masking end to end."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import is_chat_template_stop_token_trained
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from lvpeft.training.data import llava_format
from lvpeft.training.data.llava_format import (
    LLAVA_FEATURES,
    LLAVA_TRAINING_CHAT_TEMPLATE,
    REASONS,
    LoadReport,
    load_llava_dataset,
)

# SFTConfig's default gradient_checkpointing=True sets a field transformers 5.2x has deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

# ---------------------------------------------------------------- helpers

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = [
    *("USER", "ASSISTANT", ":", "?"),
    *("what", "is", "it", "this", "a", "cat", "dog", "red", "blue", "and", "now", "colour", "yes", "no"),
]
IMAGE_SIDE, PATCH = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIDE // PATCH) ** 2  # 16: + 1 CLS (num_additional_image_tokens) - 1 ("default")


def tiny_processor(chat_template: str = LLAVA_TRAINING_CHAT_TEMPLATE) -> LlavaProcessor:
    """An offline ``LlavaProcessor`` that turns one ``<image>`` into 16 image tokens.

    Things that need care: ``<image>`` must be an added special token and ``tokenizer.image_token``
    (``extra_special_tokens``); assistant masks need a fast tokenizer (offsets), hence
    ``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model, with a whitespace/punctuation
    pre-tokenizer so ``"ASSISTANT:"`` is two tokens; ``CLIPImageProcessor`` needs torchvision in
    transformers 5.2x (it falls back to the PIL class with a warning), so the PIL class is used directly.
    """
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIAL_TOKENS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def tiny_llava(processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA (1-layer CLIP, 1-layer Llama) matching :func:`tiny_processor`."""
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIDE,
            patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config)


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> Path:
    """Write a small solid-colour PNG at ``path`` (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_rows(folder: Path, rows: list[Any], name: str = "data.json") -> Path:
    """Write ``rows`` as a JSON list (or JSONL when ``name`` ends with ``.jsonl``) in ``folder``."""
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        path.write_text(json.dumps(rows))
    return path


def turns(*values: str) -> list[dict[str, str]]:
    """Alternating human/gpt turns with the given values."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def text(t: str) -> dict[str, str | None]:
    """A text content block as the dataset returns it."""
    return {"type": "text", "text": t}


IMAGE_BLOCK = {"type": "image", "text": None}

SINGLE = {"id": "single", "image": "img/a.png", "conversations": turns("<image>\nwhat is this ?", "a cat")}
MULTI = {
    "id": "multi",
    "image": "img/b.png",
    "conversations": turns("what colour is it ?\n<image>", "red", "and now ?", "blue dog"),
}
TWO_IMAGES = {
    "id": "two",
    "image": ["img/a.png", "img/b.png"],
    "conversations": turns("<image>\nwhat is it ?", "a cat", "and this ? <image>", "a dog"),
}
TEXT_ONLY = {"id": "text", "conversations": turns("what is a cat ?", "a cat")}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with ``img/a.png`` (red) and ``img/b.png`` (blue)."""
    png(tmp_path / "img" / "a.png", (200, 30, 30))
    png(tmp_path / "img" / "b.png", (30, 30, 200))
    return tmp_path


# ---------------------------------------------------------------- loading


def test_single_and_multi_turn_rows_load_into_trl_conversational_format(data_dir: Path) -> None:
    path = write_rows(data_dir, [SINGLE, MULTI, TWO_IMAGES])
    ds, report = load_llava_dataset(path, data_dir)

    assert report == LoadReport(total_rows=3, loaded=3)
    assert ds.features == LLAVA_FEATURES
    assert ds.column_names == ["id", "images", "messages"]
    assert ds["id"] == ["single", "multi", "two"]
    assert ds[0]["messages"] == [
        {"role": "user", "content": [IMAGE_BLOCK, text("what is this ?")]},
        {"role": "assistant", "content": [text("a cat")]},
    ]
    # placeholder at the end of the turn stays at the end; every turn of a multi-turn row is kept
    assert ds[1]["messages"] == [
        {"role": "user", "content": [text("what colour is it ?"), IMAGE_BLOCK]},
        {"role": "assistant", "content": [text("red")]},
        {"role": "user", "content": [text("and now ?")]},
        {"role": "assistant", "content": [text("blue dog")]},
    ]
    # two images, one placeholder in each human turn, in order
    assert [m["content"].count(IMAGE_BLOCK) for m in ds[2]["messages"]] == [1, 0, 1, 0]
    images = ds[2]["images"]
    assert [type(im).__name__ for im in images] == ["PngImageFile", "PngImageFile"]
    assert [im.mode for im in images] == ["RGB", "RGB"]
    assert [im.getpixel((0, 0)) for im in images] == [(200, 30, 30), (30, 30, 200)]


def test_images_are_stored_as_paths_not_pixels(data_dir: Path) -> None:
    ds, _ = load_llava_dataset(write_rows(data_dir, [SINGLE]), data_dir)
    stored = ds.data.table.column("images").to_pylist()[0][0]
    assert stored == {"bytes": None, "path": str((data_dir / "img" / "a.png").absolute())}


def test_text_only_rows_are_dropped_by_default_and_kept_with_the_flag(data_dir: Path) -> None:
    path = write_rows(data_dir, [SINGLE, TEXT_ONLY])
    ds, report = load_llava_dataset(path, data_dir)
    assert ds["id"] == ["single"]
    assert (report.loaded, report.skipped_text_only, report.num_bad_rows) == (1, 1, 0)

    ds, report = load_llava_dataset(path, data_dir, keep_text_only=True)
    assert ds["id"] == ["single", "text"]
    assert ds[1]["images"] == []
    assert ds[1]["messages"][0] == {"role": "user", "content": [text("what is a cat ?")]}
    assert (report.loaded, report.skipped_text_only) == (2, 0)


def test_jsonl_input_default_image_folder_and_rows_without_id(data_dir: Path) -> None:
    no_id = {k: v for k, v in SINGLE.items() if k != "id"}
    path = write_rows(data_dir, [SINGLE, no_id], name="data.jsonl")
    with path.open("a") as f:
        f.write("\n{not json\n")
    ds, report = load_llava_dataset(path)  # image_folder defaults to the data file's folder
    assert ds["id"] == ["single", "#1"]
    assert report.skipped_by_reason == {"malformed_json": 1}
    assert report.bad_rows[0][0] == "#2"
    assert report.bad_rows[0][1].startswith("malformed_json: line 4")


def test_max_samples_stops_after_that_many_loaded_rows(data_dir: Path) -> None:
    bad = {"id": "bad", "image": "img/missing.png", "conversations": turns("<image>", "a")}
    path = write_rows(data_dir, [bad, SINGLE, MULTI, TWO_IMAGES])
    ds, report = load_llava_dataset(path, data_dir, max_samples=2)
    assert ds["id"] == ["single", "multi"]
    assert (report.total_rows, report.loaded, report.num_bad_rows) == (3, 2, 1)


def test_rows_converted_in_several_arrow_pieces_keep_their_order(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llava_format, "_FLUSH_ROWS", 2)
    rows = [dict(SINGLE, id=f"s{i}") for i in range(5)]
    ds, _ = load_llava_dataset(write_rows(data_dir, rows), data_dir)
    assert ds["id"] == [f"s{i}" for i in range(5)]
    assert ds.features == LLAVA_FEATURES


def test_each_distinct_image_is_checked_once(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    check = llava_format._check_image
    monkeypatch.setattr(llava_format, "_check_image", lambda p, mode: calls.append(p) or check(p, mode))
    load_llava_dataset(write_rows(data_dir, [SINGLE, dict(SINGLE, id="again"), TWO_IMAGES]), data_dir)
    assert sorted(Path(p).name for p in calls) == ["a.png", "b.png"]


def test_file_level_errors_raise() -> None:
    with pytest.raises(FileNotFoundError):
        load_llava_dataset("/nonexistent/data.json")


def test_a_json_file_must_hold_a_list(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_llava_dataset(tmp_path / "d.json", tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        load_llava_dataset(tmp_path / "d.json", tmp_path, on_error="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad rows


def _corrupt_png(folder: Path) -> None:
    (folder / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def _truncated_png(folder: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    (folder / "img" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


BAD_ROWS: dict[str, tuple[Any, str]] = {
    # case name: (row, reason code)
    "missing_image": (
        {"id": "r", "image": "img/nope.png", "conversations": turns("<image>", "a")},
        "missing_image",
    ),
    "corrupt_image": (
        {"id": "r", "image": "img/corrupt.png", "conversations": turns("<image>", "a")},
        "corrupt_image",
    ),
    "truncated_image": (
        {"id": "r", "image": "img/truncated.png", "conversations": turns("<image>", "a")},
        "corrupt_image",
    ),
    "not_an_object": (["<image>", "a"], "malformed_row"),
    "no_conversations": ({"id": "r", "image": "img/a.png"}, "malformed_row"),
    "conversations_not_a_list": ({"id": "r", "image": "img/a.png", "conversations": "hi"}, "malformed_row"),
    "turn_without_value": (
        {"id": "r", "image": "img/a.png", "conversations": [{"from": "human"}]},
        "malformed_row",
    ),
    "unknown_role": (
        {"id": "r", "image": "img/a.png", "conversations": [{"from": "system", "value": "<image>"}]},
        "malformed_row",
    ),
    "bad_image_field": ({"id": "r", "image": 3, "conversations": turns("<image>", "a")}, "malformed_row"),
    "empty_conversations": ({"id": "r", "image": "img/a.png", "conversations": []}, "empty_conversations"),
    "gpt_first": (
        {"id": "r", "image": "img/a.png", "conversations": turns("<image>", "a")[::-1]},
        "bad_role_order",
    ),
    "two_humans": (
        {"id": "r", "image": "img/a.png", "conversations": [*turns("<image>"), *turns("q", "a")]},
        "bad_role_order",
    ),
    "ends_with_human": (
        {"id": "r", "image": "img/a.png", "conversations": turns("<image>", "a", "q")},
        "bad_role_order",
    ),
    "empty_answer": (
        {"id": "r", "image": "img/a.png", "conversations": turns("<image>", "  ")},
        "empty_turn",
    ),
    "image_without_placeholder": (
        {"id": "r", "image": "img/a.png", "conversations": turns("what ?", "a")},
        "placeholder_mismatch",
    ),
    "placeholder_without_image": (
        {"id": "r", "conversations": turns("<image>\nwhat ?", "a")},
        "placeholder_mismatch",
    ),
    "two_placeholders_one_image": (
        {"id": "r", "image": "img/a.png", "conversations": turns("<image> <image>", "a")},
        "placeholder_mismatch",
    ),
    "placeholder_in_answer": (
        {"id": "r", "image": "img/a.png", "conversations": turns("<image>", "a <image>")},
        "placeholder_mismatch",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_are_reported_skipped_or_raised(data_dir: Path, case: str) -> None:
    _corrupt_png(data_dir)
    _truncated_png(data_dir)
    row, reason = BAD_ROWS[case]
    assert reason in REASONS
    row_id = "r" if isinstance(row, dict) else "#1"
    path = write_rows(data_dir, [SINGLE, row])

    ds, report = load_llava_dataset(path, data_dir, on_error="skip")
    assert ds["id"] == ["single"]
    assert report.skipped_by_reason == {reason: 1}
    assert len(report.bad_rows) == 1
    assert report.bad_rows[0][0] == row_id
    assert report.bad_rows[0][1].startswith(f"{reason}: ")

    with pytest.raises(ValueError, match="bad rows found before training") as info:
        load_llava_dataset(path, data_dir, on_error="raise")
    assert f"row {row_id!r}: {reason}: " in str(info.value)


def test_report_counts_every_reason_keeps_the_first_rows_and_logs(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = [
        {"id": f"m{i}", "image": f"img/m{i}.png", "conversations": turns("<image>", "a")} for i in range(25)
    ]
    rows = [*missing, SINGLE, BAD_ROWS["gpt_first"][0], TEXT_ONLY]
    with caplog.at_level(logging.WARNING, logger="lvpeft.training.data.llava_format"):
        ds, report = load_llava_dataset(write_rows(data_dir, rows), data_dir)
    assert ds["id"] == ["single"]
    assert report.skipped_by_reason == {"missing_image": 25, "bad_role_order": 1}
    assert (report.total_rows, report.loaded, report.skipped_text_only, report.num_bad_rows) == (28, 1, 1, 26)
    assert [row_id for row_id, _ in report.bad_rows] == [f"m{i}" for i in range(20)]  # first 20, file order
    assert "missing_image=25" in caplog.text and "bad_role_order=1" in caplog.text
    assert "'m0': missing_image" in caplog.text


def test_verify_misses_a_truncated_jpeg_that_load_catches(data_dir: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    (data_dir / "img" / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    path = write_rows(data_dir, [{"id": "t", "image": "img/t.jpg", "conversations": turns("<image>", "a")}])
    assert load_llava_dataset(path, data_dir, image_check="verify")[1].loaded == 1
    assert load_llava_dataset(path, data_dir, image_check="exists")[1].loaded == 1
    assert load_llava_dataset(path, data_dir)[1].skipped_by_reason == {"corrupt_image": 1}  # default "load"


# ---------------------------------------------------------------- label masking through TRL


def answer_positions(tokens: list[str]) -> list[int]:
    """Positions from after each ``ASSISTANT :`` through the next ``</s>`` (inclusive)."""
    positions, inside = [], False
    for i, token in enumerate(tokens):
        if inside:
            positions.append(i)
            inside = token != "</s>"
        elif token == ":" and i > 0 and tokens[i - 1] == "ASSISTANT":
            inside = True
    return positions


def expected_labels(row: dict[str, Any]) -> list[str]:
    """The label tokens a row should get: every gpt answer's words, each followed by ``</s>``."""
    return [tok for turn in row["conversations"][1::2] for tok in [*turn["value"].split(), "</s>"]]


def row_images(row: dict[str, Any]) -> list[str]:
    """The row's ``"image"`` field as a list."""
    images = row.get("image", [])
    return [images] if isinstance(images, str) else images


def check_batch(
    batch: dict[str, torch.Tensor], processor: LlavaProcessor, rows: list[dict[str, Any]]
) -> None:
    """Assert labels == input_ids exactly on the answers (+ ``</s>``) of each row, -100 elsewhere."""
    tokenizer = processor.tokenizer
    n_images = sum(len(row_images(row)) for row in rows)
    assert batch["pixel_values"].shape == (n_images, 3, IMAGE_SIDE, IMAGE_SIDE)
    for ids, labels, row in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), rows):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens.count("<image>") == TOKENS_PER_IMAGE * len(row_images(row))
        trained = [i for i, label in enumerate(labels) if label != -100]
        assert trained == answer_positions(tokens)
        assert [tokens[i] for i in trained] == expected_labels(row)
        assert all(labels[i] == ids[i] for i in trained)
        assert not {"<image>", "USER", "<pad>", "<s>"} & {tokens[i] for i in trained}


def make_trainer(tmp_path: Path, processor: LlavaProcessor, ds: Any, **config: Any) -> SFTTrainer:
    """An ``SFTTrainer`` on a tiny LLaVA, with the given ``SFTConfig`` options on top of quiet defaults."""
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=len(ds),
        **config,
    )
    return SFTTrainer(model=tiny_llava(processor), args=args, train_dataset=ds, processing_class=processor)


def test_sft_trainer_with_assistant_only_loss_trains_only_the_answers(data_dir: Path) -> None:
    rows = [SINGLE, MULTI, TWO_IMAGES, TEXT_ONLY]
    ds, _ = load_llava_dataset(write_rows(data_dir, rows), data_dir, keep_text_only=True)
    processor = tiny_processor()
    assert is_chat_template_stop_token_trained(processor)  # TRL's own check: </s> is inside the mask
    trainer = make_trainer(data_dir, processor, ds, assistant_only_loss=True, max_length=None)
    collator = trainer.data_collator
    assert isinstance(collator, DataCollatorForVisionLanguageModeling) and collator.assistant_only_loss

    # the columns SFTTrainer keeps (remove_unused_columns=True by default): id is dropped
    kept = trainer._remove_unused_columns(ds)
    assert kept.column_names == ["images", "messages"]
    check_batch(collator([kept[i] for i in range(len(rows))]), processor, rows)  # mixed batch
    check_batch(collator([kept[1]]), processor, [MULTI])  # multi-turn alone (no padding)
    # each turn keeps its row's order: MULTI asks before its image, TWO_IMAGES' second turn too
    multi = processor.tokenizer.convert_ids_to_tokens(collator([kept[1]])["input_ids"][0].tolist())
    assert multi.index("colour") < multi.index("<image>")
    two = processor.tokenizer.convert_ids_to_tokens(collator([kept[2]])["input_ids"][0].tolist())
    last_image = len(two) - 1 - two[::-1].index("<image>")
    assert two.index("<image>") < two.index("what") and two.index("this") < last_image

    # the batch the training loop actually sees (shuffled, so compare the label strings as a multiset)
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = processor.tokenizer
    got = sorted(
        " ".join(tokenizer.convert_ids_to_tokens([i for i, lab in zip(ids, labels) if lab != -100]))
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())
    )
    assert got == sorted(" ".join(expected_labels(r)) for r in rows)
    assert torch.isfinite(trainer.model(**batch).loss)


def test_sft_config_defaults_would_train_on_image_and_user_tokens(data_dir: Path) -> None:
    ds, _ = load_llava_dataset(write_rows(data_dir, [SINGLE]), data_dir)
    processor = tiny_processor()
    trainer = make_trainer(data_dir, processor, ds, max_length=None)  # assistant_only_loss=False
    batch = trainer.data_collator([trainer._remove_unused_columns(ds)[0]])
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    trained = {tokens[i] for i, label in enumerate(batch["labels"][0].tolist()) if label != -100}
    assert {"<image>", "USER", "what"} <= trained


def test_assistant_only_loss_refuses_a_template_without_generation_markers(data_dir: Path) -> None:
    ds, _ = load_llava_dataset(write_rows(data_dir, [SINGLE]), data_dir)
    plain = LLAVA_TRAINING_CHAT_TEMPLATE.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    with pytest.raises(ValueError, match="generation"):
        make_trainer(data_dir, tiny_processor(plain), ds, assistant_only_loss=True, max_length=None)
