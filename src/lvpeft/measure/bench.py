"""`lvpeft bench`: measured cost of pruning, base vs pruned, in one process on the same inputs.

For a multimodal model (by default a LLaVA built from a config with LLaVA-1.5's token counts: 576 vision
tokens per image, at a width and depth a CPU runs in about a minute; `--preset llava-1.5-7b`,
`llava-v1.6-mistral-7b`, `qwen2.5-vl-7b` or `gemma-3-4b`: that architecture with random weights, for a GPU,
see benchmarks/gpu.sh; `--image-size H W` for the families whose token count depends on it) and one
LVPruning adapter
(random decision modules: speed does not depend on their values), it measures

- prefill latency: one forward over the prompt with a fresh KV cache, `logits_to_keep=1`, as
  `generate()` runs it; median of `--repeats` runs after `--warmup` runs, base and pruned
  interleaved so that drifting machine load hits both alike; the speed-up is the median of the
  per-round ratios base/pruned (each round times the two back to back);
- decode throughput: tokens per second of greedy steps that follow the prefill;
- end-to-end latency of `generate(max_new_tokens=--new-tokens)`;
- KV-cache bytes after prefill (exact: the sum of the cache tensors);
- peak memory of a prefill: `torch.cuda.max_memory_allocated` on a GPU (None on a CPU; `--serve`
  reports the peak tensor memory of `generate()` on either);
- the analytic FLOPs of the same run (`lvpeft.tuner.flops`), so that `prefill_speedup` can be read against
  `flops_speedup`;
- optionally the training-free baselines (`--baselines`, all or those named) at the same positions and budget;
- optionally (`--breakdown`) the milliseconds of each step of one prefill per variant: vision
  tower, projector, decoder layers, LM head and each of lvpeft's own steps (`lvpeft.measure.breakdown`);
- optionally (`--serve`) serving-shaped throughput: a batch of N prompts of mixed lengths generating M
  tokens each: tokens/s, time to first token, KV-cache bytes and peak memory (`lvpeft.measure.serve`).

The timing primitives are in `timing.py`, the default model in `bench_models.py`.
Reported as ratios against the base model measured in the same process, with the machine named.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..pruning.scorers import BASELINES
from ..tuner.config import LVPruningConfig
from ..tuner.flops import estimate_flops
from ..tuner.model import get_lvpruning_model, lvpruning_tuner
from .bench_models import PRESETS, build_default_model, build_preset, make_inputs
from .breakdown import StepCosts, format_breakdown, profile_prefill
from .presets import add_image_size_argument
from .serve import ServeReport, ServeSetting, format_serve, run_serve
from .timing import (
    cache_bytes,
    decode_rate,
    describe_machine,
    interleaved_times,
    paired_speedup,
    prefill,
    timed,
)


@dataclass
class VariantTiming:
    """Measurements of one variant (base, lvpruning, or a baseline scorer)."""

    name: str
    prefill_ms: float
    prefill_ms_all: list[float]
    decode_tokens_per_s: float
    generate_ms: float
    kv_cache_bytes: int
    peak_memory_mb: float | None = None


@dataclass
class BenchReport:
    """A bench run: the machine, the setting, every variant, and the headline ratios."""

    machine: str
    setting: dict[str, Any]
    variants: list[VariantTiming]
    flops: dict[str, float]
    prefill_speedup: float
    flops_speedup: float
    speedup_efficiency: float
    kv_cache_ratio: float
    decode_speedup: float
    generate_speedup: float
    notes: list[str] = field(default_factory=list)
    breakdown: list[StepCosts] = field(default_factory=list)
    serve: ServeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def run_bench(
    model: Any,
    *,
    keep: float = 0.1,
    layers: list[int] | None = None,
    pruner_dim: int | str | None = None,
    batch: int = 1,
    text_tokens: int = 30,
    new_tokens: int = 16,
    warmup: int = 3,
    repeats: int = 15,
    baselines: bool | Sequence[str] = False,
    breakdown: bool = False,
    serve: ServeSetting | None = None,
    image_size: tuple[int, int] | None = None,
) -> BenchReport:
    """Measure base vs pruned (and baselines) on `model` (see the module docstring); with `serve`,
    also the serving-shaped `generate()` of `lvpeft.measure.serve`. `baselines`: True for every
    training-free scorer of `BASELINES`, or the names of some (e.g. `["fastv"]`). `image_size`: (H, W)
    of the prompt's image (None: 672 x 672; it sets the token count of LLaVA-NeXT and Qwen2-VL models)."""
    device = next(model.parameters()).device
    peft_model = get_lvpruning_model(model, LVPruningConfig(keep=keep, layers=layers, pruner_dim=pruner_dim))
    peft_model.eval()
    tuner = lvpruning_tuner(peft_model)
    config = tuner.active_config
    inputs = make_inputs(model, batch, text_tokens, image_size=image_size)
    modules = len(config.layers)

    def as_base() -> Any:
        return peft_model.disable_adapter()

    variants: dict[str, Callable[[], Any]] = {"base": as_base, "lvpruning": contextlib.nullcontext}
    for name in _baseline_names(baselines):
        cls = BASELINES[name]
        variants[name] = lambda cls=cls: tuner.use_scorers([cls() for _ in range(modules)])

    prefill_times = interleaved_times(variants, lambda: prefill(peft_model, inputs), repeats, warmup, device)
    results, costs = [], []
    for name, ctx in variants.items():
        with ctx():
            _, cache = prefill(peft_model, inputs)
            decode = decode_rate(peft_model, inputs, new_tokens, device)
            with torch.no_grad():
                generate = statistics.median(
                    timed(
                        lambda: peft_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False),
                        device,
                    )
                    for _ in range(max(1, repeats // 2))
                )
            if breakdown:
                costs.append(profile_prefill(peft_model, lambda: prefill(peft_model, inputs), name))
            peak = None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                prefill(peft_model, inputs)
                peak = torch.cuda.max_memory_allocated(device) / 2**20
        results.append(
            VariantTiming(
                name=name,
                prefill_ms=statistics.median(prefill_times[name]),
                prefill_ms_all=prefill_times[name],
                decode_tokens_per_s=decode,
                generate_ms=generate,
                kv_cache_bytes=cache_bytes(cache),
                peak_memory_mb=peak,
            )
        )
    serve_report = run_serve(peft_model, variants, serve, image_size=image_size) if serve else None
    flops = estimate_flops(
        model.config,
        text_tokens=text_tokens,
        layers=config.layers,
        schedule=config.resolve_schedule(),
        pruner_dim=config.pruner_dim,
        pruner_heads=config.pruner_heads,
        pruner_blocks=config.pruner_blocks,
        pruner_ffn_mult=config.pruner_ffn_mult,
        image_size=image_size,
    )
    peft_model.unload()
    base, pruned = results[0], results[1]
    prefill_speedup = paired_speedup(base.prefill_ms_all, pruned.prefill_ms_all)
    flops_speedup = flops.base_tflops / flops.pruned_tflops
    return BenchReport(
        machine=describe_machine(device),
        setting={
            "keep": keep,
            "layers": config.layers,
            "schedule": config.resolve_schedule(),
            "pruner_dim": config.resolve_pruner_dim(model.config.text_config.hidden_size),
            "batch": batch,
            "text_tokens": text_tokens,
            "family": flops.family,
            "image_size": list(flops.image_size),
            "vision_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()) // batch,
            "new_tokens": new_tokens,
            "attn_implementation": model.config.text_config._attn_implementation,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "decoder": {
                k: getattr(model.config.text_config, k) for k in ("hidden_size", "num_hidden_layers")
            },
            "repeats": repeats,
            "warmup": warmup,
        },
        variants=results,
        flops={
            "base_tflops": flops.base_tflops,
            "pruned_tflops": flops.pruned_tflops,
            "pruner_tflops": flops.pruner_tflops,
        },
        prefill_speedup=prefill_speedup,
        flops_speedup=flops_speedup,
        speedup_efficiency=prefill_speedup / flops_speedup,
        kv_cache_ratio=pruned.kv_cache_bytes / base.kv_cache_bytes,
        decode_speedup=pruned.decode_tokens_per_s / base.decode_tokens_per_s,
        generate_speedup=base.generate_ms / pruned.generate_ms,
        notes=[
            "prefill = one forward over the prompt with logits_to_keep=1 (what generate() runs first)",
            "FLOPs cover the vision tower, projector, decoder, LM head and decision modules (lvpeft flops)",
        ],
        breakdown=costs,
        serve=serve_report,
    )


def format_report(report: BenchReport) -> str:
    """A short human-readable table."""
    s = report.setting
    lines = [
        f"{report.machine}; {s['family']}, decoder {s['decoder']}, {s['vision_tokens']} vision + "
        f"{s['text_tokens']} text "
        f"tokens, batch {s['batch']}, {s['attn_implementation']}, {s['dtype']}; "
        f"keep {s['keep']} {s['schedule']} before layers {s['layers']}, module width {s['pruner_dim']}",
        f"{'variant':<10} {'prefill ms':>11} {'decode tok/s':>13} {'generate ms':>12} {'KV cache MB':>12}",
    ]
    for v in report.variants:
        lines.append(
            f"{v.name:<10} {v.prefill_ms:>11.1f} {v.decode_tokens_per_s:>13.1f} {v.generate_ms:>12.1f} "
            f"{v.kv_cache_bytes / 2**20:>12.2f}"
        )
    lines.append(
        f"prefill speed-up {report.prefill_speedup:.2f}x vs FLOPs speed-up {report.flops_speedup:.2f}x "
        f"({100 * report.speedup_efficiency:.0f} % of it); KV cache x{report.kv_cache_ratio:.2f}; "
        f"decode x{report.decode_speedup:.2f}; generate x{report.generate_speedup:.2f}"
    )
    if report.breakdown:
        lines += ["", "per-step cost of one prefill (torch.profiler; lvpeft bench --breakdown):"]
        lines.append(format_breakdown(report.breakdown))
    if report.serve is not None:
        lines += ["", format_serve(report.serve)]
    return "\n".join(lines)


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `lvpeft bench` to the CLI."""
    parser = subparsers.add_parser("bench", help="measure prefill/decode latency, KV cache: base vs pruned")
    parser.add_argument(
        "--model", help="a local LLaVA folder or Hub id (default: a config-built LLaVA-1.5-shaped model)"
    )
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--layers", help="module positions, e.g. 1,8,16 (default: scaled to the depth)")
    parser.add_argument(
        "--pruner-dim",
        type=_pruner_dim,
        default=None,
        help="decision-module width: an integer, 'paper' (C = d) or, by default, the light module "
        "(d/8, >= 64)",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--repeats",
        type=int,
        default=15,
        help="timed rounds, each one prefill per variant back to back (medians and the median per-round "
        "speed-up are reported)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--baselines",
        nargs="?",
        const=",".join(BASELINES),
        default="",
        metavar="NAMES",
        help=f"also time the training-free scorers: all, or those named ({','.join(BASELINES)})",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="instead of --model: an architecture built with random weights, directly on --device in --dtype",
    )
    add_image_size_argument(parser)
    parser.add_argument(
        "--breakdown", action="store_true", help="also profile one prefill per variant: ms per step"
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also measure serving: one batch of prompts of mixed lengths, each generating a fixed number "
        "of tokens: tokens/s, time to first token, KV cache, peak memory",
    )
    # the --serve-* options default to None (ServeSetting's defaults apply) so that one given without
    # --serve is an error, not silently ignored
    parser.add_argument("--serve-prompts", type=int, help="--serve: prompts in the batch (N, default 16)")
    parser.add_argument(
        "--serve-new-tokens", type=int, help="--serve: tokens generated per prompt (M, default 64)"
    )
    parser.add_argument(
        "--serve-text-tokens",
        type=_int_pair,
        metavar="LEAST,MOST",
        help="--serve: the prompts' text lengths, spread evenly over this range (default 20,120)",
    )
    parser.add_argument("--serve-repeats", type=int, help="--serve: timed rounds (default 5)")
    parser.add_argument("--serve-warmup", type=int, help="--serve: untimed rounds first (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=bench_command)
    return parser


def _pruner_dim(text: str) -> int | str:
    if text == "paper":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'paper' or an integer width, got {text!r}") from None


def _baseline_names(baselines: bool | Sequence[str]) -> list[str]:
    """`run_bench`'s `baselines` as names of `BASELINES` (True: all of them), checked."""
    if isinstance(baselines, bool):
        return list(BASELINES) if baselines else []
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline scorer(s) {unknown}; expected names among {list(BASELINES)}.")
    return list(baselines)


def _int_pair(text: str) -> tuple[int, int]:
    try:
        least, most = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers LEAST,MOST, got {text!r}") from None
    return least, most


def bench_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft bench`."""
    serve_options = {
        field: getattr(args, f"serve_{field}")
        for field in ("prompts", "new_tokens", "text_tokens", "repeats", "warmup")
        if getattr(args, f"serve_{field}") is not None
    }
    if serve_options and not args.serve:
        given = ", ".join(f"--serve-{field.replace('_', '-')}" for field in serve_options)
        raise ValueError(f"{given} only apply to the serving measurement: add --serve (or drop them).")
    serve = ServeSetting(**serve_options) if args.serve else None  # checked before a model is loaded
    names = [name for name in args.baselines.split(",") if name]
    baselines = _baseline_names(True if names == ["all"] else names)
    if args.model and args.preset:
        raise ValueError("give --model or --preset, not both.")
    dtype = getattr(torch, args.dtype)
    if args.model:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(
            args.model, dtype=dtype, attn_implementation=args.attn, use_safetensors=True
        ).eval()
    elif args.preset:
        model = build_preset(args.preset, args.attn, dtype, args.device)
    else:
        model = build_default_model(args.attn, dtype)
    model = model.to(args.device)
    report = run_bench(
        model,
        keep=args.keep,
        layers=[int(x) for x in args.layers.split(",")] if args.layers else None,
        pruner_dim=args.pruner_dim,
        batch=args.batch,
        text_tokens=args.text_tokens,
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        baselines=baselines,
        breakdown=args.breakdown,
        serve=serve,
        image_size=tuple(args.image_size) if args.image_size else None,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
