"""No host-device synchronisation on the per-token decode path (issue 16, "Ready for a GPU").

A `generate()` step after a pruned prefill must not make the host wait for the device: lvpeft's
hooks run at every decode step, and one `bool(tensor)` there stalls the GPU's queue once per token.
There is no device on a CPU, so the test counts what WOULD synchronise on a GPU (`SyncRecorder`):

- reads of a tensor's value on the host: `.item()`, `bool(t)`, `int(t)`, `float(t)` (all lower to
  `aten._local_scalar_dense`), `torch.equal`;
- ops whose output shape depends on the data: `nonzero`, one-argument `torch.where`, `masked_select`,
  boolean-mask indexing and assignment, `unique`, `repeat_interleave` without `output_size`;
- conversions to host objects: `.tolist()`, `.cpu()`, `.numpy()`.

Each is attributed to lvpeft when lvpeft's own source is on its Python stack. Decode steps must have
none, and a pruned decode step must not make transformers synchronise more than the base model's
(transformers 5.24's `generate()` reads one tensor per step itself: its stopping check,
`bool(unfinished_sequences.max() == 0)`; a direct forward's mask builder reads the 2D attention mask,
`masking_utils.fast_all`). The pruned prefill does read tensors (how many tokens each module keeps
decides the shapes that follow); that is once per prompt, not per token.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lvpeft
from helpers import PAD, batch, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning import masks

LVPEFT_SOURCE = os.path.dirname(os.path.abspath(lvpeft.__file__)) + os.sep  # .../lvpeft/
HOST_READS = {
    "aten._local_scalar_dense",
    "aten.equal",
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.nonzero_numpy",
    "aten.argwhere",
    "aten.masked_select",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
}
"""aten ops that read device memory on the host or size their output by the data."""
HOST_CONVERSIONS = {"tolist", "cpu", "numpy", "__array__"}
"""Tensor methods that hand the host a copy (torch functions, seen before dispatch)."""


@dataclass
class SyncEvent:
    """One would-be synchronisation: what, at which forward (0: the prefill), and where."""

    op: str
    step: int
    in_lvpeft: bool
    where: str


class SyncRecorder:
    """Records would-be host-device synchronisations, each tagged with the forward it happened in.

    `step` is the number of forwards of `backbone` started so far minus one (a pre-hook registered
    before lvpeft's, so lvpeft's own setup counts in its forward): 0 is `generate()`'s prefill.
    """

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.events: list[SyncEvent] = []
        self.step = -1
        self._backbone = backbone

    @contextlib.contextmanager
    def recording(self) -> Iterator[SyncRecorder]:
        handle = self._backbone.register_forward_pre_hook(self._next_step, prepend=True)
        try:
            with _FunctionMode(self), _DispatchMode(self):
                yield self
        finally:
            handle.remove()

    def _next_step(self, module: torch.nn.Module, args: tuple) -> None:
        self.step += 1

    def record(self, op: str) -> None:
        stack = [f for f in traceback.extract_stack() if f.filename != __file__]  # not the recorder's
        mine = [f for f in stack if f.filename.startswith(LVPEFT_SOURCE)]
        frame = (
            mine[-1] if mine else next((f for f in reversed(stack) if "/torch/" not in f.filename), stack[-1])
        )
        where = "/".join(frame.filename.split(os.sep)[-3 if mine else -2 :]) + f":{frame.lineno}"
        self.events.append(SyncEvent(op, self.step, bool(mine), where))

    def decode_events(self, lvpeft_only: bool = False) -> list[SyncEvent]:
        return [e for e in self.events if e.step >= 1 and (e.in_lvpeft or not lvpeft_only)]


class _FunctionMode(TorchFunctionMode):
    def __init__(self, recorder: SyncRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", "") in HOST_CONVERSIONS:
            self.recorder.record(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class _DispatchMode(TorchDispatchMode):
    def __init__(self, recorder: SyncRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket)
        kwargs = kwargs or {}
        if (
            name in HOST_READS
            or (name in ("aten.index", "aten.index_put", "aten.index_put_") and _bool_index(args))
            or (name == "aten.repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1)
        ):
            self.recorder.record(name)
        return func(*args, **kwargs)


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _model(attn: str) -> Any:
    model = get_lvpruning_model(tiny_llava(attn=attn), LVPruningConfig(keep=0.25))
    randomize_heads(model)
    return model.eval()


def _record_generate(model: Any, inputs: dict[str, torch.Tensor], **options: Any) -> SyncRecorder:
    recorder = SyncRecorder(model.get_base_model().model)
    with torch.no_grad(), recorder.recording():
        model.generate(
            **inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=PAD, **options
        )
    assert recorder.step == 3, "expected a prefill and three decode steps"
    return recorder


def _describe(events: list[SyncEvent]) -> str:
    return "\n".join(f"  step {e.step}: {e.op} at {e.where}" for e in events) or "  none"


SINGLE = [prompt_ids(1, 3, 5, 0)]
MIXED = [prompt_ids(1, 3, 5, 0), prompt_ids(0, 2, 9, 1), prompt_ids(2, 1, 4, 2)]  # 1, 0, 2 images


@pytest.mark.parametrize(
    "attn, prompts, options",
    [
        ("sdpa", SINGLE, {}),
        ("sdpa", MIXED, {}),
        ("eager", MIXED, {}),
        ("sdpa", MIXED, {"num_beams": 2}),
        ("sdpa", [prompt_ids(0, 4, 6, 0)], {}),  # text only: unpruned, the adapter still hooked in
    ],
    ids=["sdpa-single", "sdpa-mixed-batch", "eager-mixed-batch", "sdpa-beam-search", "sdpa-text-only"],
)
def test_pruned_decode_steps_do_not_synchronise(attn: str, prompts: list[list[int]], options: dict) -> None:
    model = _model(attn)
    inputs = batch(prompts)
    pruned = _record_generate(model, inputs, **options)
    if "pixel_values" in inputs:  # the decode steps followed a pruned prefill
        assert lvpruning_tuner(model).pruning_stats.keep_ratios
    with model.disable_adapter():
        base = _record_generate(model, inputs, **options)
    ours = pruned.decode_events(lvpeft_only=True)
    assert not ours, f"lvpeft synchronises in decode steps:\n{_describe(ours)}"
    for step in range(1, 4):
        with_adapter = [e.op for e in pruned.decode_events() if e.step == step]
        without = [e.op for e in base.decode_events() if e.step == step]
        assert sorted(with_adapter) == sorted(without), (
            f"decode step {step} synchronises differently with the adapter:\n"
            f"pruned:\n{_describe([e for e in pruned.events if e.step == step])}\n"
            f"base:\n{_describe([e for e in base.events if e.step == step])}"
        )


def test_recorder_catches_a_sync_added_to_the_decode_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard itself: re-adding the reads the decode path used to make is caught and located."""
    original = masks.stage_attention_mask

    def with_reads(ctx: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
        int(keys.positions.max())
        bool(keys.valid.all())
        keys.valid.tolist()
        keys.positions[keys.valid].sum()
        return original(ctx, keys, *args, **kwargs)

    monkeypatch.setattr("lvpeft.pruning.hooks.stage_attention_mask", with_reads)
    recorder = _record_generate(_model("sdpa"), batch(MIXED))
    found = {(e.op, e.where.split(":")[0]) for e in recorder.decode_events(lvpeft_only=True)}
    assert found == {
        ("aten._local_scalar_dense", "lvpeft/pruning/hooks.py"),
        ("Tensor.tolist", "lvpeft/pruning/hooks.py"),
        ("aten.index", "lvpeft/pruning/hooks.py"),
    }, _describe(recorder.decode_events())
