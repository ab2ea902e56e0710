"""`benchmarks/gpu.sh`, the prepared GPU benchmark, runs end to end on a CPU in its smoke mode
(`--device cpu --tiny`) and writes BENCHMARKS.md with every section; its plan fits 8 minutes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "BENCHMARKS.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# lvpeft benchmarks: CPU")
    for heading in (
        "## Batch 1: prefill and generate",
        "## Batch 16: prefill and generate",
        "## Serving: 16 prompts × 3 new tokens",
        "## Notes",
    ):
        assert heading in text
    assert "Not measured" not in text
    assert "| device | CPU" in text and "transformers 5." in text and "torch 2." in text
    rows = [line for line in text.splitlines() if line.startswith(("| base |", "| lvpruning |", "| fastv |"))]
    assert len(rows) == 9  # three variants in each of the three tables
    raw = json.loads(out.with_suffix(".json").read_text())
    assert [s["setting"]["batch"] for s in raw["sections"]] == [1, 16]
    assert [v["name"] for v in raw["serve"]["variants"]] == ["base", "lvpruning", "fastv"]
    assert raw["serve"]["setting"]["prompts"] == 16


def test_plan_fits_the_budget_and_degrades_in_order() -> None:
    gpu = _driver()
    # what LLaVA-1.5-7B in bfloat16 costs on one H100 with HF transformers, roughly: prefill of one
    # 606-token prompt 45 ms, of 16 prompts 350 ms; a decode step 25 ms (batch 1) and 30 ms (batch 16)
    h100 = gpu.Calibration(prefill_s={1: 0.045, 16: 0.35}, step_s={1: 0.025, 16: 0.030})
    plan, estimate = gpu.choose_plan(h100, 576, budget_s=420 - 90)  # 90 s to import and build the model
    assert plan == gpu.PLANS[0] and estimate < 330
    # a machine three times slower gets fewer rounds, a hopeless one the leanest plan
    slow = gpu.Calibration(
        {b: 3 * t for b, t in h100.prefill_s.items()}, {b: 3 * t for b, t in h100.step_s.items()}
    )
    plan, estimate = gpu.choose_plan(slow, 576, budget_s=330)
    assert plan != gpu.PLANS[0] and estimate <= 330
    estimates = [gpu.estimate_s(p, h100, 576) for p in gpu.PLANS]
    assert estimates == sorted(estimates, reverse=True)
    assert gpu.choose_plan(slow, 576, budget_s=1)[0] == gpu.PLANS[-1]


def test_refuses_a_missing_gpu_clearly(capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _driver().main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bench_preset_and_named_baselines(capsys: pytest.CaptureFixture) -> None:
    from lvpeft.cli import main

    argv = ["bench", "--preset", "tiny", "--dtype", "bfloat16", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--new-tokens", "2", "--baselines", "fastv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["base", "lvpruning", "fastv"]
    assert data["setting"]["vision_tokens"] == 64 and data["setting"]["dtype"] == "bfloat16"
    assert main([*argv, "--baselines", "fastv,nope"]) == 2
    assert "unknown baseline scorer" in capsys.readouterr().err
