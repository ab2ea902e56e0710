"""`lvpeft flops`: the analytic prefill FLOPs of a LLaVA model, base vs pruned, on the command line.

The counting itself (conventions, per-part formulas, the estimate) is `lvpeft.tuner.flops`; this module
adds the model presets (`llava-1.5-7b`, built from configs, no download), the paper's schedule and
the printed table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig, PreTrainedConfig

from ..tuner.flops import FlopsReport, estimate_flops
from ..tuner.layer import PAPER_PRUNER_DIM

PRESETS: tuple[str, ...] = ("llava-1.5-7b",)
"""Model names `flops --model` accepts besides a local directory."""

_TERA = 1e12


def llava_1_5_7b_config() -> LlavaConfig:
    """The architecture of `llava-hf/llava-1.5-7b-hf`, built from configs only (no download).

    CLIP ViT-L/14 at 336 px (24 layers, width 1024, 16 heads, MLP 4096), projector 1024 -> 4096 ->
    4096, Vicuna-7B / Llama-2-7B decoder (32 layers, width 4096, 32 heads, MLP 11008, vocab 32064),
    features from the second-to-last CLIP layer with CLS dropped (576 image tokens).
    """
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def paper_schedule(keep: float, num_modules: int = 3, step: float = 0.2) -> list[float]:
    """The paper's progressive schedule ending at `keep`: [keep + 0.4, keep + 0.2, keep], capped at 1."""
    if not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}.")
    return [min(1.0, round(keep + step * (num_modules - 1 - i), 10)) for i in range(num_modules)]


def load_model_config(model: str) -> PreTrainedConfig:
    """A preset name (`llava-1.5-7b`) or a local directory holding a LLaVA `config.json`."""
    if model.lower() in PRESETS:
        return llava_1_5_7b_config()
    if not (Path(model) / "config.json").is_file():
        raise ValueError(
            f"--model {model!r} is neither a preset {list(PRESETS)} nor a directory with config.json."
        )
    config = AutoConfig.from_pretrained(model, local_files_only=True)
    if not hasattr(config, "vision_config") or not hasattr(config, "text_config"):
        raise ValueError(f"{model}/config.json is a {type(config).__name__}, not a LLaVA config.")
    return config


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _pruner(text: str) -> int | str | None:
    if text == PAPER_PRUNER_DIM:
        return text
    if text == "default":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'paper', 'default' or an integer width, got {text!r}"
        ) from None


def add_flops_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `flops` subcommand to an argparse subparsers object; its handler is `args.func`."""
    parser = subparsers.add_parser(
        "flops",
        help="Analytic prefill FLOPs of a LLaVA model, base vs pruned.",
        description="Analytic prefill FLOPs (1 image + T text tokens) of a LLaVA model, base vs pruned, "
        "decision modules included and reported separately. Matrix products only, 2 FLOPs per multiply-add.",
    )
    parser.add_argument(
        "--model", default="llava-1.5-7b", help="preset name (llava-1.5-7b) or a local dir with config.json"
    )
    parser.add_argument(
        "--layers",
        type=_int_list,
        default=None,
        help="module positions, e.g. 1,8,16 (default: the adapter's)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--schedule", type=_float_list, default=None, help="keep ratios, e.g. 0.5,0.3,0.1")
    group.add_argument(
        "--keep", type=float, default=None, help="final keep ratio; paper schedule keep+0.4, keep+0.2, keep"
    )
    parser.add_argument(
        "--pruner",
        type=_pruner,
        default=None,
        help="module width: 'default' (lvpeft's light module, d/8 but at least 64), 'paper' (C = d) or an "
        "integer C",
    )
    parser.add_argument("--text-tokens", type=int, default=30, help="language tokens T (default 30)")
    parser.add_argument("--images", type=int, default=1, help="images in the prompt (default 1)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.set_defaults(func=flops_command)
    return parser


def flops_command(args: argparse.Namespace) -> int:
    """Handler of `flops`: print a table (or JSON with `--json`); return the exit status."""
    config = load_model_config(args.model)
    schedule = args.schedule
    if args.keep is not None:
        schedule = paper_schedule(args.keep, len(args.layers) if args.layers else 3)
    if schedule is None:  # the adapter's default keep 0.1: the paper's trained setting, rho = 0.5
        schedule = paper_schedule(0.1, len(args.layers) if args.layers else 3)
    report = estimate_flops(
        config,
        text_tokens=args.text_tokens,
        layers=args.layers,
        schedule=schedule,
        pruner_dim=args.pruner,
        num_images=args.images,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(format_report(report))
    return 0


def format_report(report: FlopsReport) -> str:
    """A small human-readable table of a report."""
    rows = [("part", "base", "pruned")]
    for part in ("vision", "projector", "decoder", "lm_head", "pruner", "total"):
        base = getattr(report.base, part) / _TERA
        pruned = getattr(report.pruned, part) / _TERA
        rows.append((part, f"{base:.4f}", f"{pruned:.4f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>8}  {c:>8}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    kept = ", ".join(f"{k}" for k in report.kept_tokens)
    header = (
        f"TFLOPs, prefill of {report.vision_tokens} vision + {report.text_tokens} text tokens; "
        f"modules after layers {list(report.layers)} keeping {list(report.schedule)} -> [{kept}] "
        f"tokens, C = {report.pruner_dim}"
    )
    footer = (
        f"reduction {report.flops_reduction:.1%} (modules {report.pruner_tflops:.3f} TFLOPs, "
        f"{report.pruner_tflops / report.base_tflops:.1%} of base)"
    )
    return "\n".join([header, *lines, footer])
