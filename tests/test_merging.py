"""Merging dropped tokens (`lvpeft.pruning.mass`): a dropped vision token is merged into its most
similar kept vision token (mass-weighted mean of hidden states), and later layers add log(mass) to that
key's attention logit.

The invariant that defines the attention part: after any number of modules, the last token's attention
weights over the key slots of a pruned layer, before the softmax normalises them, sum to what they would
over the unpruned sequence: exp(mask) summed over the allowed keys == the row's original token count.
"""

from __future__ import annotations

import pytest
import torch

from helpers import PATCHES, batch, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.mass import mass_bias, merge_dropped, nearest_kept

PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(2, 1, 4, 2), prompt_ids(1, 6, 2, 3)]


def pruned(attn: str = "sdpa", merge: bool = True, keep: float = 0.25):
    config = LVPruningConfig(keep=keep, merge_dropped=merge)
    model = get_lvpruning_model(tiny_llava("llama", attn), config)
    randomize_heads(model)
    return model.eval()


def last_layer(model: torch.nn.Module) -> torch.nn.Module:
    layers = [m for n, m in model.named_modules() if n.endswith("language_model.layers")]
    return layers[0][-1]


def record_masks(model: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """Record the attention mask the last decoder layer receives (after lvpeft's hook swapped it in)."""
    masks: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        masks.append(kwargs["attention_mask"])

    return masks, last_layer(model).register_forward_pre_hook(hook, with_kwargs=True)


def test_dropped_tokens_merge_into_the_most_similar_kept_token() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8], [5.0, 5.0]]])
    mass = torch.tensor([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0]])
    dropped = torch.tensor([[False, True, False, True, True, False]])
    kept = torch.tensor([[True, False, True, False, False, False]])  # slot 5: text, untouched
    new_mass, new_hidden = merge_dropped(mass, hidden, dropped, kept)
    assert new_mass.tolist() == [[3.0, 0.0, 5.0, 0.0, 0.0, 1.0]]
    torch.testing.assert_close(new_hidden[0, 0], (hidden[0, 0] + 2 * hidden[0, 1]) / 3)
    torch.testing.assert_close(new_hidden[0, 2], (hidden[0, 2] + hidden[0, 3] + 3 * hidden[0, 4]) / 5)
    assert torch.equal(new_hidden[0, [1, 3, 4, 5]], hidden[0, [1, 3, 4, 5]])


def test_mass_is_conserved_and_a_row_without_receivers_keeps_its_own() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 20, 8, generator=g)
    mass = torch.rand(3, 20, generator=g) + 0.5
    dropped = torch.rand(3, 20, generator=g) < 0.5
    kept = ~dropped
    kept[2] = False  # nothing kept in row 2: no receiver
    out, states = merge_dropped(mass, hidden, dropped, kept)
    torch.testing.assert_close(out[:2].sum(dim=1), mass[:2].sum(dim=1))
    assert torch.equal(out[:2][dropped[:2]], torch.zeros(int(dropped[:2].sum())))
    assert torch.equal(out[2], torch.where(dropped[2], 0.0, mass[2]))
    assert torch.equal(states[2], hidden[2])
    bias = mass_bias(torch.tensor([[0.0, 1.0, 4.0]]))
    assert torch.equal(bias, torch.tensor([[0.0, 0.0, 4.0]]).log().clamp(min=0.0))


def test_nearest_kept_equals_the_brute_force_over_every_pair() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 30, 16, generator=g)
    vision = torch.rand(4, 30, generator=g) < 0.7
    kept = vision & (torch.rand(4, 30, generator=g) < 0.3)
    dropped = vision & ~kept
    kept[3], dropped[3] = False, vision[3]  # a row with nothing kept
    unit = torch.nn.functional.normalize(hidden, dim=-1)
    brute = (unit @ unit.transpose(1, 2)).masked_fill(~kept[:, None, :], float("-inf")).argmax(dim=2)
    target = nearest_kept(hidden, dropped, kept)
    rows = dropped & kept.any(dim=1, keepdim=True)
    assert torch.equal(target[rows], brute[rows])
    assert torch.equal(target[~rows], torch.arange(30).expand(4, 30)[~rows])


def test_merged_states_carry_the_gradient_to_what_was_merged() -> None:
    hidden = torch.randn(1, 6, 4, requires_grad=True)
    kept = torch.tensor([[True, False, False, True, False, False]])
    _, states = merge_dropped(torch.ones(1, 6), hidden, ~kept, kept)
    states[0, kept[0]].sum().backward()
    assert bool((hidden.grad[0].abs().sum(dim=-1) > 0).all())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("masked", [False, True])
def test_pruned_layers_weigh_the_whole_image(attn: str, masked: bool) -> None:
    inputs = batch(PROMPTS)
    model = pruned(attn)
    masks, handle = record_masks(model)
    context = lvpruning_tuner(model).masked_inference() if masked else torch.enable_grad()
    with torch.no_grad(), context:
        model(**inputs)
    handle.remove()
    weights = torch.exp(masks[0][:, 0, -1].float())  # (B, K): the last token's key weights
    torch.testing.assert_close(weights.sum(dim=1), inputs["attention_mask"].sum(dim=1).float())
    assert max(lvpruning_tuner(model).pruning_stats.keep_ratios) < 1.0


def test_without_merging_the_dropped_tokens_weigh_nothing() -> None:
    inputs = batch(PROMPTS)
    model = pruned("eager", merge=False)
    masks, handle = record_masks(model)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    weights = torch.exp(masks[0][:, 0, -1].float())
    assert bool((weights.sum(dim=1) < inputs["attention_mask"].sum(dim=1) - PATCHES / 2).all())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_decode_steps_keep_the_prompt_masses(attn: str) -> None:
    inputs = batch(PROMPTS)
    model = pruned(attn)
    masks, handle = record_masks(model)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    handle.remove()
    original = inputs["attention_mask"].sum(dim=1).float()
    for step, mask in enumerate(masks[1:], start=1):  # masks[0] is the prefill's
        assert mask.shape[2] == 1
        torch.testing.assert_close(torch.exp(mask[:, 0, -1].float()).sum(dim=1), original + step)


def test_training_forward_weighs_the_whole_image_too() -> None:
    inputs = batch(PROMPTS)
    model = pruned("eager")
    model.train()
    masks, handle = record_masks(model)
    model(**inputs)
    handle.remove()
    weights = torch.exp(masks[0][:, 0, -1].detach().float())  # dropped keys carry log(eps): ~0
    torch.testing.assert_close(
        weights.sum(dim=1), inputs["attention_mask"].sum(dim=1).float(), atol=1e-3, rtol=0
    )
