"""Training by masking (model.train()): hard Gumbel decisions, masked softmax, ratio loss."""

from __future__ import annotations

import pytest
import torch

from helpers import IMAGE_TOKEN, batch, prompt_ids, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.decisions import gumbel_keep, keep_counts, ratio_loss, select_top_k
from lvpeft.pruning.masks import MASK_EPS

PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(2, 1, 5, 1), prompt_ids(0, 4, 4, 2)]


def labelled(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    inputs = batch(prompts, side="right")
    labels = inputs["input_ids"].clone()
    labels[(inputs["attention_mask"] == 0) | (labels == IMAGE_TOKEN)] = -100
    inputs["labels"] = labels
    return inputs


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lm_loss_gradient_reaches_decision_logits_through_the_mask(attn: str) -> None:
    model = get_lvpruning_model(tiny_llava("llama", attn), LVPruningConfig(keep=0.25)).train()
    out = model(**labelled(PROMPTS))
    assert out.logits.shape[:2] == labelled(PROMPTS)["input_ids"].shape  # no token removed
    out.loss.backward()
    heads = {n: p.grad for n, p in model.named_parameters() if ".head." in n and "lvpruning" in n}
    assert len(heads) == 6
    # the head starts at zero, so its only gradient is the one through the Gumbel decisions and the mask
    assert all(g is not None and g.abs().sum() > 0 for g in heads.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(3)
        model(**labelled(PROMPTS)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_reentrant_checkpointing_is_refused() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant': False"):
        model(**labelled(PROMPTS))


def test_ratio_loss_is_exposed_and_differentiable() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).train()
    model(**labelled(PROMPTS))
    stats = lvpruning_tuner(model).pruning_stats
    assert (
        stats.ratio_loss is not None and stats.ratio_loss.requires_grad and torch.isfinite(stats.ratio_loss)
    )
    assert (
        len(stats.keep_ratios) == 3 and stats.keep_ratios[0] >= stats.keep_ratios[1] >= stats.keep_ratios[2]
    )
    stats.ratio_loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_eval_mode_uses_removal_and_reports_no_ratio_loss() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).eval()
    with torch.no_grad():
        model(**batch(PROMPTS))
    assert lvpruning_tuner(model).pruning_stats.ratio_loss is None


def test_training_decisions_are_cumulative_and_masked_attention_matches_paper() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 2, requires_grad=True)
    d = gumbel_keep(logits, 1.0)
    assert set(d.unique().tolist()) <= {0.0, 1.0}
    (d * torch.arange(7.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through gradient
    # log(D + eps) added to the scores equals the paper's exp(A) * M / sum(exp(A) * M) up to eps
    scores = torch.randn(5, 5)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    mask = keep.expand(5, 5).clone().fill_diagonal_(1.0)
    paper = torch.exp(scores) * mask / (torch.exp(scores) * mask).sum(-1, keepdim=True)
    bias = torch.log(keep + MASK_EPS).expand(5, 5) * (1 - torch.eye(5))
    torch.testing.assert_close(torch.softmax(scores + bias, -1), paper, atol=1e-5, rtol=0)


def test_keep_counts_match_the_paper() -> None:
    n = torch.tensor([576, 576, 576, 0, 5])
    assert keep_counts(n, 0.5).tolist() == [288, 288, 288, 0, 3]
    assert keep_counts(n[:1], 0.3).tolist() == [173]
    assert keep_counts(n[:1], 0.1).tolist() == [58]
    assert keep_counts(torch.tensor([16]), 0.01).tolist() == [1]


def test_select_top_k_keeps_the_highest_candidates() -> None:
    scores = torch.tensor([[5.0, 1.0, 3.0, 9.0, 2.0]])
    candidates = torch.tensor([[True, True, True, False, True]])
    kept = select_top_k(scores, candidates, torch.tensor([2]))
    assert kept.tolist() == [[True, False, True, False, False]]


def test_ratio_loss_value() -> None:
    vision = torch.tensor([[True, True, True, True, False]])
    d = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])
    assert ratio_loss([d], vision, [0.25]).item() == pytest.approx((0.25 - 0.5) ** 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_half_precision_training_is_finite(dtype: torch.dtype, attn: str) -> None:
    """The masked softmax's log(D + eps) term and the min-value mask must not overflow in half precision."""
    model = get_lvpruning_model(tiny_llava("llama", attn, dtype=dtype), LVPruningConfig(keep=0.25)).train()
    inputs = labelled(PROMPTS)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    out = model(**inputs)
    loss = out.loss.float() + lvpruning_tuner(model).pruning_stats.ratio_loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
