"""Training chat templates per family (`lvpeft.training.data.chat_templates`).

For each family lvpeft ships a template for, with a tiny processor configured like the public checkpoint
(`family_processors.py`) and the public template as a fixture: the shipped template renders every prompt
(`add_generation_prompt=True`) and, where the history renders alike, whole conversations exactly as the
public one (after the BOS it writes where the tokenizer adds one); TRL's collator, fed LLaVA-format rows,
labels the answers and their end-of-turn token and nothing else; the token ids before the first answer are
those the public template gives at inference, image tokens included. The helper keeps a template with
`{% generation %}` markers, picks the family's otherwise, and refuses, saying what to pass, a template of
another format or a family without a shipped template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from trl.chat_template_utils import is_chat_template_stop_token_trained
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from family_processors import FAMILIES, Family, public_template, skip_video_processors
from lvpeft.training.data.chat_templates import (
    TRAINING_CHAT_TEMPLATES,
    ChatTemplateError,
    has_generation_markers,
    training_chat_template,
)
from lvpeft.training.data.llava_format import load_llava_dataset
from lvpeft.training.data.training_templates import (
    LLAVA_NEXT_TRAINING_CHAT_TEMPLATE,
    LLAVA_TRAINING_CHAT_TEMPLATE,
    QWEN2_VL_TRAINING_CHAT_TEMPLATE,
)

TRL_COPIES = {  # TRL keeps copies of some public templates, to recognise them: ours must be the same
    "llava-next": "llava_next",
    "qwen2.5-vl": "qwen2_5_vl",
    "qwen3-vl": "qwen3_vl",
    "gemma3": "gemma3",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
}
ROWS = [
    {
        "id": "one",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": "A red cube."},
        ],
    },
    {
        "id": "two",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": "A red cube."},
            {"from": "human", "value": "<image>\nAnd in this one?"},
            {"from": "gpt", "value": "Two blue balls."},
        ],
    },
]
ANSWERS = [["A red cube."], ["A red cube.", "Two blue balls."]]


@pytest.fixture(autouse=True)
def _images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_video_processors(monkeypatch.setattr)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The two LLaVA-format rows, loaded as `lvpeft train` loads them (image blocks carry text=None)."""
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    (folder / "data.json").write_text(json.dumps(ROWS))
    dataset, _ = load_llava_dataset(folder / "data.json", folder, on_error="raise")
    return dataset


def shipped(family: Family) -> Any:
    """The training template lvpeft ships for the family's public checkpoint."""
    (template,) = (
        t for t in TRAINING_CHAT_TEMPLATES[family.model_type] if t.reference.endswith("/" + family.checkpoint)
    )
    return template


def markerless(template: str) -> str:
    """`template` without its `{% generation %}` tags (the llava-hf templates have them)."""
    for tag in ("{% generation %}", "{% endgeneration %}"):
        template = template.replace(tag, "")
    assert not has_generation_markers(template)
    return template


def render(processor: Any, template: str, messages: list[dict[str, Any]], prompt: bool) -> str:
    return processor.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )


