"""Device-mapped and offloaded base models (accelerate): pruning works as on an in-memory base.

On a CPU this covers transformers' `device_map="cpu"` and `{"": "cpu"}`, a `device_map` that puts
decoder layers on "disk", and accelerate's `cpu_offload` / `disk_offload` (weights on the meta device
until each forward, brought in by accelerate's `AlignDevicesHook`s). For each: `generate()` with the
adapter gives the tokens and logits (<= 1e-5) of the same adapter on a plain in-memory base, the
pruned layers' KV caches are shorter, and the disabled adapter is the base model, bit for bit.

A map over several GPUs could not be run here (no GPU). What it needs, each decision module on the
execution device of the decoder layer it precedes, is checked with accelerate hooks that name other
devices (a GPU index for `layer_placement`, the meta device for a whole injection), without running one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload, disk_offload
from accelerate.hooks import AlignDevicesHook, SequentialHook
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import LlavaForConditionalGeneration

import lvpeft
from helpers import batch, cache_lengths, expected_cache_lengths, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model
from lvpeft.tuner.devices import layer_placement

PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(2, 1, 4, 2)]
INPUTS = batch(PROMPTS)
NEW_TOKENS = 4
GENERATE = dict(max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True)
KEEP = 0.25  # modules before decoder layers 1, 2, 3 keeping 65 %, 45 %, 25 % of the vision tokens
LM = "model.language_model"
# decoder layers 1 and 3 (two of the three that get a decision module) live on disk
DISK_MAP = {
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    f"{LM}.embed_tokens": "cpu",
    f"{LM}.layers.0": "cpu",
    f"{LM}.layers.1": "disk",
    f"{LM}.layers.2": "cpu",
    f"{LM}.layers.3": "disk",
    f"{LM}.norm": "cpu",
    f"{LM}.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def load(path: str | Path, **kwargs: object) -> LlavaForConditionalGeneration:
    """The saved tiny base, with eager attention like `tiny_llava` (transformers would pick sdpa)."""
    return LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager", **kwargs).eval()


LOADERS: dict[str, Callable[[Path, Path], nn.Module]] = {
    "device_map_cpu": lambda base, folder: load(base, device_map="cpu"),
    "device_map_root_cpu": lambda base, folder: load(base, device_map={"": "cpu"}),
    "device_map_disk": lambda base, folder: load(base, device_map=DISK_MAP, offload_folder=str(folder)),
    "cpu_offload": lambda base, folder: cpu_offload(load(base), execution_device=torch.device("cpu")),
    "disk_offload": lambda base, folder: disk_offload(
        load(base), offload_dir=str(folder), execution_device=torch.device("cpu")
    ),
}
OFFLOADED = {"device_map_disk", "cpu_offload", "disk_offload"}


@dataclass
class Saved:
    """A saved base model and adapter, and what the adapter generates on the in-memory base."""

    base: Path
    adapter: Path
    sequences: torch.Tensor
    logits: tuple[torch.Tensor, ...]
    cache: list[int]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    folder = tmp_path_factory.mktemp("devices")
    tiny_llava().save_pretrained(folder / "base")
    model = get_lvpruning_model(load(folder / "base"), LVPruningConfig(keep=KEEP))  # plain, in memory
    randomize_heads(model)
    model.save_pretrained(folder / "adapter")  # names folder/"base" as its base model
    with torch.no_grad():
        out = model.generate(**INPUTS, **GENERATE)
    return Saved(
        folder / "base", folder / "adapter", out.sequences, out.logits, cache_lengths(out.past_key_values)
    )


def decision_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in model.named_parameters() if "lvpruning_module" in name]


def assert_generates_like_in_memory(model: nn.Module, saved: Saved) -> None:
    """Same tokens and logits as the in-memory reference; pruned layers cache only the kept tokens."""
    with torch.no_grad():
        out = model.generate(**INPUTS, **GENERATE)
    assert torch.equal(out.sequences, saved.sequences)
    assert len(out.logits) == len(saved.logits) == NEW_TOKENS
    for got, expected in zip(out.logits, saved.logits):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    ratios = LVPruningConfig(keep=KEEP).resolve_schedule()
    prefill = expected_cache_lengths(PROMPTS, [1, 2, 3], ratios)
    lengths = cache_lengths(out.past_key_values)
    assert lengths == saved.cache == [n + NEW_TOKENS - 1 for n in prefill]
    assert lengths[0] > lengths[1] > lengths[2] > lengths[3]


@pytest.mark.parametrize("attach", ["get_lvpruning_model", "lvpeft.from_pretrained"])
@pytest.mark.parametrize("how", list(LOADERS))
def test_dispatched_base_generates_like_an_in_memory_base(
    saved: Saved, tmp_path: Path, how: str, attach: str
) -> None:
    base = LOADERS[how](saved.base, tmp_path / "offload")
    layer = base.model.language_model.layers[1]
    assert any(p.device.type == "meta" for p in layer.parameters()) == (how in OFFLOADED)
    device_map = getattr(base, "hf_device_map", None)
    # the base model itself, before any adapter; frozen as PEFT freezes it (on a CPU, generate() with
    # trainable weights can take other kernels: its logits differ by about 1e-7)
    base.requires_grad_(False)
    with torch.no_grad():
        expected = base.generate(**INPUTS, **GENERATE)
    if attach == "get_lvpruning_model":
        model = get_lvpruning_model(base, LVPruningConfig(keep=KEEP))
        loaded = set_peft_model_state_dict(model, load_file(saved.adapter / "adapter_model.safetensors"))
        assert not loaded.unexpected_keys
    else:
        model = lvpeft.from_pretrained(str(saved.adapter), base_model=base)
    assert getattr(base, "hf_device_map", None) == device_map  # the dispatch is kept as it was
    params = decision_parameters(model)
    assert params and all(p.device == torch.device("cpu") and p.dtype == torch.float32 for p in params)
    model.eval()
    assert_generates_like_in_memory(model, saved)
    with torch.no_grad(), model.disable_adapter():
        disabled = model.generate(**INPUTS, **GENERATE)
    assert torch.equal(disabled.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(disabled.logits, expected.logits))
    assert cache_lengths(disabled.past_key_values) == [INPUTS["input_ids"].shape[1] + NEW_TOKENS - 1] * 4


def test_from_pretrained_loads_the_named_base_with_a_disk_device_map(saved: Saved, tmp_path: Path) -> None:
    model = lvpeft.from_pretrained(
        str(saved.adapter),
        device_map=DISK_MAP,
        offload_folder=str(tmp_path / "offload"),
        attn_implementation="eager",
    )
    base = model.get_base_model()
    assert base.hf_device_map == DISK_MAP
    assert all(p.device.type == "meta" for p in base.model.language_model.layers[3].self_attn.parameters())
    assert_generates_like_in_memory(model, saved)


def test_decision_modules_follow_the_layer_dtype() -> None:
    base = tiny_llava(dtype=torch.bfloat16)
    kept = get_lvpruning_model(base, LVPruningConfig(keep=KEEP), autocast_adapter_dtype=False)
    assert {p.dtype for p in decision_parameters(kept)} == {torch.bfloat16}
    inputs = {**INPUTS, "pixel_values": INPUTS["pixel_values"].to(torch.bfloat16)}
    with torch.no_grad():
        assert torch.isfinite(kept(**inputs).logits).all()
    # PEFT's default autocast_adapter_dtype=True upcasts fp16/bf16 adapters to float32
    upcast = get_lvpruning_model(tiny_llava(dtype=torch.bfloat16), LVPruningConfig(keep=KEEP))
    assert {p.dtype for p in decision_parameters(upcast)} == {torch.float32}


def test_layer_placement_reads_accelerate_hooks() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=KEEP))
    layers = model.get_base_model().model.language_model.layers
    assert layer_placement(layers[0]) == (torch.device("cpu"), torch.float32)
    # a device_map over GPUs puts a hook naming the layer's GPU on it (weights there, or on meta if offloaded)
    layers[1]._hf_hook = AlignDevicesHook(execution_device=torch.device("cuda", 1))
    assert layer_placement(layers[1]) == (torch.device("cuda", 1), torch.float32)
    # cpu_offload hooks every leaf module; the weights wait on the meta device
    for name, child in layers[2].named_children():
        if name != "pruner":
            child.to("meta")
    layers[2].self_attn.q_proj._hf_hook = SequentialHook(
        AlignDevicesHook(io_same_device=True), AlignDevicesHook(execution_device=0)
    )
    assert layer_placement(layers[2]) == (0, torch.float32)
    # the layer's own weights decide, not the decision module attached to it (still float32 on the CPU)
    for name, child in layers[3].named_children():
        if name != "pruner":
            child.to(device="meta", dtype=torch.float16)
    assert {p.device.type for p in decision_parameters(layers[3])} == {"cpu"}
    assert layer_placement(layers[3]) == (None, torch.float16)


def test_each_decision_module_goes_to_its_layers_execution_device() -> None:
    base = tiny_llava()
    # a two-device map in miniature: layer 2 executes on another device (meta: the only other one here)
    base.model.language_model.layers[2]._hf_hook = AlignDevicesHook(execution_device=torch.device("meta"))
    model = get_lvpruning_model(base, LVPruningConfig(keep=KEEP))
    layers = model.get_base_model().model.language_model.layers
    devices = {i: {p.device.type for p in decision_parameters(layers[i])} for i in (1, 2, 3)}
    assert devices == {1: {"cpu"}, 2: {"meta"}, 3: {"cpu"}}


def test_block_offload_of_a_decoder_layer_is_refused() -> None:
    base = cpu_offload(
        tiny_llava(), execution_device=torch.device("cpu"), preload_module_classes=["LlamaDecoderLayer"]
    )
    with pytest.raises(
        ValueError,
        match=r"offloads 'model\.language_model\.layers\.1' as one block.*preload.*LlamaDecoderLayer",
    ):
        get_lvpruning_model(base, LVPruningConfig(keep=KEEP))
    assert not any("pruner" in name for name, _ in base.named_modules())


def test_peft_from_pretrained_on_a_disk_offloaded_base_points_to_lvpeft(saved: Saved, tmp_path: Path) -> None:
    base = load(saved.base, device_map=DISK_MAP, offload_folder=str(tmp_path / "offload"))
    with pytest.raises(
        ValueError, match=r"meta device and no accelerate hook.*lvpeft\.from_pretrained\(adapter, base_model="
    ):
        PeftModel.from_pretrained(base, str(saved.adapter))
