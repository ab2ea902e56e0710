"""Step 7 of the demo: what the adapter costs and saves on the test prompts: analytic FLOPs, measured
prefill time (base and pruned interleaved) and the machine it ran on."""

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
    }


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
