"""`lvpeft bench` runs and reports consistent quantities (timings themselves are not asserted)."""

from __future__ import annotations

import contextlib
import json
import statistics

import pytest
import torch

from helpers import tiny_llava
from lvpeft.cli import main
from lvpeft.measure.bench import run_bench
from lvpeft.measure.bench_models import build_preset, make_serve_inputs
from lvpeft.measure.breakdown import MODEL_STEPS, PRUNING_STEPS, format_breakdown
from lvpeft.measure.presets import preset_config
from lvpeft.measure.timing import interleaved_times, paired_speedup
from lvpeft.tuner.flops import estimate_flops


def test_bench_report_is_consistent() -> None:
    report = run_bench(tiny_llava(attn="sdpa"), keep=0.25, repeats=1, warmup=0, new_tokens=2, baselines=True)
    names = [v.name for v in report.variants]
    assert names == ["base", "lvpruning", "random", "uniform", "fastv"]
    base, pruned = report.variants[0], report.variants[1]
    # 30 text + 16 vision tokens; caches of 46, 40, 37, 34 tokens over the 4 layers
    assert pruned.kv_cache_bytes / base.kv_cache_bytes == pytest.approx((46 + 40 + 37 + 34) / (4 * 46))
    assert all(v.kv_cache_bytes == pruned.kv_cache_bytes for v in report.variants[2:])
    assert report.flops_speedup == pytest.approx(report.flops["base_tflops"] / report.flops["pruned_tflops"])
    assert report.prefill_speedup == pytest.approx(paired_speedup(base.prefill_ms_all, pruned.prefill_ms_all))
    assert all(v.prefill_ms > 0 and v.decode_tokens_per_s > 0 for v in report.variants)


def test_paired_speedup_cancels_drift_between_rounds() -> None:
    # the machine slows down 3x in the last round, and the pruned run of round 2 is disturbed: two
    # rounds of three say 2x, which the paired median keeps and the ratio of the medians loses
    base, pruned = [100.0, 110.0, 330.0], [50.0, 300.0, 165.0]
    assert paired_speedup(base, pruned) == pytest.approx(2.0)
    assert statistics.median(base) / statistics.median(pruned) == pytest.approx(110 / 165)
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])


def test_interleaved_times_runs_every_variant_once_per_round() -> None:
    calls: list[str] = []
    state = {"name": ""}

    def variant(name: str):
        @contextlib.contextmanager
        def context():
            state["name"] = name
            yield

        return context

    times = interleaved_times(
        {"a": variant("a"), "b": variant("b")},
        lambda: calls.append(state["name"]),
        repeats=3,
        warmup=1,
        device=torch.device("cpu"),
    )
    assert calls == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_bench_cli_json(tmp_path, capsys) -> None:
    tiny_llava(attn="sdpa").save_pretrained(tmp_path / "m")
    argv = ["bench", "--model", str(tmp_path / "m"), "--keep", "0.25", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--new-tokens", "2", "--text-tokens", "5", "--baselines", "all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"prefill_speedup", "flops_speedup", "kv_cache_ratio", "machine"} <= data.keys()
    assert {"random", "uniform", "fastv"} <= {row["name"] for row in data["variants"]}
    assert data["setting"]["vision_tokens"] == 16 and data["setting"]["text_tokens"] == 5


def test_breakdown_names_every_step_and_adds_up() -> None:
    report = run_bench(tiny_llava(attn="sdpa"), keep=0.25, repeats=1, warmup=0, new_tokens=1, breakdown=True)
    base, pruned = report.breakdown
    assert (base.name, pruned.name) == ("base", "lvpruning")
    for costs in (base, pruned):
        assert list(costs.steps) == [*MODEL_STEPS, *(f"lvpruning::{s}" for s in PRUNING_STEPS), "other"]
        assert len(costs.decoder_layers_ms) == 4 and all(ms > 0 for ms in costs.decoder_layers_ms)
        assert costs.steps["decoder layers"] == pytest.approx(sum(costs.decoder_layers_ms))
        assert sum(costs.steps.values()) == pytest.approx(costs.total_ms, rel=1e-6)
        assert costs.steps["vision tower"] > 0 and costs.steps["lm head"] > 0
    # the adapter's own steps run only when it is active (base: adapter disabled)
    for step in ("score", "select", "repack", "layer_inputs", "restore"):
        assert pruned.steps[f"lvpruning::{step}"] > 0 and base.steps[f"lvpruning::{step}"] == 0
    assert "lvpruning::score" in format_breakdown(report.breakdown)


