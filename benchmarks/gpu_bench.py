"""The prepared GPU benchmark behind `benchmarks/gpu.sh`: `lvpeft bench` on LLaVA-1.5-7B, written up.

On LLaVA-1.5-7B's architecture with random bfloat16 weights (`lvpeft bench --preset llava-1.5-7b`:
CLIP ViT-L/14-336, 576 vision tokens; Llama-2-7B decoder; sdpa), built once on the device, it runs
`lvpeft.measure.bench.run_bench` for the base model, LVPruning (keep 0.1, the default light modules)
and the FastV-style scorer at the same positions and budget:

- batch 1 and batch 16: prefill latency (interleaved rounds, paired speed-ups), decode tokens/s,
  `generate()` latency, KV-cache bytes, peak memory;
- serving: 16 prompts of mixed lengths generating 64 tokens each (`lvpeft bench --serve`).

It fits the run into `--budget-s` seconds (default 420, inside gpu.sh's 8-minute limit): after
building the model it times one base prefill and a few decode steps at batch 1 and 16, estimates
each plan of `PLANS` (richest first; the base model's costs bound the pruned ones) and runs the first
that fits. `BENCHMARKS.md` (and the raw reports in `BENCHMARKS.json` beside it) is rewritten after
each section, so a run stopped at the limit keeps what it measured.

    benchmarks/gpu.sh                          # one GPU: writes BENCHMARKS.md at the repository root
    benchmarks/gpu.sh --device cpu --tiny --out /tmp/B.md   # smoke run: a tiny model, seconds on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import lvpeft  # noqa: F401
except ImportError:  # a checkout that is not installed: its sources
    sys.path.insert(0, str(REPO / "src"))
KEEP = 0.1
TEXT_TOKENS = 30  # text tokens per prompt of the batch sections (one image each)
VARIANTS = ("base", "lvpruning", "fastv")
MARGIN = 1.25  # the estimate's allowance for the adapter's hooks, generate()'s loop and noise


@dataclass(frozen=True)
class Plan:
    """What one run measures: rounds, warm-up and new tokens of the batch sections, and serving.

    `serve_prompts` = 0 skips serving; `batches` are the batch sections' batch sizes.
    """

    name: str
    batches: tuple[int, ...] = (1, 16)
    repeats: int = 10
    warmup: int = 3
    new_tokens: int = 32
    serve_prompts: int = 16
    serve_new_tokens: int = 64
    serve_repeats: int = 5
    serve_warmup: int = 1


PLANS = (
    Plan("full", repeats=15),
    Plan("default rounds"),
    Plan("fewer rounds", repeats=6, warmup=2, serve_repeats=3),
    Plan("lean", repeats=3, warmup=1, new_tokens=16, serve_repeats=2, serve_new_tokens=32),
    Plan("no serving", repeats=3, warmup=1, new_tokens=16, serve_prompts=0),
    Plan("batch 1 only", batches=(1,), repeats=3, warmup=1, new_tokens=16, serve_prompts=0),
)
"""Richest first; the run takes the first whose estimate fits the budget (the last one regardless)."""

TINY_PLAN = Plan(
    "tiny smoke run", repeats=1, warmup=0, new_tokens=2, serve_new_tokens=3, serve_repeats=1, serve_warmup=0
)


@dataclass
class Calibration:
    """Seconds of one base-model prefill (vision tower included) and of one decode step, per batch size."""

    prefill_s: dict[int, float]
    step_s: dict[int, float]


@dataclass
class Run:
    """What BENCHMARKS.md says: the setting, and the reports measured so far (`lvpeft.measure.bench`)."""

    device: str
    software: str
    command: str
    date: str
    model: str
    adapter: str
    plan: Plan
    plan_note: str
    estimate_s: float
    json_name: str
    status: str = "running"
    sections: list[Any] = field(default_factory=list)  # BenchReport per batch size, in plan order
    serve: Any = None  # the ServeReport, once measured


def calibrate(model: Any, batches: tuple[int, ...], device: torch.device) -> Calibration:
    """Time one prefill (after a warm-up) and 4 decode steps of the bare model at each batch size."""
    from lvpeft.measure.bench_models import make_inputs
    from lvpeft.measure.timing import decode_rate, prefill, timed

    prefill_s, step_s = {}, {}
    for batch in batches:
        inputs = make_inputs(model, batch, TEXT_TOKENS)
        prefill(model, inputs)
        prefill_s[batch] = timed(lambda inputs=inputs: prefill(model, inputs), device) / 1000
        step_s[batch] = batch / decode_rate(model, inputs, 4, device)
        del inputs
    return Calibration(prefill_s, step_s)


def estimate_s(plan: Plan, cal: Calibration, vision_tokens: int) -> float:
    """Seconds `plan` takes on the calibrated model, by how `run_bench` and `run_serve` spend their calls.

    Per variant and batch section: (warmup + repeats) timed prefills, one prefill for the KV cache, one
    for the peak memory, `decode_rate` (a prefill + new_tokens steps) and max(1, repeats // 2)
    `generate()` calls. Serving: (warmup + repeats + 1) `generate()` calls per variant of prompts up to
    120 text tokens long (prefill scaled by length from batch 16's).
    """
    total = 0.0
    for batch in plan.batches:
        p, d, n = cal.prefill_s[batch], cal.step_s[batch], plan.new_tokens
        generate = p + (n - 1) * d
        per_variant = (plan.warmup + plan.repeats + 2) * p + p + n * d + max(1, plan.repeats // 2) * generate
        total += len(VARIANTS) * per_variant
    if plan.serve_prompts:
        batch = max(cal.prefill_s)
        scale = (plan.serve_prompts / batch) * (vision_tokens + 120) / (vision_tokens + TEXT_TOKENS)
        generate = cal.prefill_s[batch] * scale + (plan.serve_new_tokens - 1) * cal.step_s[batch]
        total += len(VARIANTS) * (plan.serve_warmup + plan.serve_repeats + 1) * generate
    return MARGIN * total


def choose_plan(cal: Calibration, vision_tokens: int, budget_s: float) -> tuple[Plan, float]:
    """The first of `PLANS` whose estimate fits `budget_s` (else the leanest), with its estimate."""
    for plan in PLANS:
        estimate = estimate_s(plan, cal, vision_tokens)
        if estimate <= budget_s:
            return plan, estimate
    return PLANS[-1], estimate_s(PLANS[-1], cal, vision_tokens)


def device_line(device: torch.device) -> str:
    """The device by name (`torch.cuda.get_device_name`), with its memory and CUDA version on a GPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{torch.cuda.get_device_name(device)} ({props.total_memory / 2**30:.0f} GiB), "
            f"CUDA {torch.version.cuda}"
        )
    from lvpeft.measure.timing import describe_machine

    return describe_machine(device).split(", torch")[0]


def software_line() -> str:
    import transformers

    import lvpeft

    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, lvpeft {lvpeft.__version__}, "
        f"Python {platform.python_version()}"
    )


