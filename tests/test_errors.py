"""Bad input gets a clear error, raised before any work is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration

import lvpeft
from helpers import batch, prompt_ids, tiny_llava, write_llava_json
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.demo.questions import iter_split
from lvpeft.demo.scenes import SceneConfig
from lvpeft.measure.flops_command import load_model_config
from lvpeft.pruning.scorers import RandomScorer
from lvpeft.training.data.llava_format import load_llava_dataset
from lvpeft.training.train_command import TrainCommandArguments, run_training

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


# -- the model and the config ---------------------------------------------------------------------------


def test_language_model_without_decoder_layers() -> None:
    model = tiny_llava()
    del model.model.language_model.layers
    with pytest.raises(TypeError, match="decoder layers as a ModuleList `layers`, but LlamaModel has none"):
        get_lvpruning_model(model)


def test_text_config_without_hidden_size() -> None:
    model = tiny_llava()
    model.model.language_model.config = SimpleNamespace(n_embd=64)  # a config that names its width otherwise
    with pytest.raises(
        TypeError, match="SimpleNamespace has no `hidden_size`; cannot size the decision modules"
    ):
        get_lvpruning_model(model)


def test_config_of_another_method_is_refused() -> None:
    with pytest.raises(TypeError, match="get_lvpruning_model needs an LVPruningConfig, got LoraConfig"):
        get_lvpruning_model(tiny_llava(), LoraConfig(target_modules=["q_proj"]))


def test_tuner_of_a_model_without_lvpruning() -> None:
    lora = get_peft_model(tiny_llava(), LoraConfig(target_modules=["q_proj"], r=2))
    with pytest.raises(TypeError, match="Expected a model wrapped with an LVPruning adapter, got PeftModel"):
        lvpruning_tuner(lora)


def test_heads_that_do_not_divide_the_module_width() -> None:
    base = tiny_llava()
    with pytest.raises(
        ValueError, match=r"pruner_heads=5 must divide the module width 64 \(pruner_dim='paper'"
    ):
        get_lvpruning_model(base, LVPruningConfig(pruner_dim="paper", pruner_heads=5))
    assert not any("pruner" in name for name, _ in base.named_modules())


# -- loading an adapter ---------------------------------------------------------------------------------


def test_adapter_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No adapter_config\.json in .*: is it an LVPruning adapter"):
        lvpeft.from_pretrained(str(tmp_path / "a"))


def test_adapter_config_that_is_not_json(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    (adapter / "adapter_config.json").write_text('{"peft_type": ')
    with pytest.raises(ValueError, match=r"adapter_config\.json is not valid JSON .*re-save the adapter"):
        lvpeft.from_pretrained(str(adapter))


def test_adapter_without_weights(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"No adapter_model\.safetensors in"):
        lvpeft.from_pretrained(str(adapter), base_model=tiny_llava())


def test_adapter_that_names_no_base_model(tmp_path: Path) -> None:
    adapter = save_adapter(tmp_path / "a")  # made on a model built from a config: no name_or_path
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    with pytest.raises(
        ValueError, match=r"names no base model \(base_model_name_or_path\); pass base_model="
    ):
        lvpeft.from_pretrained(str(adapter))


# -- inference ------------------------------------------------------------------------------------------


def sliding_window_llava(window: int) -> LlavaForConditionalGeneration:
    """The tiny LLaVA with a Qwen2 decoder whose every layer attends within a sliding window."""
    config = tiny_llava("qwen2").config
    text = config.text_config
    text.use_sliding_window, text.sliding_window = True, window
    text.layer_types = ["sliding_attention"] * text.num_hidden_layers
    return LlavaForConditionalGeneration(config).eval()


def test_wrong_number_of_scorers() -> None:
    tuner = lvpruning_tuner(get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)))
    with (
        pytest.raises(ValueError, match=r"use_scorers needs one scorer per module \(3\), got 2"),
        tuner.use_scorers([RandomScorer(), RandomScorer()]),
    ):
        pass


def test_attention_mask_that_is_not_2d() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).eval()
    mask = INPUTS["attention_mask"][:, None, None, :]
    with (
        pytest.raises(ValueError, match=r"needs a 2D attention_mask .*shape \(1, 1, 1, \d+\)"),
        torch.no_grad(),
    ):
        model(**{**INPUTS, "attention_mask": mask})


def test_cache_crop_into_the_pruned_prompt() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25)).eval()
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model(**INPUTS, cache=cache, use_cache=True)
    length = INPUTS["input_ids"].shape[1]
    with pytest.raises(NotImplementedError, match="cannot crop 5 tokens from a cache holding only 0 decoded"):
        cache.crop(length - 5)


def test_cache_crop_of_sliding_window_layers() -> None:
    model = get_lvpruning_model(sliding_window_llava(256), LVPruningConfig(keep=0.25)).eval()
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model.generate(**INPUTS, max_new_tokens=3, do_sample=False, cache=cache)
    with pytest.raises(NotImplementedError, match="can crop only plain DynamicCache layers"):
        cache.crop(cache.get_seq_length() - 1)


# -- training and data ----------------------------------------------------------------------------------


def test_train_command_on_bad_rows_value(tmp_path: Path) -> None:
    ours = TrainCommandArguments(model="unused", data=str(tmp_path / "d.json"), on_bad_rows="ignore")
    with pytest.raises(ValueError, match="--on_bad_rows must be 'skip' or 'raise', got 'ignore'"):
        run_training(ours, sft_args=None)


def test_train_command_without_usable_rows(tmp_path: Path) -> None:
    data, images = write_llava_json(tmp_path, n=2)
    shutil.rmtree(images)
    Path(images).mkdir()  # every row's image is missing: all rows are skipped
    ours = TrainCommandArguments(model="unused", data=data, image_folder=images)
    with pytest.raises(ValueError, match=r"No usable rows in .*data\.json"):
        run_training(ours, sft_args=None)  # fails before loading any model


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"data_path": "missing.json"}, FileNotFoundError, "LLaVA data file not found"),
        ({"image_folder": "missing"}, FileNotFoundError, "image folder not found"),
        ({"on_error": "ignore"}, ValueError, "on_error must be 'skip' or 'raise', got 'ignore'"),
        ({"image_check": "open"}, ValueError, "image_check must be 'load', 'verify' or 'exists', got 'open'"),
        ({"max_samples": -1}, ValueError, "max_samples must be >= 0, got -1"),
    ],
)
def test_llava_data_arguments(tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    data, images = write_llava_json(tmp_path, n=1)
    paths = {"data_path", "image_folder"}
    arguments = {"data_path": data, "image_folder": images}
    arguments.update({k: str(tmp_path / v) if k in paths else v for k, v in kwargs.items()})
    with pytest.raises(error, match=message):
        load_llava_dataset(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 100}, "image_size must be a multiple of both patch_size and grid"),
        ({"position_names": ("left", "right")}, "need 9 position names, got 2"),
        ({"max_objects": 10}, r"need 1 <= min_objects <= max_objects <= grid \* grid"),
        ({"colours": ("red", "mauve")}, r"no RGB value for colours \['mauve'\]"),
    ],
)
def test_scene_config_names_the_constraint(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SceneConfig(**kwargs)


def test_scene_split_must_exist() -> None:
    with pytest.raises(
        ValueError, match=r"split must be one of \('train', 'validation', 'test'\), got 'dev'"
    ):
        next(iter_split("dev"))


def test_flops_model_that_is_not_a_llava_config(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"is neither a preset \['llava-1\.5-7b', .*\] nor a directory with config"
    ):
        load_model_config(str(tmp_path))
    LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json is a LlamaConfig, not a LLaVA config"):
        load_model_config(str(tmp_path))
