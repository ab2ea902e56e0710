"""The default recipe's training signals: the teacher importance each module learns to rank by, and
training with the exact inference budget (Gumbel-top-k)."""

from __future__ import annotations

import pytest
import torch

from helpers import batch, prompt_ids, tiny_llava
from lvpeft.pruning.decisions import gumbel_top_k
from lvpeft.training.teacher_importance import importance_after, read_importance, recording_importance


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_importance_is_the_value_weighted_attention_of_the_eager_model(backbone: str) -> None:
    """read_importance recomputes what the layer's own eager attention does: sum over heads and reader
    queries of alpha_hij * ||W_O^h v_hj||, checked against output_attentions and the v_proj output."""
    model = tiny_llava(backbone=backbone, attn="eager").eval()
    inputs = batch([prompt_ids(1, 3, 4, seed=1), prompt_ids(1, 2, 6, seed=2)], side="left")
    valid = inputs["attention_mask"].bool()
    readers = torch.zeros_like(valid)
    readers[:, -3:] = True
    layers = model.model.language_model.layers
    values: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.v_proj.register_forward_hook(
            lambda m, a, out, i=i: values.__setitem__(i, out.detach())
        )
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad(), recording_importance(list(layers), 1, readers, valid) as recorded:
        out = model(**inputs, output_attentions=True)
    for h in hooks:
        h.remove()
    assert sorted(recorded) == [1, 2, 3]
    for i in (1, 3):
        attn = layers[i].self_attn
        probs = out.attentions[i].float()  # (B, h, L, L)
        b, heads, length, _ = probs.shape
        v = values[i].view(b, length, -1, attn.head_dim).transpose(1, 2)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)  # (B, h, L, hd)
        w_o = attn.o_proj.weight.view(-1, heads, attn.head_dim)  # (d, h, hd)
        written = torch.einsum("dhk,bhlk->bhld", w_o, v).norm(dim=-1)  # (B, h, L)
        read = (probs * readers[:, None, :, None]).sum(dim=2)  # (B, h, L)
        expected = (read * written).sum(dim=1).masked_fill(~valid, 0.0)
        torch.testing.assert_close(recorded[i], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(importance_after(recorded, 2), recorded[2] + recorded[3])


def test_a_token_nobody_reads_has_no_importance() -> None:
    """Readers attend causally: a token after every reader query is read by none of them."""
    model = tiny_llava().eval()
    inputs = batch([prompt_ids(1, 3, 4, seed=3)])
    layer = model.model.language_model.layers[1]
    hidden = torch.randn(1, inputs["input_ids"].shape[1], 64)
    rope = model.model.language_model.rotary_emb(hidden, torch.arange(hidden.shape[1])[None])
    readers = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
    readers[0, 5] = True
    importance = read_importance(layer, hidden, rope, readers, inputs["attention_mask"].bool())
    assert bool((importance[0, 6:] == 0).all()) and bool((importance[0, :6] > 0).all())


def test_gumbel_top_k_keeps_exactly_the_budget_with_a_gradient() -> None:
    torch.manual_seed(0)
    scores = torch.randn(3, 20, requires_grad=True)
    candidates = torch.rand(3, 20) > 0.3
    k = torch.tensor([1, 4, 7])
    keep = gumbel_top_k(scores, candidates, k, temperature=1.0)
    hard = keep.detach().round()
    torch.testing.assert_close(keep.detach(), hard)  # the straight-through value is the hard decision
    assert hard.sum(dim=1).tolist() == [1.0, 4.0, 7.0]
    assert not bool((hard.bool() & ~candidates).any())
    (keep * torch.arange(20.0)).sum().backward()
    assert scores.grad is not None and bool((scores.grad[~candidates] == 0).all())
    assert float(scores.grad.abs().sum()) > 0


def test_gumbel_top_k_samples_in_proportion_to_the_scores() -> None:
    """A much higher score is kept (almost) always; equal scores are kept equally often."""
    torch.manual_seed(0)
    scores = torch.zeros(4000, 4)
    scores[:, 0] = 6.0
    keep = gumbel_top_k(scores, torch.ones(4000, 4, dtype=torch.bool), torch.full((4000,), 2), 1.0)
    share = keep.mean(dim=0)
    assert share[0] > 0.98
    assert torch.allclose(share[1:], torch.full((3,), (2 - float(share[0])) / 3), atol=0.04)
