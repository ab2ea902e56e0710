"""The decision module's inference route (`DecisionModule.inference_forward`, taken without autograd)
equals the reference (the blocks' `forward`, taken with autograd), and its stacked key/value weights
follow every change of the weights they were built from.

Shapes: B batch, Nv vision, T language tokens, d hidden size.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from lvpeft.pruning.scorers import learned_scorer
from lvpeft.pruning.tokens import gather_slots, pack
from lvpeft.tuner import layer
from lvpeft.tuner.layer import DecisionModule

HIDDEN = 48


def _module(dim: int = 32, heads: int = 4, blocks: int = 2, seed: int = 0) -> DecisionModule:
    torch.manual_seed(seed)
    module = DecisionModule(HIDDEN, dim, heads=heads, blocks=blocks)
    torch.nn.init.normal_(module.head.weight)  # the zero-initialised head would make every output 0
    torch.nn.init.normal_(module.head.bias)
    return module.eval()


def _inputs(b: int, nv: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vision (B, Nv, d), language (B, T, d), a (B, T) mask with padding, row 0 all False if B > 1."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, -1] = True
    if b > 1:
        mask[0] = False  # the module's fallback: a row with no language token attends to its padding
    return torch.randn(b, nv, HIDDEN, generator=g), 3 * torch.randn(b, t, HIDDEN, generator=g), mask


def _reference(module: DecisionModule, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # the autograd route: the blocks' forward
        return module(*inputs).detach()


def _inference(module: DecisionModule, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(*inputs)


@pytest.mark.parametrize("attention", ["rows", "sdpa"])
@pytest.mark.parametrize(("b", "nv", "t"), [(1, 40, 9), (3, 17, 6), (2, 1, 1)])
@pytest.mark.parametrize(("dim", "heads", "blocks"), [(32, 4, 2), (48, 8, 1), (16, 2, 3)])
def test_inference_route_equals_the_reference(monkeypatch, attention, b, nv, t, dim, heads, blocks) -> None:
    # the CPU takes `_attention_rows`; a GPU takes `_attention_sdpa`: check both here
    chosen = {"rows": layer._attention_rows, "sdpa": layer._attention_sdpa}[attention]
    monkeypatch.setattr(layer, "_attention_for", lambda device: chosen)
    module = _module(dim, heads, blocks)
    inputs = _inputs(b, nv, t)
    got = _inference(module, *inputs)
    assert got.shape == (b, nv, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(module, *inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inference_route_in_half_precision_is_close_to_the_reference(dtype: torch.dtype) -> None:
    module = _module().to(dtype)
    inputs = _inputs(3, 20, 7)
    got, want = _inference(module, *inputs), _reference(module, *inputs)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_inference_mode_and_a_direct_call_agree() -> None:
    module = _module()
    inputs = _inputs(2, 11, 5)
    with torch.inference_mode():
        got = module(*inputs)
    with torch.no_grad():
        torch.testing.assert_close(module.inference_forward(*inputs), got, atol=0, rtol=0)


def test_training_route_keeps_its_graph_and_builds_no_cache() -> None:
    module = _module().train()
    out = module(*_inputs(2, 9, 5))
    assert out.requires_grad
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert module._fused_key_value is None  # nothing cached with autograd on


def test_saved_keys_do_not_change() -> None:
    module = _module()
    keys = set(module.state_dict())
    _inference(module, *_inputs(2, 9, 5))
    assert module._fused_key_value is not None
    assert set(module.state_dict()) == keys
    assert not any("fused" in k for k in keys)


def _change_in_place(module: DecisionModule) -> None:
    with torch.no_grad():
        module.blocks[0].k_proj.weight.mul_(-1.5)


def _change_by_optimizer(module: DecisionModule) -> None:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    with torch.enable_grad():
        module(*_inputs(2, 9, 5, seed=1)).pow(2).sum().backward()
    optimizer.step()


def _change_by_load_state_dict(module: DecisionModule) -> None:
    module.load_state_dict(_module(seed=7).state_dict())


def _change_by_assigning(module: DecisionModule) -> None:
    module.load_state_dict(_module(seed=7).state_dict(), assign=True)  # new Parameter objects


def _change_by_replacing_data(module: DecisionModule) -> None:
    block = module.blocks[1]
    block.v_proj.weight.data = torch.randn_like(block.v_proj.weight)  # no version bump, new storage


CHANGES = [
    _change_in_place,
    _change_by_optimizer,
    _change_by_load_state_dict,
    _change_by_assigning,
    _change_by_replacing_data,
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_weight_change_after_caching_is_picked_up(change) -> None:
    module = _module()
    inputs = _inputs(3, 12, 6)
    before = _inference(module, *inputs)  # builds and caches the stacked key/value weights
    torch.testing.assert_close(_inference(module, *inputs), before, atol=0, rtol=0)  # reused
    change(module)  # (no train()/eval() call, which would drop the cache anyway)
    after = _inference(module, *inputs)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _reference(module, *inputs), atol=1e-4, rtol=1e-4)


def test_the_cache_is_reused_until_train_and_survives_a_dtype_change() -> None:
    module = _module()
    inputs = _inputs(2, 8, 4)
    _inference(module, *inputs)
    cached = module._fused_key_value
    _inference(module, *inputs)
    assert module._fused_key_value is cached  # still valid: reused, not rebuilt
    module.train()
    assert module._fused_key_value is None
    module.eval()
    _inference(module, *inputs)
    module.to(torch.float64)  # the parameters' storage changes under the same Parameter objects
    got = _inference(module, *inputs)
    assert module._fused_key_value.weight.dtype == torch.float64
    torch.testing.assert_close(got, _reference(module, *inputs), atol=1e-6, rtol=1e-6)


def test_copies_and_pickles_do_not_carry_the_cache() -> None:
    module = _module()
    inputs = _inputs(2, 8, 4)
    _inference(module, *inputs)
    clone = copy.deepcopy(module)
    assert clone._fused_key_value is None
    with torch.no_grad():
        clone.blocks[0].v_proj.bias.add_(1.0)  # the clone's weights are its own
    torch.testing.assert_close(_inference(clone, *inputs), _reference(clone, *inputs), atol=1e-5, rtol=1e-5)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(_inference(loaded, *inputs), _inference(module, *inputs), atol=0, rtol=0)


def test_the_scorer_reads_one_run_of_vision_slots_as_a_view() -> None:
    hidden = torch.randn(1, 12, 4)
    run = torch.zeros(1, 12, dtype=torch.bool)
    run[0, 3:9] = True  # one image: consecutive slots
    gaps = run.clone()
    gaps[0, 5] = False
    with torch.no_grad():
        for mask in (run, gaps):
            index, _ = pack(mask)
            got = learned_scorer._gather(hidden, index)
            assert torch.equal(got, gather_slots(hidden, index))
            assert (got.data_ptr() == hidden[0, 3].data_ptr()) == (mask is run)  # a view only for the run
    with torch.enable_grad():  # with autograd, always the gather
        index, _ = pack(run)
        assert learned_scorer._gather(hidden, index).data_ptr() != hidden[0, 3].data_ptr()