def test_generation_markers_are_tags_not_the_word() -> None:
    assert not has_generation_markers(None)
    assert not has_generation_markers("{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    assert has_generation_markers("{% generation %}{{ x }}{% endgeneration %}")
    assert has_generation_markers("{%- generation -%}{{ x }}{%- endgeneration -%}")
    assert has_generation_markers({"default": "{%generation%}x{%endgeneration%}", "tool_use": ""})


@pytest.mark.parametrize("name", list(TRL_COPIES))
def test_public_fixture_is_the_template_trl_recognises(name: str) -> None:
    """The fixtures are written from the public checkpoints; TRL keeps byte-identical copies of six."""
    import trl

    copy = Path(trl.__file__).parent / "chat_templates" / f"{TRL_COPIES[name]}.jinja"
    if not copy.is_file():
        pytest.skip(f"this TRL has no {copy.name}")
    assert public_template(FAMILIES[name].checkpoint) == copy.read_text()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_shipped_template_renders_like_the_public_one(name: str, rows: Any) -> None:
    family = FAMILIES[name]
    public = public_template(family.checkpoint)
    ours = shipped(family)
    processor = family.build(public)
    bos = processor.tokenizer.bos_token if ours.writes_bos else ""
    conversation = rows[1]["messages"]
    prompts = [conversation[:1], conversation[:3]] if ours.same_history else [conversation[:1]]
    for messages in prompts:
        assert render(processor, ours.template, messages, True) == bos + render(
            processor, public, messages, True
        )
    if ours.same_history:
        whole = render(processor, public, conversation, False)
        assert render(processor, ours.template, conversation, False) == bos + whole
    else:  # LLaVA-1.5: an answer ends with </s> where llava-hf's template writes a space
        assert render(processor, ours.template, conversation[:2], False).endswith(
            "ASSISTANT: A red cube.</s>"
        )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_helper_keeps_marked_templates_and_picks_the_family_one_otherwise(name: str) -> None:
    family = FAMILIES[name]
    public = public_template(family.checkpoint)
    processor = family.build(markerless(public))
    # SmolVLM-Instruct is model type idefics3: its template is the second candidate, found by rendering
    assert training_chat_template(processor, family.model_type) == shipped(family).template
    if has_generation_markers(public):  # llava-hf's LLaVA-1.5 and OneVision templates
        assert training_chat_template(family.build(public), family.model_type) == public


@pytest.mark.parametrize("name", list(FAMILIES))
def test_labels_are_the_answers_and_their_end_of_turn_only(name: str, rows: Any) -> None:
    """Through TRL's collator, as `lvpeft train` runs it; the tokens before the first answer are the
    inference prompt's (rendered with the public template, image tokens expanded)."""
    family = FAMILIES[name]
    public = public_template(family.checkpoint)
    processor = family.build(markerless(public))
    processor.chat_template = training_chat_template(processor, family.model_type)
    assert is_chat_template_stop_token_trained(processor)  # TRL's own check
    collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)
    batch = collator([rows[0], rows[1]])
    decode = processor.tokenizer.decode
    for ids, labels, answers in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), ANSWERS):
        spans, current = [], []
        for token, label in zip(ids, labels):
            if label != -100:
                assert label == token
                current.append(token)
            elif current:
                spans.append(decode(current))
                current = []
        assert [*spans, *([decode(current)] if current else [])] == [family.answer.format(a) for a in answers]

    # the first prompt of row 0, and (where the history renders alike) row 1's second prompt, both images in
    for row, end in [(0, 1), (1, 3)] if shipped(family).same_history else [(0, 1)]:
        prompt = processor.apply_chat_template(
            prepared(rows[row])[:end],
            chat_template=public,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"][0]
        assert batch["input_ids"][row].tolist()[: len(prompt)] == list(prompt)


def prepared(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A loaded row's messages with its images in their blocks (what TRL's collator renders)."""
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(row["messages"], images=row["images"])


def test_unknown_family_without_markers_says_what_to_pass() -> None:
    processor = FAMILIES["llava-1.5"].build("{% for m in messages %}{{ m['role'] }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match=r"model type 'paligemma'.*--chat_template_path FILE\.jinja"):
        training_chat_template(processor, "paligemma", name="my/paligemma")


def test_template_of_another_format_is_refused_with_both_renderings() -> None:
    """A Qwen2.5-VL model with Qwen3-VL's template (no default system prompt): training on lvpeft's
    Qwen2-VL template would not match its prompts."""
    processor = FAMILIES["qwen2.5-vl"].build(public_template("Qwen3-VL-8B-Instruct"))
    with pytest.raises(ChatTemplateError, match="--chat_template_path") as error:
        training_chat_template(processor, "qwen2_5_vl")
    assert "You are a helpful assistant." in str(error.value) and "Qwen2-VL" in str(error.value)


def test_vicuna_style_llava_next_gets_the_llava_template() -> None:
    """LLaVA-NeXT checkpoints in LLaVA-1.5's format get the second candidate, checked the same way."""
    processor = FAMILIES["llava-next"].build(markerless(public_template("llava-1.5-7b-hf")))
    assert training_chat_template(processor, "llava_next") == LLAVA_TRAINING_CHAT_TEMPLATE


def test_processor_without_template_gets_the_family_default(caplog: pytest.LogCaptureFixture) -> None:
    processor = FAMILIES["qwen2.5-vl"].build(None)
    with caplog.at_level(logging.WARNING):
        assert training_chat_template(processor, "qwen2_5_vl") == QWEN2_VL_TRAINING_CHAT_TEMPLATE
    assert "has no chat template" in caplog.text


def test_model_or_config_names_the_family() -> None:
    from transformers import LlavaNextConfig

    processor = FAMILIES["llava-next"].build(public_template("llava-v1.6-mistral-7b-hf"))
    assert training_chat_template(processor, LlavaNextConfig()) == LLAVA_NEXT_TRAINING_CHAT_TEMPLATE


def test_demo_training_processor_uses_the_helper() -> None:
    from lvpeft.demo.tiny_model import build_processor
    from lvpeft.demo.training import training_processor

    original = build_processor()
    copy = training_processor(original)
    assert copy.chat_template == LLAVA_TRAINING_CHAT_TEMPLATE and copy is not original
    assert not has_generation_markers(original.chat_template)  # inference prompts keep the original
    # the question-first base's template renders question-first turns as lvpeft's LLaVA-1.5 template does
    question_first = training_processor(build_processor(question_first=True))
    assert question_first.chat_template == LLAVA_TRAINING_CHAT_TEMPLATE
    qwen = training_processor(
        FAMILIES["qwen2.5-vl"].build(public_template("Qwen2.5-VL-7B-Instruct")), "qwen2_5_vl"
    )
    assert qwen.chat_template == QWEN2_VL_TRAINING_CHAT_TEMPLATE


def test_bos_is_written_only_where_the_tokenizer_prepends_one() -> None:
    """LLaVA's training template writes the BOS a Llama tokenizer prepends at inference; with a tokenizer
    that prepends none (the tests' word-level one), it writes none either."""
    from helpers import tiny_processor

    plain = markerless(public_template("llava-1.5-7b-hf"))
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5"}]}]
    with_bos = FAMILIES["llava-1.5"].build(plain)
    assert render(with_bos, training_chat_template(with_bos, "llava"), conversation, True).startswith(
        "<s>USER:"
    )
    without = tiny_processor(plain)
    assert without.tokenizer("w5")["input_ids"][0] != without.tokenizer.bos_token_id
    template = training_chat_template(without, "llava")
    assert render(without, template, conversation, True) == render(without, plain, conversation, True)
