"""How `lvpeft eval` grades answers: greedy `generate()` answers, matched exactly to the reference after
the VQA / SQuAD normalisation. (The other metric, the reference answer's NLL, is the validation loss of
`lvpeft.training.answer_nll`.) Shapes: B batch, P prompt length."""

from __future__ import annotations

import re
import string
from typing import Any

import torch
from torch import nn

from ..training.answer_nll import input_device
from ..training.data.validation import EncodedBatch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile("[" + re.escape("".join(c for c in string.punctuation if c != ".")) + "]")
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # a period that is not a decimal point


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower-case, delete punctuation (a decimal point stays), drop the articles
    a/an/the and collapse whitespace.

    `"The Red circle."` -> `"red circle"`; `"It's 3.5 m!"` -> `"its 3.5 m"`.
    """
    text = _PERIOD.sub("", _PUNCTUATION.sub("", text.lower()))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


@torch.no_grad()
def greedy_answers(model: nn.Module, processor: Any, batch: EncodedBatch, max_new_tokens: int) -> list[str]:
    """Greedy `generate()` answers to the batch's prompts ((B, P) left-padded): the decoded new tokens,
    special tokens dropped, stripped."""
    prompt = {k: v.to(input_device(model)) for k, v in batch.prompt.items()}
    tokenizer = getattr(processor, "tokenizer", processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        **prompt, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad
    )
    new_tokens = out[:, prompt["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