# -- presets of other families (their token geometry, tiny layers) -----------------------------------------

PRESET_IMAGES = {  # a small image each, so that a CPU runs them in about a second
    "llava-1.5-7b": None,
    "llava-v1.6-mistral-7b": (336, 500),
    "qwen2.5-vl-7b": (224, 336),
    "gemma-3-4b": None,
}


def _refusal(model_type: str) -> str | None:
    from lvpeft.pruning.families import FAMILIES

    return next((f.refused for f in FAMILIES if model_type in f.model_types), None)


@pytest.mark.parametrize("name", list(PRESET_IMAGES))
def test_bench_runs_each_preset_shrunk(name: str) -> None:
    """Each preset's family with its real token counts: the bench's inputs hold as many placeholders as
    `lvpeft flops` counts, and pruning shrinks the KV cache (or the bench says why it cannot prune)."""
    config = preset_config(name)
    if _refusal(config.model_type):  # e.g. Gemma 3 while get_lvpruning_model refuses it
        with pytest.raises(ValueError, match=r"LVPruning does not prune yet.*lvpeft flops"):
            build_preset(name, "sdpa", torch.float32, shrink=True)
        return
    model = build_preset(name, "sdpa", torch.float32, shrink=True)
    size = PRESET_IMAGES[name]
    report = run_bench(model, keep=0.25, repeats=1, warmup=0, new_tokens=2, text_tokens=12, image_size=size)
    expected = estimate_flops(config, text_tokens=12, image_size=size, schedule=[0.25])
    assert report.setting["vision_tokens"] == expected.vision_tokens  # the full-size preset's count
    assert report.setting["family"] == expected.family
    assert report.kv_cache_ratio < 1
    assert report.flops_speedup == pytest.approx(report.flops["base_tflops"] / report.flops["pruned_tflops"])


def test_bench_cli_preset_and_image_size(monkeypatch, capsys) -> None:
    import functools

    from lvpeft.measure import bench

    monkeypatch.setattr(bench, "build_preset", functools.partial(bench.build_preset, shrink=True))
    argv = ["bench", "--preset", "qwen2.5-vl-7b", "--image-size", "224", "336", "--device", "cpu"]
    argv += ["--serve", "--serve-prompts", "2", "--serve-new-tokens", "2", "--serve-repeats", "1"]
    assert main([*argv, "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    setting = report["setting"]
    assert (setting["family"], setting["image_size"], setting["vision_tokens"]) == (
        "Qwen2.5-VL",
        [224, 336],
        96,
    )
    assert report["serve"]["setting"]["vision_tokens"] == 96  # the serving batch's images are that size too


def test_bench_says_when_a_preset_family_is_refused(monkeypatch, capsys) -> None:
    """A refused family is named before billions of random weights are built; `lvpeft flops` counts it."""
    import dataclasses

    from lvpeft.pruning import families

    refused = tuple(
        dataclasses.replace(f, refused="its own attention mask is not followed")
        if "gemma3" in f.model_types
        else f
        for f in families.FAMILIES
    )
    monkeypatch.setattr(families, "FAMILIES", refused)
    assert main(["bench", "--preset", "gemma-3-4b", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "--preset gemma-3-4b is a Gemma 3 model, which LVPruning does not prune yet" in error
    assert "its own attention mask is not followed" in error and "lvpeft flops" in error
    assert main(["flops", "--model", "gemma-3-4b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vision_tokens"] == 256


def test_serve_inputs_of_a_qwen_preset_are_left_padded_with_its_patches() -> None:
    model = build_preset("qwen2.5-vl-7b", "sdpa", torch.float32, shrink=True)
    inputs = make_serve_inputs(model, [3, 8], image_size=(224, 336))
    image = model.config.image_token_id
    assert inputs["input_ids"].shape == (2, 8 + 96)
    assert (inputs["input_ids"] == image).sum(1).tolist() == [96, 96]
    assert (
        inputs["attention_mask"].sum(1).tolist() == [3 + 96, 8 + 96] and inputs["attention_mask"][0, 0] == 0
    )
    assert inputs["pixel_values"].shape == (2 * 16 * 24, 3 * 2 * 14 * 14)
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 24]] * 2
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image).int())
