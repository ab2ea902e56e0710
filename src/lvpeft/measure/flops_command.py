"""`lvpeft flops`: the analytic prefill FLOPs of a multimodal model, base vs pruned, on the command line.

The counting itself (conventions, per-part formulas, the estimate) is `lvpeft.tuner.flops`, with the
vision-token counts and vision-side FLOPs per family in `lvpeft.tuner.vision_tokens` and
`lvpeft.tuner.vision_flops`; this module adds the model presets (`lvpeft.measure.presets`: llava-1.5-7b,
llava-v1.6-mistral-7b, qwen2.5-vl-7b, gemma-3-4b, built from configs, no download), the paper's
schedule and the printed table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from ..tuner.flops import FlopsReport, estimate_flops
from ..tuner.layer import PAPER_PRUNER_DIM
from .presets import PRESET_CONFIGS, add_image_size_argument, llava_1_5_7b_config, preset_config

__all__ = ["PRESETS", "add_flops_command", "llava_1_5_7b_config", "load_model_config", "paper_schedule"]

PRESETS: tuple[str, ...] = tuple(PRESET_CONFIGS)
"""Model names `flops --model` accepts besides a local directory."""

_TERA = 1e12


def paper_schedule(keep: float, num_modules: int = 3, step: float = 0.2) -> list[float]:
    """The paper's progressive schedule ending at `keep`: [keep + 0.4, keep + 0.2, keep], capped at 1."""
    if not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}.")
    return [min(1.0, round(keep + step * (num_modules - 1 - i), 10)) for i in range(num_modules)]


def load_model_config(model: str) -> PreTrainedConfig:
    """A preset name (`PRESETS`) or a local directory holding a multimodal model's `config.json`."""
    if model.lower() in PRESETS:
        return preset_config(model)
    if not (Path(model) / "config.json").is_file():
        raise ValueError(
            f"--model {model!r} is neither a preset {list(PRESETS)} nor a directory with config.json."
        )
    config = AutoConfig.from_pretrained(model, local_files_only=True)
    if not hasattr(config, "vision_config") or not hasattr(config, "text_config"):
        raise ValueError(
            f"{model}/config.json is a {type(config).__name__}, not a LLaVA config (nor another "
            "vision-language config with a vision_config and a text_config)."
        )
    return config


def processor_pixel_bounds(model: str) -> dict[str, int]:
    """`min_pixels` / `max_pixels` of a local model directory's `preprocessor_config.json` (the Qwen-VL
    families' image processor bounds: top-level keys or `size.shortest_edge` / `size.longest_edge`), or {}."""
    data = _preprocessor_config(model)
    size = data.get("size") if isinstance(data.get("size"), dict) else {}
    bounds = {
        "min_pixels": data.get("min_pixels", size.get("shortest_edge") if "longest_edge" in size else None),
        "max_pixels": data.get("max_pixels", size.get("longest_edge")),
    }
    return {key: int(value) for key, value in bounds.items() if isinstance(value, int)}


def processor_settings(model: str, config: PreTrainedConfig) -> dict[str, int]:
    """The image-processor settings the vision-token count of `config`'s family depends on, read from a local
    model directory's `preprocessor_config.json` ({} where there is none): the Qwen-VL families' pixel
    bounds (`processor_pixel_bounds`), Idefics3 / SmolVLM's and Mistral3's `size.longest_edge` as
    `longest_edge`, InternVL / AyaVision's `max_patches` as `max_tiles`."""
    model_type = getattr(config, "model_type", None)
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        return processor_pixel_bounds(model)
    data = _preprocessor_config(model)
    size = data.get("size") if isinstance(data.get("size"), dict) else {}
    settings = {}
    if model_type in ("idefics3", "smolvlm", "mistral3"):
        settings["longest_edge"] = size.get("longest_edge")
    if model_type in ("internvl", "aya_vision"):
        settings["max_tiles"] = data.get("max_patches")
    return {key: value for key, value in settings.items() if isinstance(value, int)}


