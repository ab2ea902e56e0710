"""Bad input gets a clear error, raised before any work is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import lvpeft
from helpers import batch, prompt_ids, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model

INPUTS = batch([prompt_ids(1, 3, 5, 0)])


def save_adapter(path: Path, **kwargs) -> Path:
    get_lvpruning_model(tiny_llava(**kwargs), LVPruningConfig(keep=0.25)).save_pretrained(path)
    return path


def assert_untouched(base: torch.nn.Module, expected: torch.Tensor) -> None:
    assert not any("pruner" in name for name, _ in base.named_modules())
    with torch.no_grad():
        assert torch.equal(base(**INPUTS).logits, expected)


def test_model_that_is_not_llava_like() -> None:
    llm = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    )
    with pytest.raises(TypeError, match="no vision_tower and no language_model"):
        get_lvpruning_model(llm)
    with pytest.raises(TypeError, match="LLaVA-like"):
        get_peft_model(llm, LVPruningConfig())


def test_model_without_image_token() -> None:
    model = tiny_llava()
    model.config.image_token_id = None
    with pytest.raises(TypeError, match="image_token_id"):
        get_lvpruning_model(model)


def test_module_position_past_depth_names_the_depth() -> None:
    with pytest.raises(ValueError, match="has 4 decoder layers"):
        get_lvpruning_model(tiny_llava(), LVPruningConfig(layers=[1, 2, 4]))


def test_unsupported_attention_implementation() -> None:
    model = tiny_llava()
    model.model.language_model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        get_lvpruning_model(model)


def test_adapter_for_another_base_shape_names_both_shapes(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a", layers=6)
    with pytest.raises(ValueError, match=r"hidden size 64 and 6 decoder layers.*hidden size 64 and 4 layers"):
        PeftModel.from_pretrained(tiny_llava(), adapter)
    base = tiny_llava()
    with torch.no_grad():
        expected = base(**INPUTS).logits
    with pytest.raises(ValueError, match="6 decoder layers"):
        lvpeft.from_pretrained(str(adapter), base_model=base)
    assert_untouched(base, expected)


def test_adapter_tensor_of_another_shape_names_both_shapes(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    config_path = adapter / "adapter_config.json"
    raw = json.loads(config_path.read_text())
    raw["pruner_dim"] = 32  # the saved tensors are 64 wide
    config_path.write_text(json.dumps(raw))
    with pytest.raises(
        ValueError,
        match=r"another shape.*blocks\.0\.ffn\.0\.bias' has shape \(64,\) but the model expects \(32,\)",
    ):
        PeftModel.from_pretrained(tiny_llava(), adapter)


def test_truncated_safetensors_fails_cleanly_before_loading(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    base = tiny_llava()
    with torch.no_grad():
        expected = base(**INPUTS).logits
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        lvpeft.from_pretrained(str(adapter), base_model=base)
    assert_untouched(base, expected)


def test_garbage_safetensors_fails_cleanly(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        lvpeft.from_pretrained(str(adapter), base_model=tiny_llava())


def test_pickle_adapter_is_refused(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        lvpeft.from_pretrained(str(adapter), base_model=tiny_llava())


def test_adapter_of_another_method_is_refused(tmp_path: Path) -> None:
    lora = get_peft_model(tiny_llava(), LoraConfig(target_modules=["q_proj"], r=2))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="'LORA' adapter, not an LVPruning"):
        lvpeft.from_pretrained(str(tmp_path / "lora"), base_model=tiny_llava())


def test_invalid_config_value_on_load_fails_before_the_base_model(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    raw = json.loads((adapter / "adapter_config.json").read_text())
    raw["keep_schedule"] = [0.1, 0.5, 0.25]
    (adapter / "adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="keep_schedule must be non-increasing"):
        lvpeft.from_pretrained(
            str(adapter)
        )  # no base_model: it would have to load one; it must not get there


def test_missing_adapter_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No adapter folder"):
        lvpeft.from_pretrained(str(tmp_path / "nope"))


def test_new_image_after_pruned_prefill_is_refused() -> None:
    from transformers import DynamicCache

    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).eval()
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model(**INPUTS, past_key_values=cache, use_cache=True)
        with pytest.raises(NotImplementedError, match="fresh cache"):
            model(**INPUTS, past_key_values=cache, use_cache=True)


def test_several_active_adapters_are_refused() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25))
    model.add_adapter("other", LVPruningConfig(keep=0.5))
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="one adapter at a time"), torch.no_grad():
        model(**INPUTS)
    model.base_model.set_adapter("other")
    with torch.no_grad():
        model(**INPUTS)
    assert model.base_model.pruning_stats.keep_ratios[-1] == 0.5
