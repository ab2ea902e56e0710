"""Step 7 of the demo: what the adapter costs and saves on the test prompts: analytic FLOPs, measured
prefill time (base and pruned interleaved) and the machine it ran on; and the same comparison on a
model whose cost is shaped like LLaVA-1.5's (`llava_shaped_speed`), where pruning has the decoder's
FLOPs to save."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # types only
    from .questions import VQAExample


def prompt_text_tokens(processor: Any, examples: Sequence[VQAExample]) -> float:
    """Mean number of language (non-image) tokens in the test prompts (BOS and chat words included)."""
    from .tiny_model import build_prompts

    ids = processor.tokenizer(build_prompts(processor, [e.question for e in examples]))["input_ids"]
    image = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    return float(np.mean([sum(t != image for t in row) for row in ids]))


def flops_of(model: Any, text_tokens: float) -> dict[str, float]:
    """Analytic prefill FLOPs, base vs pruned, at the adapter's current schedule (`lvpeft.tuner.flops`)."""
    from ..tuner.model import lvpruning_tuner

    config = lvpruning_tuner(model).active_config
    report = config.estimate_flops(model.get_base_model().config, max(1, round(text_tokens)))
    return {
        "text_tokens": max(1, round(text_tokens)),
        "base_tflops": report.base_tflops,
        "pruned_tflops": report.pruned_tflops,
        "pruner_tflops": report.pruner_tflops,
        "speedup": report.base_tflops / report.pruned_tflops,
        "vision_share": vision_share(report),
    }


def vision_share(report: Any) -> float:
    """The vision tower's and projector's share of the base model's prefill FLOPs (a `FlopsReport`):
    the part of a prefill that pruning vision tokens inside the language model cannot reduce."""
    return (report.base.vision + report.base.projector) / (report.base_tflops * 1e12)


SPEED_MODELS: dict[str, str] = {
    "llava-1.5-shaped": "LLaVA-1.5-shaped random-weight model: `lvpeft bench`'s default model, LLaVA-1.5's "
    "token counts (576 vision + 30 text tokens) on a Llama decoder of 8 x 512 (LLaVA-1.5-7B: 32 x 4096) "
    "behind a 1-layer CLIP tower",
    "tiny": "tiny random-weight LLaVA (`lvpeft bench --preset tiny`'s architecture: 64 vision + 30 text "
    "tokens, decoder 4 x 64), a smoke-test stand-in",
}
"""`DemoSettings.speed_model` choices and how the report labels each."""
SPEED_SETTING_KEYS = (
    "keep",
    "layers",
    "schedule",
    "pruner_dim",
    "batch",
    "text_tokens",
    "vision_tokens",
    "new_tokens",
    "attn_implementation",
    "decoder",
)
"""What `llava_shaped_speed` reports of `run_bench`'s setting."""


