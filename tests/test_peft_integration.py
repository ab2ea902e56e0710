"""PEFT conventions: registration, trainable/saved parameters, save/load in a fresh process,
transformers' load_adapter, unload, set_keep, model card, push_to_hub."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils import PeftType
from safetensors.torch import load_file

import lvpeft
from helpers import batch, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner

INPUTS = batch([prompt_ids(1, 3, 5, 0), prompt_ids(2, 1, 6, 1)])
TESTS = Path(__file__).parent


def saved_adapter(tmp_path: Path, **config) -> tuple[Path, torch.Tensor]:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25, **config))
    randomize_heads(model)
    with torch.no_grad():
        logits = model(**INPUTS).logits
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", logits


def test_registered_as_a_real_peft_type() -> None:
    assert PeftType("LVPRUNING") is lvpeft.PEFT_TYPE and lvpeft.PEFT_TYPE.value == "LVPRUNING"
    model = get_peft_model(tiny_llava(), LVPruningConfig())
    assert isinstance(model, PeftModel) and isinstance(model.base_model, lvpeft.LVPruningModel)


def test_only_decision_modules_are_trainable_and_saved(tmp_path: Path) -> None:
    base = tiny_llava()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_lvpruning_model(base, LVPruningConfig())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".pruner.lvpruning_module.default." in n for n in trainable)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all(".pruner.lvpruning_module." in k and ".default." not in k for k in saved)
    assert len(saved) == len(trainable)
    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    adapter, expected = saved_adapter(tmp_path)
    torch.save(INPUTS, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(TESTS)!r})
        import lvpeft
        from peft import PeftModel
        from helpers import tiny_llava
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            a = PeftModel.from_pretrained(tiny_llava(), {str(adapter)!r})(**inputs).logits
            b = lvpeft.from_pretrained({str(adapter)!r}, base_model=tiny_llava())(**inputs).logits
            base = tiny_llava(); base.load_adapter({str(adapter)!r})
            c = base(**inputs).logits
        torch.save({{"peft": a, "lvpeft": b, "transformers": c}}, {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    outputs = torch.load(tmp_path / "out.pt")
    for name, logits in outputs.items():
        assert torch.equal(logits, expected), name


def test_unload_returns_the_base_model() -> None:
    base = tiny_llava()
    with torch.no_grad():
        expected = base(**INPUTS).logits
    model = get_lvpruning_model(base, LVPruningConfig())
    unloaded = model.unload()
    assert unloaded is base and not any("pruner" in n for n, _ in unloaded.named_modules())
    with torch.no_grad():
        assert torch.equal(unloaded(**INPUTS).logits, expected)
    with pytest.raises(ValueError, match="cannot be merged"):
        get_lvpruning_model(tiny_llava(), LVPruningConfig()).merge_and_unload()


def test_set_keep_after_training(tmp_path: Path) -> None:
    adapter, _ = saved_adapter(tmp_path)
    model = lvpeft.from_pretrained(str(adapter), base_model=tiny_llava(), keep=0.125)
    tuner = lvpruning_tuner(model)
    assert tuner.peft_config["default"].resolve_schedule() == [0.525, 0.325, 0.125]
    with torch.no_grad():
        model(**INPUTS)
    assert tuner.pruning_stats.keep_ratios[-1] == pytest.approx(
        2 / 16, abs=1e-6
    )  # both samples: 16 per image
    assert tuner.set_keep(0.5) == [0.9, 0.7, 0.5]
    with pytest.raises(ValueError, match="keep must be"):
        tuner.set_keep(0.0)


def test_model_card(tmp_path: Path) -> None:
    adapter, _ = saved_adapter(tmp_path, pruner_dim=16)
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\n")
    header = card.split("---")[1]
    assert "library_name: peft" in header and "- lvpruning" in header
    assert "| 1 | 1 | 0.65 |" in card and "| 3 | 3 | 0.25 |" in card
    assert "FLOPs" in card and "fewer FLOPs" in card
    assert "lvpeft.from_pretrained" in card
    assert "the `lvpeft` recipe: exactly the inference budget" in card and "teacher ranking (1)" in card


def test_push_to_hub_uploads_adapter_and_card_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded: dict[str, object] = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploaded.update(
            repo_id=repo_id,
            files=sorted(p.name for p in folder.iterdir()),
            config=json.loads((folder / "adapter_config.json").read_text()),
            card=(folder / "README.md").read_text(),
        )
        return "https://example.invalid/commit"

    monkeypatch.setattr(
        "huggingface_hub.HfApi.create_repo", lambda self, repo_id, **k: type("R", (), {"repo_id": repo_id})()
    )
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", fake_upload_folder)
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25))
    model.push_to_hub("me/x", token="dummy", tags=["my-tag"])
    assert uploaded["repo_id"] == "me/x"
    assert uploaded["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert uploaded["config"]["peft_type"] == "LVPRUNING" and uploaded["config"]["keep"] == 0.25
    assert (
        "- lvpruning" in uploaded["card"]
        and "- my-tag" in uploaded["card"]
        and "| 3 | 3 | 0.25 |" in uploaded["card"]
    )


def test_decision_modules_are_the_active_adapters_modules_in_order() -> None:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25, layers=[1, 3]))
    model.add_adapter("other", LVPruningConfig(keep=0.5, layers=[2]))
    tuner = lvpruning_tuner(model)
    layers = model.get_base_model().model.language_model.layers
    assert tuner.decision_modules() == [
        layers[1].pruner.lvpruning_module["default"],
        layers[3].pruner.lvpruning_module["default"],
    ]
    assert tuner.decision_modules("other") == [layers[2].pruner.lvpruning_module["other"]]
    model.set_adapter("other")
    assert tuner.decision_modules() == tuner.decision_modules("other")
