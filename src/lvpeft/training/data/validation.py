"""Validation questions from LLaVA-format data, and their model inputs (`lvpeft train --eval_data`,
`lvpeft eval`).

A row of LLaVA-format data (read by `llava_format.load_llava_dataset`, the same
loader and checks as `lvpeft train`) becomes one `EvalSample`: the conversation up to its last assistant
turn is the prompt (for the usual single-turn row, the question and its image), the last assistant turn
is the reference answer. `encode_batch` renders the prompts through the processor's chat template (the
processor's own, else lvpeft's LLaVA-1.5 training template, as `lvpeft train` does), left-pads them for
batched `generate()`, and tokenizes each reference answer exactly as the template continues the prompt
(the answer text and what the template closes the turn with, e.g. `</s>`): those are the answer tokens
whose negative log-likelihood `lvpeft.training.answer_nll.answer_nll` measures.

Shapes: B batch, P prompt length (left-padded, image tokens expanded), A answer length (right-padded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # `datasets` is imported when data is read, not for `lvpeft --help`
    from .llava_format import LoadReport


@dataclass
class EvalSample:
    """One validation question.

    Attributes:
        id: the row's id.
        images: the row's images (RGB PIL images), in placeholder order.
        prompt: chat messages up to, not including, the last assistant turn (`{"role", "content": [{"type":
            "image" | "text", "text": str | None}, ...]}`, the loader's format).
        reference: the text of the last assistant turn.
    """

    id: str
    images: list[Any]
    prompt: list[dict[str, Any]]
    reference: str


@dataclass
class EncodedBatch:
    """Model inputs of a batch of `EvalSample`s.

    Attributes:
        prompt: the processor's output for the prompts: `input_ids` and `attention_mask` (B, P), left-padded,
            image placeholders expanded; `pixel_values` and whatever else the processor returns.
        answer_ids: (B, A) long, each reference answer's tokens as the chat template continues the prompt,
            right-padded.
        answer_mask: (B, A) long, 1 on answer tokens, 0 on padding.
    """

    prompt: dict[str, torch.Tensor]
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor


@dataclass
class TokenizedSample:
    """A sample's rendered prompt text and its answer token ids (text only, no image processing)."""

    prompt_text: str
    answer_ids: list[int]
    add_special_tokens: bool


def load_eval_samples(
    data: str | os.PathLike[str],
    image_folder: str | os.PathLike[str] | None = None,
    *,
    max_samples: int | None = None,
) -> tuple[list[EvalSample], LoadReport]:
    """Read LLaVA-format validation data (JSON list or JSONL) into `EvalSample`s.

    Bad rows and missing images are skipped and counted in the returned report (as `lvpeft train` does);
    text-only rows are skipped (there is nothing to prune).

    Raises:
        FileNotFoundError: the data file or the image folder does not exist.
        ValueError: the file is not LLaVA-format JSON/JSONL, `max_samples` < 1, or no row is usable.
    """
    from .llava_format import load_llava_dataset

    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}.")
    dataset, report = load_llava_dataset(data, image_folder, max_samples=max_samples)
    if len(dataset) == 0:
        raise ValueError(
            f"No usable rows in {data} (rows with an image and a conversation ending with an answer): "
            f"{report.summary()}"
        )
    return samples_from_dataset(dataset), report


def samples_from_dataset(dataset: Any) -> list[EvalSample]:
    """`EvalSample`s from rows in `load_llava_dataset`'s format (columns `id`, `images`, `messages`)."""
    samples = []
    for row in dataset:
        messages = row["messages"]
        answer = messages[-1]
        reference = " ".join(b["text"] for b in answer["content"] if b.get("type") == "text" and b["text"])
        samples.append(
            EvalSample(
                id=str(row["id"]), images=list(row["images"]), prompt=messages[:-1], reference=reference
            )
        )
    return samples


def eval_chat_template(processor: Any) -> str:
    """The chat template prompts are rendered with: the processor's own, else lvpeft's LLaVA-1.5 training
    template (`LLAVA_TRAINING_CHAT_TEMPLATE`, the one `lvpeft train` uses for a LLaVA processor without
    one)."""
    from .llava_format import LLAVA_TRAINING_CHAT_TEMPLATE

    return getattr(processor, "chat_template", None) or LLAVA_TRAINING_CHAT_TEMPLATE


def tokenize_sample(processor: Any, sample: EvalSample, template: str) -> TokenizedSample:
    """Render `sample` with a generation prompt and find its answer tokens.

    The answer tokens are what tokenizing the whole conversation (prompt + reference turn) adds after the
    tokens of the prompt with its generation prompt; when the two do not share that prefix (a template
    that renders the assistant header differently), the text after the prompt is tokenized on its own.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    answer_message = {"role": "assistant", "content": [{"type": "text", "text": sample.reference}]}
    prompt_text = _render(processor, sample.prompt, template, add_generation_prompt=True)
    full_text = _render(processor, [*sample.prompt, answer_message], template, add_generation_prompt=False)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt_text.startswith(bos))  # a template that writes BOS itself
    prompt_ids = tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"]
    full_ids = tokenizer(full_text.rstrip(), add_special_tokens=add_special)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        answer_ids = full_ids[len(prompt_ids) :]
    else:
        rest = full_text[len(prompt_text) :] if full_text.startswith(prompt_text) else sample.reference
        answer_ids = tokenizer(rest.rstrip(), add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise ValueError(f"row {sample.id!r}: the reference answer has no tokens.")
    return TokenizedSample(prompt_text=prompt_text, answer_ids=answer_ids, add_special_tokens=add_special)


def encode_batch(
    processor: Any, samples: Sequence[EvalSample], tokenized: Sequence[TokenizedSample]
) -> EncodedBatch:
    """Process the prompts and images of `samples` (left padding) and pad their answer tokens (right).

    The images go to the processor nested per prompt (`[[image, ...], ...]`), which every family's
    processor reads (Gemma 3's requires it); None when no prompt has one.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    add_special = {t.add_special_tokens for t in tokenized}
    if len(add_special) != 1:
        raise ValueError("all prompts of a batch must be rendered the same way (BOS written or not).")
    prompt = processor(
        images=[list(s.images) for s in samples] if any(s.images for s in samples) else None,
        text=[t.prompt_text for t in tokenized],
        padding=True,
        padding_side="left",
        add_special_tokens=add_special.pop(),
        return_tensors="pt",
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = max(len(t.answer_ids) for t in tokenized)
    answer_ids = torch.full((len(tokenized), length), pad, dtype=torch.long)
    answer_mask = torch.zeros((len(tokenized), length), dtype=torch.long)
    for row, t in enumerate(tokenized):
        answer_ids[row, : len(t.answer_ids)] = torch.tensor(t.answer_ids)
        answer_mask[row, : len(t.answer_ids)] = 1
    return EncodedBatch(prompt=dict(prompt), answer_ids=answer_ids, answer_mask=answer_mask)


def _render(
    processor: Any, messages: list[dict[str, Any]], template: str, add_generation_prompt: bool
) -> str:
    return processor.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
    )
