"""The tiny LLaVA, its offline processor, and the shipped trained copy."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lvpeft.demo.questions import make_split, vocabulary
from lvpeft.demo.tiny_model import (
    NUM_IMAGE_TOKENS,
    SHIPPED_BASES,
    asks_question_first,
    build_processor,
    build_prompts,
    build_tiny_config,
    build_tiny_llava,
    generate_answers,
    load_shipped_base,
)


@pytest.fixture(scope="module")
def processor() -> LlavaProcessor:
    return build_processor()


@pytest.fixture(scope="module")
def model() -> LlavaForConditionalGeneration:
    return build_tiny_llava(seed=0)


@pytest.fixture(scope="module")
def examples():
    return make_split("test", 8, seed=0)


def test_processor_expands_image_to_144_tokens(processor: LlavaProcessor, examples) -> None:
    assert NUM_IMAGE_TOKENS == 144
    prompts = build_prompts(processor, [e.question for e in examples[:3]])
    assert prompts[0] == f"USER: <image>\n{examples[0].question} ASSISTANT:"
    inputs = processor(
        images=[e.image for e in examples[:3]], text=prompts, padding=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (3, 3, 96, 96)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == processor.image_token_id
    assert (inputs["input_ids"] == image_id).sum(dim=1).tolist() == [NUM_IMAGE_TOKENS] * 3
    row = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    text = processor.tokenizer.convert_ids_to_tokens(row[row != image_id].tolist())
    assert text == ["<s>", "USER", ":", *examples[0].question.split(), "ASSISTANT", ":"]


def test_chat_template_tokenizes_with_image(processor: LlavaProcessor, examples) -> None:
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "image": examples[0].image}, {"type": "text", "text": "x"}],
        }
    ]
    out = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = out["input_ids"][0]
    assert (ids == processor.image_token_id).sum() == NUM_IMAGE_TOKENS
    assert (ids == processor.tokenizer.bos_token_id).sum() == 1 and ids[0] == processor.tokenizer.bos_token_id
    assert out["pixel_values"].shape == (1, 3, 96, 96)


def test_question_first_template_asks_before_the_image(processor: LlavaProcessor) -> None:
    question_first = build_processor(question_first=True)
    (prompt,) = build_prompts(question_first, ["what colour is the square ?"])
    assert prompt == "USER: what colour is the square ?\n<image> ASSISTANT:"
    assert asks_question_first(question_first) and not asks_question_first(processor)
    ids = question_first(images=[Image.new("RGB", (96, 96))], text=[prompt])["input_ids"][0]
    tokens = question_first.tokenizer.convert_ids_to_tokens(ids)
    assert tokens.index("square") < tokens.index("<image>") and tokens.count("<image>") == 144
    assert tokens[-2:] == ["ASSISTANT", ":"]


def test_vocabulary_has_every_task_word(processor: LlavaProcessor) -> None:
    unk = processor.tokenizer.unk_token_id
    for word in vocabulary():
        assert processor.tokenizer.convert_tokens_to_ids(word) != unk, word
    assert processor.tokenizer("what colour is blorp ?", add_special_tokens=False)["input_ids"][3] == unk


def test_model_config_matches_llava_15_layout(model: LlavaForConditionalGeneration) -> None:
    config = model.config
    assert type(model.model.vision_tower).__name__ == "CLIPVisionModel"
    assert type(model.model.language_model).__name__ == "LlamaModel"
    assert config.vision_feature_select_strategy == "default"
    assert (config.vision_config.image_size // config.vision_config.patch_size) ** 2 == NUM_IMAGE_TOKENS
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    assert size_mb < 20


def test_qwen2_text_backbone_and_unknown_backbone() -> None:
    config = build_tiny_config(vocab_size=40, text_hidden=64, text_layers=2, text_backbone="qwen2")
    assert config.text_config.model_type == "qwen2"
    assert (config.text_config.pad_token_id, config.text_config.eos_token_id) == (0, 2)
    assert config.text_config.tie_word_embeddings is False
    model = build_tiny_llava(seed=0, config=config)
    assert type(model.model.language_model).__name__ == "Qwen2Model"
    assert model.model.language_model.layers[0].self_attn.q_proj.bias is not None
    assert build_tiny_config(vocab_size=40).text_config.model_type == "llama"
    with pytest.raises(ValueError, match=r"text_backbone='gpt2'.*llama.*qwen2"):
        build_tiny_config(vocab_size=40, text_backbone="gpt2")


def test_forward_and_generate(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, examples
) -> None:
    prompts = build_prompts(processor, [e.question for e in examples[:2]])
    inputs = processor(
        images=[e.image for e in examples[:2]], text=prompts, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs)
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    batch, length = inputs["input_ids"].shape
    assert out.logits.shape == (batch, length, len(processor.tokenizer))
    assert torch.isfinite(out.logits).all()
    assert len(features) == 2 and features[0].shape == (
        NUM_IMAGE_TOKENS,
        model.config.text_config.hidden_size,
    )
    assert generated.shape == (batch, length + 4)
    assert torch.equal(generated[:, :length], inputs["input_ids"])
    answers = generate_answers(
        model, processor, [e.image for e in examples[:2]], [e.question for e in examples[:2]]
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_build_is_seeded() -> None:
    a, b, c = build_tiny_llava(seed=1), build_tiny_llava(seed=1), build_tiny_llava(seed=2)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_save_and_load_round_trip(
    tmp_path, model: LlavaForConditionalGeneration, processor, examples
) -> None:
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded, loaded_processor = load_shipped_base(tmp_path)
    prompts = build_prompts(loaded_processor, [examples[0].question])
    inputs = loaded_processor(images=[examples[0].image], text=prompts, return_tensors="pt")
    assert (inputs["input_ids"] == loaded_processor.image_token_id).sum() == NUM_IMAGE_TOKENS
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_load_shipped_base_without_assets_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_shipped_base(tmp_path / "missing")


@pytest.mark.parametrize(("name", "question_first"), [("question-first", True), ("image-first", False)])
def test_shipped_base_answers_test_questions(name: str, question_first: bool) -> None:
    folder = SHIPPED_BASES[name]
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no shipped {name} base model")
    files = {f.name for f in folder.iterdir()}
    assert "model.safetensors" in files and not any(n.endswith((".bin", ".pt", ".pkl")) for n in files)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 20e6
    model, processor = load_shipped_base(folder)
    assert asks_question_first(processor) is question_first
    examples = make_split("test", 200, seed=123)  # another stream than the training script's test set
    answers = generate_answers(model, processor, [e.image for e in examples], [e.question for e in examples])
    accuracy = sum(a == e.answer for a, e in zip(answers, examples, strict=True)) / len(examples)
    assert accuracy >= 0.85, accuracy  # 94.0 % and 90.1 % on the training script's 1,000 test questions