def _ms(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _flops(tera: float) -> str:
    return f"{tera:.2f} TFLOPs" if tera >= 0.1 else f"{tera * 1000:.3g} GFLOPs"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def render(run: Run) -> str:
    """BENCHMARKS.md from what the run has measured so far."""
    lines = [
        f"# lvpeft benchmarks: {run.device}",
        "",
        f"Measured by `{run.command}` on {run.date}; {run.status}.",
        "",
        "| | |",
        "|---|---|",
        f"| device | {run.device} |",
        f"| software | {run.software} |",
        f"| model | {run.model} |",
        f"| adapter | {run.adapter} |",
        "| FastV-style | the training-free FastV scorer (the last token's attention) at the same positions "
        "and budget |",
        f"| plan | {run.plan_note} |",
    ]
    done = {report.setting["batch"]: report for report in run.sections}
    for batch in run.plan.batches:
        lines += ["", f"## Batch {batch}: prefill and generate", ""]
        lines += _batch_section(done[batch]) if batch in done else ["Not measured: the run stopped first."]
    if run.plan.serve_prompts:
        lines += [
            "",
            f"## Serving: {run.plan.serve_prompts} prompts × {run.plan.serve_new_tokens} new tokens",
            "",
        ]
        lines += (
            _serve_section(run.serve) if run.serve is not None else ["Not measured: the run stopped first."]
        )
    notes = [*(run.sections[0].notes if run.sections else []), *(run.serve.notes if run.serve else [])]
    notes += [
        "random weights: the timings depend on shapes, not values; the decision modules are random too, "
        "so which tokens they keep is arbitrary (accuracy: docs/evaluation.md)",
        f"raw reports: `{run.json_name}` beside this file",
    ]
    lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _batch_section(report: Any) -> list[str]:
    """The table of one `run_bench` report (`lvpeft.measure.bench.BenchReport`) and its FLOPs line."""
    from lvpeft.measure.timing import paired_speedup

    s, base, flops = report.setting, report.variants[0], report.flops
    lines = [
        f"{s['vision_tokens']} vision + {s['text_tokens']} text tokens per prompt; {s['repeats']} timed "
        f"rounds after {s['warmup']} warm-up, the variants interleaved in each; generate = "
        f"{s['new_tokens']} new tokens, greedy. Speed-up: median of the per-round ratios base / variant.",
        "",
        "| variant | prefill ms | prefill speed-up | decode tok/s | generate ms | KV cache MiB "
        "| peak MiB (prefill, weights incl.) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report.variants:
        speedup = paired_speedup(base.prefill_ms_all, v.prefill_ms_all)
        lines.append(
            f"| {v.name} | {_ms(v.prefill_ms)} | {_x(speedup)} | {_ms(v.decode_tokens_per_s)} "
            f"| {_ms(v.generate_ms)} | {_ms(v.kv_cache_bytes / 2**20)} | {_ms(v.peak_memory_mb)} |"
        )
    return [
        *lines,
        "",
        f"Analytic prefill FLOPs per prompt (`lvpeft flops`): base {_flops(flops['base_tflops'])}, "
        f"LVPruning {_flops(flops['pruned_tflops'])} (modules {_flops(flops['pruner_tflops'])}): "
        f"{report.flops_speedup:.2f}× fewer; the measured LVPruning prefill speed-up is "
        f"{100 * report.speedup_efficiency:.0f} % of that.",
    ]


def _serve_section(serve: Any) -> list[str]:
    """The table of a `run_serve` report (`lvpeft.measure.serve.ServeReport`)."""
    from lvpeft.measure.timing import paired_speedup

    s, base = serve.setting, serve.variants[0]
    lengths = s["text_tokens"]
    lines = [
        f"One batch of {s['prompts']} prompts, {min(lengths)}–{max(lengths)} text + {s['vision_tokens']} "
        f"vision tokens, left padded to {s['padded_prompt_tokens']}; greedy, exactly {s['new_tokens']} "
        f"tokens each; {s['repeats']} rounds after {s['warmup']} warm-up. Speed-up: of tokens/s.",
        "",
        "| variant | tokens/s | speed-up | TTFT ms | decode tok/s | KV cache MiB "
        "| peak MiB (above the weights) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in serve.variants:
        speedup = paired_speedup(base.generate_ms_all, v.generate_ms_all)
        lines.append(
            f"| {v.name} | {_ms(v.tokens_per_s)} | {_x(speedup)} | {_ms(v.ttft_ms)} "
            f"| {_ms(v.decode_tokens_per_s)} | {_ms(v.kv_cache_bytes / 2**20)} | {_ms(v.peak_memory_mb)} |"
        )
    return lines


def write(run: Run, out: Path) -> None:
    """BENCHMARKS.md at `out` and the raw reports beside it (`.json`)."""
    out.write_text(render(run))
    raw = {
        **{k: v for k, v in asdict(run).items() if k not in ("sections", "serve")},
        "sections": [report.to_dict() for report in run.sections],
        "serve": asdict(run.serve) if run.serve is not None else None,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Build, calibrate, choose a plan, measure section by section; 0, 2 (no GPU) or 124 (stopped)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset and a minimal plan (smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from lvpeft.measure.bench import run_bench
    from lvpeft.measure.bench_models import build_preset

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; use --device cpu --tiny for the smoke run", file=sys.stderr)
        return 2
    preset = "tiny" if args.tiny else "llava-1.5-7b"
    model = build_preset(preset, "sdpa", torch.bfloat16, device)
    config = model.config
    vision_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    built_s = time.perf_counter() - start
    cal = calibrate(model, (1, 16), device)
    spent = time.perf_counter() - start
    if args.tiny:
        plan, estimate = TINY_PLAN, estimate_s(TINY_PLAN, cal, vision_tokens)
    else:
        plan, estimate = choose_plan(cal, vision_tokens, args.budget_s - spent - 15)
    print(
        f"gpu_bench: {preset} built in {built_s:.0f} s; base prefill "
        + ", ".join(f"{1000 * t:.0f} ms at batch {b}" for b, t in cal.prefill_s.items())
        + "; decode step "
        + ", ".join(f"{1000 * t:.0f} ms at batch {b}" for b, t in cal.step_s.items())
        + f"; plan {plan.name!r}, estimated {estimate:.0f} s",
        flush=True,
    )
    run = Run(
        device=device_line(device),
        software=software_line(),
        command=" ".join(["benchmarks/gpu.sh", *(sys.argv[1:] if argv is None else argv)]),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        model=describe_model(model, preset),
        adapter=f"LVPruning keep {KEEP}, the default placement and light modules, random weights",
        plan=plan,
        plan_note=(
            f"{plan.name!r}: {plan.repeats} rounds after {plan.warmup} warm-up, {plan.new_tokens} new tokens"
            + (
                f"; serving {plan.serve_repeats} rounds after {plan.serve_warmup} warm-up"
                if plan.serve_prompts
                else "; no serving"
            )
            + f". Estimated {estimate:.0f} s from a calibration of the base model (built in {built_s:.0f} s)"
        ),
        estimate_s=estimate,
        json_name=args.out.with_suffix(".json").name,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    code = 0
    try:
        for batch in plan.batches:
            last = batch == plan.batches[-1]
            report = run_bench(
                model,
                keep=KEEP,
                batch=batch,
                text_tokens=TEXT_TOKENS,
                new_tokens=plan.new_tokens,
                warmup=plan.warmup,
                repeats=plan.repeats,
                baselines=list(VARIANTS[2:]),
                serve=serve_setting(plan) if last else None,  # serving rides on the last section
            )
            s = report.setting
            run.adapter = (
                f"LVPruning keep {s['keep']}: keep schedule {s['schedule']} after the modules before decoder "
                f"layers {s['layers']}, light modules of width {s['pruner_dim']}, random weights"
            )
            run.sections.append(report)
            run.serve = report.serve
            run.status = f"{time.perf_counter() - start:.0f} s so far"
            write(run, args.out)
            print(f"gpu_bench: batch {batch} done at {time.perf_counter() - start:.0f} s", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        run.status = f"the run took {time.perf_counter() - start:.0f} s (budget {args.budget_s:.0f} s)"
    except KeyboardInterrupt:
        run.status = f"**stopped after {time.perf_counter() - start:.0f} s** (the time limit)"
        code = 124
    write(run, args.out)
    print(f"gpu_bench: wrote {args.out} ({run.status})", flush=True)
    return code


def serve_setting(plan: Plan) -> Any:
    """The plan's `lvpeft.measure.serve.ServeSetting`, or None without serving."""
    from lvpeft.measure.serve import ServeSetting

    if not plan.serve_prompts:
        return None
    return ServeSetting(
        prompts=plan.serve_prompts,
        new_tokens=plan.serve_new_tokens,
        repeats=plan.serve_repeats,
        warmup=plan.serve_warmup,
    )


def describe_model(model: Any, preset: str) -> str:
    """One line: the preset's architecture, dtype and attention."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    tokens = (vision.image_size // vision.patch_size) ** 2
    name = "LLaVA-1.5-7B's architecture" if preset == "llava-1.5-7b" else "a tiny LLaVA (smoke run)"
    return (
        f"{name}: CLIP {vision.num_hidden_layers} × {vision.hidden_size} at {vision.image_size} px "
        f"({tokens} vision tokens), Llama decoder {text.num_hidden_layers} × {text.hidden_size} (MLP "
        f"{text.intermediate_size}, vocabulary {text.vocab_size}); random bfloat16 weights, sdpa"
    )


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # gpu.sh's time limit: written up like Ctrl-C
    sys.exit(main())
