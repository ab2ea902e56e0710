"""Adapters saved by earlier versions stay loadable: `fixtures/adapter_v0_1_0/` was saved by lvpeft
0.1.0 (the flat package layout) with the inputs and logits
recorded at save time (`fixtures/make_saved_adapter.py`)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

import lvpeft
from helpers import tiny_llava
from lvpeft import lvpruning_tuner

FIXTURE = Path(__file__).parent / "fixtures" / "adapter_v0_1_0"


def _recorded() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    saved = load_file(FIXTURE / "expected.safetensors")
    inputs = {k: saved[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    return inputs, saved["logits"], saved["keep_ratios"]


def test_adapter_saved_by_0_1_0_loads_with_lvpeft_from_pretrained() -> None:
    inputs, logits, keep_ratios = _recorded()
    model = lvpeft.from_pretrained(str(FIXTURE), base_model=tiny_llava())
    with torch.no_grad():
        out = model(**inputs).logits
    torch.testing.assert_close(out, logits)
    assert lvpruning_tuner(model).pruning_stats.keep_ratios == keep_ratios.tolist()


def test_adapter_saved_by_0_1_0_loads_with_peft() -> None:
    inputs, logits, _ = _recorded()
    model = PeftModel.from_pretrained(tiny_llava(), str(FIXTURE)).eval()
    with torch.no_grad():
        out = model(**inputs).logits
    torch.testing.assert_close(out, logits)
