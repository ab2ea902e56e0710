"""`lvpeft bench`: measured cost of pruning, base vs pruned, in one process on the same inputs.

For a LLaVA model (by default one built from a config with LLaVA-1.5's token counts: 576 vision
tokens per image, at a width and depth a CPU runs in about a minute) and one LVPruning adapter
(random decision modules: speed does not depend on their values), it measures

- prefill latency: one forward over the prompt with a fresh KV cache, `logits_to_keep=1`, as
  `generate()` runs it; median of `--repeats` runs after `--warmup` runs, base and pruned
  interleaved so that drifting machine load hits both alike; the speed-up is the median of the
  per-round ratios base/pruned (each round times the two back to back);
- decode throughput: tokens per second of greedy steps that follow the prefill;
- end-to-end latency of `generate(max_new_tokens=--new-tokens)`;
- KV-cache bytes after prefill (exact: the sum of the cache tensors);
- peak memory: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the peak resident memory of a
  fresh subprocess per variant (`--memory`, off by default because it reloads the model);
- the analytic FLOPs of the same run (`lvpeft.flops`), so that `prefill_speedup` can be read against
  `flops_speedup`;
- optionally the training-free baselines (`--baselines`) at the same positions and budget;
- optionally (`--breakdown`) the milliseconds of each step of one prefill per variant: vision
  tower, projector, decoder layers, LM head and each of lvpeft's own steps (`lvpeft.breakdown`).

Reported as ratios against the base model measured in the same process, with the machine named.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .breakdown import StepCosts, format_breakdown, profile_prefill

DEFAULT_CONFIG = dict(hidden=512, layers=8, heads=8, kv_heads=8, mlp=1376, vocab=32064, image=336, patch=14)


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def build_llava(
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    mlp: int,
    vocab: int,
    image: int,
    patch: int,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """A random LLaVA (CLIP vision tower of one small layer + Llama decoder) built from a config.

    The vision tower runs identically for base and pruned models and is not what pruning changes;
    `(image // patch) ** 2` vision tokens per image; the image placeholder is the last vocabulary id.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image,
            patch_size=patch,
        ),
        text_config=LlamaConfig(
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=vocab,
            max_position_embeddings=4096,
        ),
        image_token_id=vocab - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.config.text_config._attn_implementation = attn
    return model