def _preprocessor_config(model: str) -> dict[str, Any]:
    path = Path(model) / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
        help="Analytic prefill FLOPs of a multimodal model, base vs pruned.",
        description="Analytic prefill FLOPs (images + T text tokens) of a multimodal model (LLaVA, "
        "LLaVA-NeXT, LLaVA-OneVision, VipLlava, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, PaliGemma, "
        "Idefics3, SmolVLM, Mistral3, InternVL, AyaVision), base vs pruned, "
        "decision modules included and reported separately. Matrix products only, 2 FLOPs per multiply-add.",
    )
    parser.add_argument(
        "--model",
        default="llava-1.5-7b",
        help=f"a preset ({', '.join(PRESETS)}) or a local dir with config.json (default llava-1.5-7b)",
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
    add_image_size_argument(parser)
    parser.add_argument(
        "--min-pixels", type=int, default=None, help="Qwen-VL families: the image processor's min_pixels"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="Qwen-VL families: the image processor's max_pixels (default: a local model's "
        "preprocessor_config.json, else the public checkpoints' 12845056; Qwen3-VL 16777216)",
    )
    parser.add_argument(
        "--longest-edge",
        type=int,
        default=None,
        help="Idefics3 / SmolVLM and Mistral3: the image processor's size['longest_edge'] (default: a local "
        "model's preprocessor_config.json, else 4 tower sides; Mistral3: the tower's image_size)",
    )
    parser.add_argument(
        "--max-tiles",
        type=int,
        default=None,
        help="InternVL / AyaVision: the image processor's max_patches (default: a local model's "
        "preprocessor_config.json, else 12)",
    )
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
    bounds = {} if args.model.lower() in PRESETS else processor_settings(args.model, config)
    for key in ("min_pixels", "max_pixels", "longest_edge", "max_tiles"):
        if getattr(args, key) is not None:
            bounds[key] = getattr(args, key)
    report = estimate_flops(
        config,
        text_tokens=args.text_tokens,
        layers=args.layers,
        schedule=schedule,
        pruner_dim=args.pruner,
        num_images=args.images,
        image_size=tuple(args.image_size) if args.image_size else None,
        **bounds,
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
    (height, width), (res_h, res_w) = report.image_size, report.resized_size
    header = (
        f"{report.family}, image {height} x {width} resized to {res_h} x {res_w}: "
        f"{report.vision_tokens_per_image} vision tokens per image\n"
        f"TFLOPs, prefill of {report.vision_tokens} vision + {report.text_tokens} text tokens; "
        f"modules after layers {list(report.layers)} keeping {list(report.schedule)} -> [{kept}] "
        f"tokens, C = {report.pruner_dim}"
    )
    footer = (
        f"reduction {report.flops_reduction:.1%} (modules {report.pruner_tflops:.3f} TFLOPs, "
        f"{report.pruner_tflops / report.base_tflops:.1%} of base)"
    )
    return "\n".join([header, *lines, footer])


def format_preset_table(keep: float = 0.1, text_tokens: int = 30) -> str:
    """A Markdown table of every preset at the paper's schedule ending at `keep` (lvpeft's light modules,
    default placement), for a 672 x 672 image and, where the count depends on the size, a 1080 x 1920 one:
    vision tokens, TFLOPs base and pruned (modules included), and the share of the base spent in the
    vision tower, which pruning does not touch (docs/performance.md holds it; a test keeps it current)."""
    rows = [
        "| preset | image | vision tokens | base TFLOPs | pruned TFLOPs | reduction | vision tower share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in PRESETS:
        counted = set()
        for size in ((672, 672), (1080, 1920)):
            report = estimate_flops(
                preset_config(name), text_tokens=text_tokens, schedule=paper_schedule(keep), image_size=size
            )
            if report.vision_tokens in counted:
                continue
            counted.add(report.vision_tokens)
            rows.append(
                f"| `{name}` | {size[0]} x {size[1]} | {report.vision_tokens:,} | {report.base_tflops:.2f} | "
                f"{report.pruned_tflops:.2f} | −{100 * report.flops_reduction:.1f} % | "
                f"{100 * report.base.vision / report.base.total:.0f} % |"
            )
    return "\n".join(rows)
