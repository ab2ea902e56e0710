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
from lvpeft.measure.breakdown import MODEL_STEPS, PRUNING_STEPS, format_breakdown
from lvpeft.measure.timing import interleaved_times, paired_speedup


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
