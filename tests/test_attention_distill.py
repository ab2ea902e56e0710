"""The last module's optional attention-ranking loss (`LVPruningConfig.attention_distill_weight`)."""

from __future__ import annotations

import pytest
import torch

from helpers import batch, prompt_ids, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.decisions import attention_rank_loss
from lvpeft.pruning.scorers import ScoringContext, query_attention

PROMPTS = [prompt_ids(1, 3, 4, seed) for seed in range(3)]  # equal lengths: no padding


def test_rank_loss_is_zero_exactly_when_the_scores_rank_like_the_attention() -> None:
    candidates = torch.tensor([[False, True, True, True, False], [True, True, False, False, False]])
    attention = torch.tensor([[0.5, 0.1, 0.2, 0.1, 0.1], [0.3, 0.1, 0.6, 0.0, 0.0]])
    # softmax over the candidates equal to the renormalised attention: log-attention plus any shift
    matching = torch.log(attention.clamp(min=1e-9)) + torch.tensor([[3.0], [-2.0]])
    assert attention_rank_loss(matching, attention, candidates).item() == pytest.approx(0.0, abs=1e-6)
    reversed_ = -matching
    assert attention_rank_loss(reversed_, attention, candidates).item() > 0.1
    # what is not a candidate does not count, in the target nor in the scores
    other = matching.clone()
    other[~candidates] = torch.tensor([9.0, -9.0, 4.0, 5.0, 6.0])
    assert attention_rank_loss(other, attention, candidates).item() == pytest.approx(0.0, abs=1e-6)
    scores = reversed_.clone().requires_grad_(True)
    attention_rank_loss(scores, attention, candidates).backward()
    assert scores.grad[~candidates].abs().sum() == 0 and scores.grad[candidates].abs().sum() > 0
    none = torch.zeros_like(candidates)
    assert attention_rank_loss(scores, attention, none).item() == 0.0


def test_query_attention_equals_the_models_own_attention_of_any_query() -> None:
    base = tiny_llava("llama", "eager")
    inputs = batch(PROMPTS[:2])
    with torch.no_grad():
        attentions = base(**inputs, output_attentions=True).attentions
    query = torch.tensor([7, 12])  # a text and a vision slot, rows of different prompts
    expected = attentions[1][torch.arange(2), :, query].mean(1)  # layer 1, heads averaged: (B, L)
    model = get_lvpruning_model(base, LVPruningConfig(keep=0.25))
    seen: list[torch.Tensor] = []

    class Recording:
        def __call__(self, context: ScoringContext) -> torch.Tensor:
            causal = torch.arange(context.valid.shape[1])[None, :] <= query[:, None]  # as the model's mask
            seen.append(query_attention(context, query, context.valid & causal))
            return torch.zeros((*context.valid.shape, 2))

    with torch.no_grad(), lvpruning_tuner(model).use_scorers([Recording(), Recording(), Recording()]):
        model(**inputs)
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-4)


def training_forward(weight: float) -> tuple[torch.nn.Module, torch.Tensor | None]:
    torch.manual_seed(0)
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25, attention_distill_weight=weight))
    model.train()  # zero-initialised heads: every token kept with probability 1/2
    model(**batch(PROMPTS))
    return model, lvpruning_tuner(model).pruning_stats.attention_loss


def test_the_loss_trains_the_last_module_only_and_is_off_by_default() -> None:
    model, loss = training_forward(0.5)
    assert loss is not None and loss.ndim == 0 and loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    last = model.peft_config["default"].layers[-1]  # the module before this decoder layer
    moved = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert moved and all(f"layers.{last}.pruner" in n for n in moved), moved
    _, off = training_forward(0.0)
    assert off is None
    model.eval()
    with torch.no_grad():
        model(**batch(PROMPTS))
    assert lvpruning_tuner(model).pruning_stats.attention_loss is None  # inference never computes it
