"""LVPruningConfig: defaults, resolution against a model's depth, and validation errors."""

from __future__ import annotations

import json

import pytest
from peft import PeftConfig

import lvpeft
from lvpeft import LVPruningConfig


def test_paper_setting_on_32_layers() -> None:
    config = LVPruningConfig(keep=0.1)
    assert config.resolve_layers(32) == [1, 8, 16]
    assert config.resolve_schedule() == [0.5, 0.3, 0.1]
    assert config.peft_type == lvpeft.PEFT_TYPE


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(4, [1, 2, 3]), (6, [1, 2, 3]), (32, [1, 8, 16]), (40, [1, 10, 20]), (80, [2, 20, 40])],
)
def test_default_layers_scale_with_depth(depth: int, expected: list[int]) -> None:
    assert LVPruningConfig().resolve_layers(depth) == expected


def test_schedule_is_capped_at_one() -> None:
    assert LVPruningConfig(keep=0.8).resolve_schedule() == [1.0, 1.0, 0.8]


def test_with_keep_shifts_an_explicit_schedule() -> None:
    config = LVPruningConfig(keep=0.1, layers=[1, 2], keep_schedule=[0.6, 0.1])
    assert config.with_keep(0.2) == pytest.approx([0.7, 0.2])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep": 0.0}, "keep"),
        ({"keep": 1.5}, "keep"),
        ({"keep": float("nan")}, "keep"),
        ({"layers": [8, 1]}, "layers"),
        ({"layers": [0, 4]}, "layers"),
        ({"layers": []}, "layers"),
        ({"keep_schedule": [0.3, 0.5, 0.1]}, "keep_schedule"),
        ({"keep_schedule": [0.5, 0.2]}, "keep_schedule"),  # does not end at keep=0.1
        ({"layers": [1, 2], "keep_schedule": [0.5, 0.3, 0.1]}, "keep_schedule"),
        ({"pruner_dim": 0}, "pruner_dim"),
        ({"pruner_dim": 30, "pruner_heads": 8}, "pruner_dim"),
        ({"pruner_heads": 0}, "pruner_heads"),
        ({"pruner_blocks": 0}, "pruner_blocks"),
        ({"gumbel_temperature": 0}, "gumbel_temperature"),
        ({"ratio_loss_weight": -1}, "ratio_loss_weight"),
        ({"num_modules": 0}, "num_modules"),
        ({"hide_answer_from_modules": "no"}, "hide_answer_from_modules"),
        ({"attention_distill_weight": -0.2}, "attention_distill_weight"),
        ({"attention_distill_weight": "0.2"}, "attention_distill_weight"),
    ],
)
def test_invalid_values_name_field_value_and_range(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"LVPruningConfig\.{field} must be .*got"):
        LVPruningConfig(**kwargs)


def test_layers_past_depth_name_the_depth() -> None:
    with pytest.raises(ValueError, match="has 4 decoder layers"):
        LVPruningConfig(layers=[1, 4]).resolve_layers(4)
    with pytest.raises(ValueError, match="too shallow"):
        LVPruningConfig().resolve_layers(3)


def test_saved_config_is_validated_on_load(tmp_path) -> None:
    LVPruningConfig(keep=0.2).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert PeftConfig.from_pretrained(tmp_path).keep == 0.2
    raw["keep"] = 3.0
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"LVPruningConfig\.keep must be a number in \(0, 1\], got 3\.0"):
        PeftConfig.from_pretrained(tmp_path)
    raw["keep"] = 0.2
    raw["keep_ratio"] = 0.5  # a typo'd field must not be silently dropped
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"unknown fields \['keep_ratio'\]"):
        PeftConfig.from_pretrained(tmp_path)