def build_default_model(attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """`lvpeft bench`'s default model: LLaVA-1.5's token counts (576 vision tokens) and a small decoder,
    8 x 512 (SwiGLU 1376), vocabulary 32064 (`DEFAULT_CONFIG`)."""
    return build_llava(**DEFAULT_CONFIG, attn=attn, dtype=dtype, seed=seed)


def make_inputs(model: Any, batch: int, text_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of prompts: a few text tokens, one image, a question (`text_tokens` text tokens in all)."""
    config = model.config
    image = config.vision_config.image_size
    n_vision = (image // config.vision_config.patch_size) ** 2
    g = torch.Generator().manual_seed(seed)
    before = min(5, text_tokens)
    ids = torch.randint(3, config.text_config.vocab_size - 2, (batch, text_tokens + n_vision), generator=g)
    ids[ids == config.image_token_id] = 3  # text tokens are never the image placeholder
    ids[:, before : before + n_vision] = config.image_token_id
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, image, image, generator=g).to(device, dtype),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def _prefill(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        out = model(**inputs, **_cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
    return out, cache


def interleaved_times(
    variants: dict[str, Callable[[], Any]],
    run: Callable[[], Any],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Milliseconds of `run` under each variant, the variants interleaved round by round.

    Args:
        variants: name -> a callable returning the context manager that sets the variant up (e.g.
            `model.disable_adapter` for the base).
        run: the timed call (e.g. one prefill).
        repeats: timed rounds; each round runs every variant once, back to back.
        warmup: untimed rounds first.
        device: synchronised around each timed call when it is a GPU.

    Returns:
        name -> `repeats` times in ms, round i of every variant at index i.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, context in variants.items():
            with context():
                elapsed = _timed(run, device)
            if i >= warmup:
                times[name].append(elapsed)
    return times


def paired_speedup(base_ms: list[float], other_ms: list[float]) -> float:
    """Median over rounds of base/other, each round's two times taken back to back.

    Unlike the ratio of the two medians, it cancels a drift of the machine's speed between rounds.
    """
    return statistics.median(b / o for b, o in zip(base_ms, other_ms, strict=True))


def _cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache`."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    name = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    return {name: cache}


def _cache_bytes(cache: Any) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def _decode_rate(model: Any, inputs: dict[str, torch.Tensor], steps: int, device: torch.device) -> float:
    out, cache = _prefill(model, inputs)
    token = out.logits[:, -1:].argmax(-1)
    mask = inputs["attention_mask"]
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, **_cache_kwarg(model, cache), use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return steps * token.shape[0] / (time.perf_counter() - start)


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
    baselines: bool = False,
    breakdown: bool = False,
) -> BenchReport:
    """Measure base vs pruned (and baselines) on `model` (see the module docstring)."""
    from .config import LVPruningConfig
    from .flops import estimate_adapter_flops
    from .model import get_lvpruning_model, lvpruning_tuner
    from .scorers import BASELINES

    device = next(model.parameters()).device
    peft_model = get_lvpruning_model(model, LVPruningConfig(keep=keep, layers=layers, pruner_dim=pruner_dim))
    peft_model.eval()
    tuner = lvpruning_tuner(peft_model)
    config = tuner.active_config
    inputs = make_inputs(model, batch, text_tokens)
    modules = len(config.layers)

    def as_base() -> Any:
        return peft_model.disable_adapter()

    variants: dict[str, Callable[[], Any]] = {"base": as_base, "lvpruning": contextlib.nullcontext}
    if baselines:
        for name, cls in BASELINES.items():
            variants[name] = lambda cls=cls: tuner.use_scorers([cls() for _ in range(modules)])

    prefill = interleaved_times(variants, lambda: _prefill(peft_model, inputs), repeats, warmup, device)
    results, costs = [], []
    for name, ctx in variants.items():
        with ctx():
            _, cache = _prefill(peft_model, inputs)
            decode = _decode_rate(peft_model, inputs, new_tokens, device)
            with torch.no_grad():
                generate = statistics.median(
                    _timed(
                        lambda: peft_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False),
                        device,
                    )
                    for _ in range(max(1, repeats // 2))
                )
            if breakdown:
                costs.append(profile_prefill(peft_model, lambda: _prefill(peft_model, inputs), name))
            peak = None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                _prefill(peft_model, inputs)
                peak = torch.cuda.max_memory_allocated(device) / 2**20
        results.append(
            VariantTiming(
                name=name,
                prefill_ms=statistics.median(prefill[name]),
                prefill_ms_all=prefill[name],
                decode_tokens_per_s=decode,
                generate_ms=generate,
                kv_cache_bytes=_cache_bytes(cache),
                peak_memory_mb=peak,
            )
        )
    flops = estimate_adapter_flops(model.config, config, text_tokens)
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
    )


def describe_machine(device: torch.device) -> str:
    """A one-line description of where the bench ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def format_report(report: BenchReport) -> str:
    """A short human-readable table."""
    s = report.setting
    lines = [
        f"{report.machine}; decoder {s['decoder']}, {s['vision_tokens']} vision + {s['text_tokens']} text "
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
    parser.add_argument("--baselines", action="store_true", help="also time the training-free scorers")
    parser.add_argument(
        "--breakdown", action="store_true", help="also profile one prefill per variant: ms per step"
    )
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


def bench_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft bench`."""
    dtype = getattr(torch, args.dtype)
    if args.model:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(
            args.model, dtype=dtype, attn_implementation=args.attn, use_safetensors=True
        ).eval()
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
        baselines=args.baselines,
        breakdown=args.breakdown,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
