"""The decision modules compile with `torch.compile(fullgraph=True)`: one graph, no break, and shapes
that vary with the numbers of vision and language tokens (dynamic) without a recompile.

The default tests compile with the `aot_eager` backend (dynamo's capture and AOTAutograd's forward and
backward graphs, run by eager kernels: seconds on a CPU); the `slow` test compiles with inductor (C++
code generation: about half a minute on 2 CPU cores). Shapes: B batch, Nv vision, T language tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from lvpeft.tuner.layer import DecisionModule

HIDDEN = 64
SHAPES = [(2, 16, 7), (3, 9, 12), (2, 30, 5)]  # (B, Nv, T); B = 1 would specialise, so it is left out


def _module(dtype: torch.dtype = torch.float32) -> DecisionModule:
    torch.manual_seed(0)
    module = DecisionModule(HIDDEN, 32, heads=4)
    torch.nn.init.normal_(module.head.weight)  # the zero-initialised head would make every output 0
    return module.to(dtype)


def _inputs(b: int, nv: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vision (B, Nv, d), language (B, T, d), language_mask (B, T) bool with one row all False."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0] = False  # a row with no language token takes the module's padding fallback
    return torch.randn(b, nv, HIDDEN, generator=g), torch.randn(b, t, HIDDEN, generator=g), mask


class _CountingBackend:
    """A `torch.compile` backend that counts the graphs it is given and runs them with `aot_eager`."""

    def __init__(self) -> None:
        self.graphs = 0
        self._inner = lookup_backend("aot_eager")

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return self._inner(graph, example_inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decision_module_compiles_to_one_dynamic_graph(dtype: torch.dtype) -> None:
    torch.compiler.reset()
    module = _module(dtype).eval()
    backend = _CountingBackend()
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend=backend)
    first = None
    with torch.no_grad():
        for b, nv, t in SHAPES:
            vision, language, mask = _inputs(b, nv, t)  # float32 inputs: the module casts them
            out = compiled(vision, language, mask)
            first = backend.graphs if first is None else first
            assert out.shape == (b, nv, 2) and out.dtype == torch.float32
            torch.testing.assert_close(out, module(vision, language, mask), atol=1e-6, rtol=0)
    # (dynamo may hand the backend the first graph twice: it restarts once to specialise float constants)
    assert backend.graphs == first, f"recompiled for new shapes: {backend.graphs} graphs, {first} at first"


def test_compiled_decision_module_trains_like_eager() -> None:
    torch.compiler.reset()
    eager, compiled_module = _module(), _module()
    compiled = torch.compile(compiled_module, fullgraph=True, dynamic=True, backend="aot_eager")
    for b, nv, t in SHAPES[:2]:
        vision, language, mask = _inputs(b, nv, t)
        eager.zero_grad()
        compiled_module.zero_grad()
        weights = torch.randn(b, nv, 2)
        (eager(vision, language, mask) * weights).sum().backward()
        (compiled(vision, language, mask) * weights).sum().backward()
        for (name, p), q in zip(eager.named_parameters(), compiled_module.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_decision_module_compiles_with_inductor() -> None:
    torch.compiler.reset()
    module = _module().eval()
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for b, nv, t in SHAPES:
            vision, language, mask = _inputs(b, nv, t)
            torch.testing.assert_close(compiled(vision, language, mask), module(vision, language, mask))
