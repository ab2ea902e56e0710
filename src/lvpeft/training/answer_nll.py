"""The validation loss of a pruned model: the negative log-likelihood of reference answers, measured the
way `generate()` runs the model (`lvpeft train --eval_data`, `lvpeft eval`).

A prefill of the prompt (where LVPruning or a baseline scorer removes vision tokens) fills a KV cache; its
last logits score the first answer token, and one more forward over the reference answer on that pruned
cache scores the rest (teacher forcing). So every scorer, FastV's last-token attention included, decides
on the prompt alone, exactly as at inference, and the answer never influences which tokens are kept.
Position ids follow `generate()`'s rule for left padding (the count of real tokens so far).

Shapes: B batch, P prompt length, A answer length, V vocabulary.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .data.validation import EncodedBatch


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, P) position ids of a left-padded batch as `generate()` computes them (0 on padding)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def cache_keyword(model: nn.Module) -> str:
    """The name under which the LLaVA model's forward takes a KV cache (`cache` in transformers >= 5.24,
    `past_key_values` before)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def answer_nll(model: nn.Module, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced negative log-likelihood of each reference answer, in nats.

    Args:
        model: a LLaVA model (or a `PeftModel` of one) in eval mode.
        batch: prompts (B, P) and answers (B, A), see `EncodedBatch`.

    Returns:
        `(nll, tokens)`: (B,) float32 summed NLL over each row's answer tokens and (B,) long number of them.
    """
    from transformers import DynamicCache

    device = input_device(model)
    prompt = {k: v.to(device) for k, v in batch.prompt.items()}
    answer_ids = batch.answer_ids.to(device)
    answer_mask = batch.answer_mask.to(device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=base.config.get_text_config())
    keyword = cache_keyword(model)
    positions = generation_positions(prompt["attention_mask"])
    first = model(**prompt, position_ids=positions, use_cache=True, logits_to_keep=1, **{keyword: cache})
    length = prompt["attention_mask"].sum(dim=1, keepdim=True)  # (B, 1) real prompt tokens
    rest = model(
        input_ids=answer_ids,
        attention_mask=torch.cat([prompt["attention_mask"], answer_mask], dim=1),
        position_ids=length + torch.arange(answer_ids.shape[1], device=device),
        use_cache=True,
        **{keyword: cache},
    )
    logits = torch.cat([first.logits[:, -1:], rest.logits[:, :-1]], dim=1).float()  # (B, A, V)
    nll = F.cross_entropy(logits.transpose(1, 2), answer_ids, reduction="none") * answer_mask
    return nll.sum(dim=1).cpu(), answer_mask.sum(dim=1).cpu()


def input_device(model: nn.Module) -> torch.device:
    """Where the model takes its inputs (its embeddings' device when accelerate dispatched it)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device
