"""Where a prefill's time goes: per-step costs, base vs pruned, read from `torch.profiler`.

`profile_prefill` runs one prefill under the profiler with a label around each part of the model
(vision tower, projector, every decoder layer, LM head) and reads lvpeft's own labels (the decision
modules' scoring, top-k selection, re-packing, per-layer masks and positions, restoring the output
length; see `lvpeft.pruning.hooks`). Times are the profiler's inclusive wall time per label, so the
steps do not overlap and `other` is the rest of the forward (embedding lookup, merging image
features, the decoder's mask and RoPE set-up, Python between modules). The profiler adds a small
cost per recorded op; compare steps within one table, and take latency itself from `lvpeft bench`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

MODEL_STEPS: tuple[str, ...] = ("vision tower", "projector", "decoder layers", "lm head")
"""Parts of the base model, each labelled by module hooks."""
PRUNING_STEPS: tuple[str, ...] = ("setup", "score", "select", "merge", "repack", "layer_inputs", "restore")
"""lvpeft's own steps (`lvpruning::<step>` labels in `lvpeft.pruning.hooks`)."""


@dataclass
class StepCosts:
    """Milliseconds per step of one profiled prefill.

    Attributes:
        name: the variant ("base", "lvpruning", a baseline).
        total_ms: the whole forward.
        steps: ms per step: `MODEL_STEPS`, then `lvpruning::<step>` for `PRUNING_STEPS`, then `other`.
        decoder_layers_ms: ms of each decoder layer, in order.
    """

    name: str
    total_ms: float
    steps: dict[str, float]
    decoder_layers_ms: list[float]


@contextmanager
def _labelled(modules: dict[str, nn.Module]) -> Iterator[None]:
    """Open a `record_function` label when each module's forward starts and close it when it ends."""
    open_labels: dict[int, list[Any]] = {}
    handles = []

    def enter(label: str) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            scope = record_function(label)
            scope.__enter__()
            open_labels.setdefault(id(module), []).append(scope)

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        open_labels[id(module)].pop().__exit__(None, None, None)

    for label, module in modules.items():
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _model_modules(model: nn.Module) -> dict[str, nn.Module]:
    from ..pruning.architecture import find_llava_parts

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts = find_llava_parts(base)
    modules = {
        "vision tower": parts.backbone.vision_tower,
        "projector": parts.backbone.multi_modal_projector,
        "lm head": base.get_output_embeddings(),
    }
    modules.update({f"decoder layer {i}": layer for i, layer in enumerate(parts.layers)})
    return modules


def profile_prefill(model: nn.Module, run: Callable[[], Any], name: str, warmup: int = 1) -> StepCosts:
    """Profile one call of `run` (a prefill of `model`) and sum the time of each step.

    Args:
        model: the LLaVA model `run` calls (a PEFT model or a plain one).
        run: the prefill, e.g. `lambda: model(**inputs, use_cache=True, logits_to_keep=1)`.
        name: the variant's name, for the report.
        warmup: unprofiled calls first.
    """
    device = next(model.parameters()).device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    modules = _model_modules(model)
    for _ in range(warmup):
        run()
    with _labelled(modules), profile(activities=activities) as prof, record_function("prefill"):
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        totals[event.key] = totals.get(event.key, 0.0) + event.cpu_time_total / 1000  # us -> ms
    depth = sum(label.startswith("decoder layer") for label in modules)
    layers = [totals.get(f"decoder layer {i}", 0.0) for i in range(depth)]
    steps = {step: totals.get(step, 0.0) for step in MODEL_STEPS}
    steps["decoder layers"] = sum(layers)
    for step in PRUNING_STEPS:
        steps[f"lvpruning::{step}"] = totals.get(f"lvpruning::{step}", 0.0)
    total = totals.get("prefill", 0.0)
    steps["other"] = max(0.0, total - sum(steps.values()))
    return StepCosts(name=name, total_ms=total, steps=steps, decoder_layers_ms=layers)


def format_breakdown(costs: list[StepCosts]) -> str:
    """A table: one row per step, one column per variant (ms and share of its total)."""
    names = [c.name for c in costs]
    lines = [f"{'step':<24}" + "".join(f"{n:>22}" for n in names)]
    for step in costs[0].steps:
        cells = "".join(
            f"{c.steps[step]:>12.2f} ms {100 * c.steps[step] / c.total_ms:>5.1f} %" for c in costs
        )
        lines.append(f"{step:<24}{cells}")
    lines.append(f"{'total':<24}" + "".join(f"{c.total_ms:>12.2f} ms {100.0:>5.1f} %" for c in costs))
    return "\n".join(lines)