def llava_shaped_speed(
    keep: float,
    scorer: str,
    name: str = "llava-1.5-shaped",
    repeats: int = 7,
    warmup: int = 2,
    new_tokens: int = 16,
) -> dict[str, Any]:
    """Measured prefill and `generate()`, base vs LVPruning vs the training-free `scorer`, on a
    random-weight model shaped like LLaVA-1.5 (`lvpeft.measure.bench.run_bench`, one process, batch 1).

    The tiny demo model's vision tower is a large part of its FLOPs, so pruning inside its language
    model saves little time there; this model's cost, like LLaVA-1.5-7B's, is nearly all decoder.
    Its decision modules have random weights (the time does not depend on their values).

    Args:
        keep: the final keep ratio, as the demo's adapter (modules at the default positions).
        scorer: a training-free scorer timed at the same positions and budget (`BASELINES` name).
        name: a `SPEED_MODELS` key.
        repeats, warmup: timed and untimed rounds of the prefill (base and pruned back to back);
            `generate()` runs `max(1, repeats // 2)` times per variant.
        new_tokens: tokens `generate()` adds (greedy, no end of sequence).

    Returns:
        A JSON-ready dict: `model` (the label), `setting`, `machine`, `flops` (with the vision share of
        this model and of LLaVA-1.5-7B itself), `variants` {name: prefill and generate ms, their speed-ups
        against the base, decode tokens/s, KV-cache bytes}.
    """
    from ..measure.bench import run_bench
    from ..measure.bench_models import TINY_CONFIG, build_default_model, build_llava
    from ..measure.flops_command import llava_1_5_7b_config
    from ..measure.timing import paired_speedup
    from ..tuner.flops import estimate_flops

    if name not in SPEED_MODELS:
        raise ValueError(f"unknown speed model {name!r}; expected one of {list(SPEED_MODELS)}")
    model = build_default_model() if name == "llava-1.5-shaped" else build_llava(**TINY_CONFIG)
    text_tokens = 30
    flops = estimate_flops(model.config, text_tokens=text_tokens)
    llava_7b = estimate_flops(llava_1_5_7b_config(), text_tokens=text_tokens)  # for the comparison
    bench = run_bench(
        model,
        keep=keep,
        text_tokens=text_tokens,
        new_tokens=new_tokens,
        warmup=warmup,
        repeats=repeats,
        baselines=[scorer],
    )
    base = bench.variants[0]
    variants = {
        v.name: {
            "prefill_ms": v.prefill_ms,
            "prefill_speedup": paired_speedup(base.prefill_ms_all, v.prefill_ms_all),
            "generate_ms": v.generate_ms,
            "generate_speedup": base.generate_ms / v.generate_ms,
            "decode_tokens_per_s": v.decode_tokens_per_s,
            "kv_cache_bytes": v.kv_cache_bytes,
        }
        for v in bench.variants
    }
    return {
        "model": SPEED_MODELS[name],
        "name": name,
        "scorer": scorer,
        "machine": bench.machine,
        "setting": {
            **{k: bench.setting[k] for k in SPEED_SETTING_KEYS},
            "repeats": repeats,
            "warmup": warmup,
        },
        "flops": {
            "base_tflops": bench.flops["base_tflops"],
            "pruned_tflops": bench.flops["pruned_tflops"],
            "speedup": bench.flops_speedup,
            "vision_share": vision_share(flops),
            "llava_1_5_7b_vision_share": vision_share(llava_7b),
        },
        "variants": variants,
    }


def best_scorer(accuracy: dict[str, float]) -> str:
    """The training-free scorer with the highest accuracy at the adapter's budget (the first on a tie),
    or "uniform" when none was evaluated."""
    return max(accuracy, key=accuracy.__getitem__) if accuracy else "uniform"


@torch.no_grad()
def time_prefill(
    model: Any, processor: Any, examples: Sequence[VQAExample], repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Median wall time of one prefill (forward over the prompts, cache on, last logits only),
    base (adapter disabled) and pruned interleaved so that machine load hits both alike; `speedup`
    is the median of the per-round ratios (`lvpeft.measure.timing.paired_speedup`)."""
    from ..measure.timing import interleaved_times, paired_speedup
    from .tiny_model import build_prompts

    inputs = processor(
        images=[e.image for e in examples],
        text=build_prompts(processor, [e.question for e in examples]),
        padding=True,
        return_tensors="pt",
    )
    variants = {"base": model.disable_adapter, "lvpruning": contextlib.nullcontext}
    times = interleaved_times(
        variants, lambda: model(**inputs, use_cache=True, logits_to_keep=1), repeats, warmup, model.device
    )
    return {
        "base": statistics.median(times["base"]),
        "lvpruning": statistics.median(times["lvpruning"]),
        "speedup": paired_speedup(times["base"], times["lvpruning"]),
        "batch": len(examples),
        "repeats": repeats,
        "all": times,
    }


def describe_machine() -> str:
    """One line: CPU, threads, library versions."""
    import transformers

    from ..measure.timing import describe_machine as bench_machine

    return (
        f"{bench_machine(torch.device('cpu'))}, {os.cpu_count()} CPUs visible, "
        f"Python {platform.python_version()}, transformers {transformers.__version__}"
    )
