"""Where the decoder layers of a base model compute, including bases dispatched by accelerate.

A base model loaded with a `device_map` (or passed through accelerate's `dispatch_model`,
`cpu_offload` or `disk_offload`) carries accelerate hooks (`module._hf_hook`): an offloaded layer's
weights wait on the meta device, and its hook brings them to the hook's *execution device* for the
forward. A decision module must live where the decoder layer after it computes, in that layer's
dtype (PEFT then upcasts fp16/bf16 adapters to float32 unless `autocast_adapter_dtype=False`).

Two accelerate set-ups cannot hold a decision module; `check_offload` names them before anything
is injected.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import DecisionLayer

Device = torch.device | str | int
"""A device as accelerate stores it: a `torch.device`, a string, or an accelerator index."""


def _hooks(module: nn.Module) -> list[object]:
    """The accelerate hooks on `module` (a `SequentialHook` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def execution_device(module: nn.Module) -> Device | None:
    """The execution device of an accelerate hook on `module` itself; None if it has none."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return device
    return None


def _base_modules(layer: nn.Module) -> list[nn.Module]:
    """The modules of decoder `layer` without the decision modules lvpeft attached to it."""
    ours = {
        id(m) for holder in layer.modules() if isinstance(holder, DecisionLayer) for m in holder.modules()
    }
    return [m for m in layer.modules() if id(m) not in ours]


def layer_placement(layer: nn.Module) -> tuple[Device | None, torch.dtype | None]:
    """The device and floating dtype decoder `layer` computes in.

    The device is the execution device of the first accelerate hook found on the layer or inside it
    (its weights may sit on the meta device or on the CPU until the forward); without hooks, the
    device of its first parameter that is not on the meta device; None if there is neither.
    """
    modules = _base_modules(layer)
    params = [p for m in modules for p in m.parameters(recurse=False)]
    dtype = next((p.dtype for p in params if p.is_floating_point()), None)
    for module in modules:
        device = execution_device(module)
        if device is not None:
            return device, dtype
    device = next((p.device for p in params if p.device.type != "meta"), None)
    return device, dtype


def check_offload(model: nn.Module, layers: dict[int, nn.Module]) -> None:
    """Raise `ValueError` if a decision module placed before one of `layers` (index -> layer) could not run.

    - accelerate offloads a module containing the layer as one block (`preload_module_classes`): the
      block's hook reloads every tensor inside it from its own offload map before each forward and puts
      them back on the meta device after it, which it cannot do for a decision module added later;
    - the model was dispatched (it has an `hf_device_map`) but the layer's weights are on the meta
      device with no hook left to load them: its hooks were removed.
    """
    names = {module: name for name, module in model.named_modules()}
    for index, layer in layers.items():
        path = names.get(layer, "")
        for name, module in model.named_modules():
            inside = name == path or not name or path.startswith(f"{name}.")
            if inside and any(
                getattr(h, "offload", False) and getattr(h, "place_submodules", False) for h in _hooks(module)
            ):
                raise ValueError(
                    f"accelerate offloads {name or 'the whole model'!r} as one block "
                    "(preload_module_classes): its hook reloads every weight inside it from its own offload "
                    "map before each forward, and cannot hold LVPruning's decision module before decoder "
                    f"layer {index}. Offload without preloading {type(module).__name__} (e.g. "
                    "cpu_offload(model) or a device_map)."
                )
        device, _ = layer_placement(layer)
        meta = any(p.device.type == "meta" for m in _base_modules(layer) for p in m.parameters(recurse=False))
        if device is None and meta and getattr(model, "hf_device_map", None) is not None:
            raise ValueError(
                f"Decoder layer {index} of the base model has its weights on the meta device and no "
                "accelerate hook to load them: the model was dispatched with an offloading device_map and "
                "its hooks were removed (peft.PeftModel.from_pretrained removes them when the device_map "
                "holds 'cpu' or 'disk', and cannot re-dispatch a LLaVA model). Reload the base model and "
                "attach the adapter with lvpeft.from_pretrained(adapter, base_model=model), which keeps "
                "the dispatch as it is."
            )
