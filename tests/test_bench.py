"""`lvpeft bench` runs and reports consistent quantities (timings themselves are not asserted)."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_llava
from lvpeft.bench import run_bench
from lvpeft.breakdown import MODEL_STEPS, PRUNING_STEPS, format_breakdown
from lvpeft.cli import main


def test_bench_report_is_consistent() -> None:
    report = run_bench(tiny_llava(attn="sdpa"), keep=0.25, repeats=1, warmup=0, new_tokens=2, baselines=True)
    names = [v.name for v in report.variants]
    assert names == ["base", "lvpruning", "random", "uniform", "fastv"]
    base, pruned = report.variants[0], report.variants[1]
    # 30 text + 16 vision tokens; caches of 46, 40, 37, 34 tokens over the 4 layers
    assert pruned.kv_cache_bytes / base.kv_cache_bytes == pytest.approx((46 + 40 + 37 + 34) / (4 * 46))
    assert all(v.kv_cache_bytes == pruned.kv_cache_bytes for v in report.variants[2:])
    assert report.flops_speedup == pytest.approx(report.flops["base_tflops"] / report.flops["pruned_tflops"])
    assert report.prefill_speedup == pytest.approx(base.prefill_ms / pruned.prefill_ms)
    assert all(v.prefill_ms > 0 and v.decode_tokens_per_s > 0 for v in report.variants)


def test_bench_cli_json(tmp_path, capsys) -> None:
    tiny_llava(attn="sdpa").save_pretrained(tmp_path / "m")
    argv = ["bench", "--model", str(tmp_path / "m"), "--keep", "0.25", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--new-tokens", "2", "--text-tokens", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"prefill_speedup", "flops_speedup", "kv_cache_ratio", "machine"} <= data.keys()
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
