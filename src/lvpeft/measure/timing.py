"""Timing primitives shared by `lvpeft bench` and the demo: interleaved rounds, paired speed-ups,
a `generate()`-style prefill, decode throughput and KV-cache size. Shapes: B batch, L prompt length."""

from __future__ import annotations

import inspect
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of `fn`, synchronised on a GPU."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000


def prefill(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    """One prefill as `generate()` runs it (fresh cache, `logits_to_keep=1`): (output, cache)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        out = model(**inputs, **cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
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
                elapsed = timed(run, device)
            if i >= warmup:
                times[name].append(elapsed)
    return times


def paired_speedup(base_ms: list[float], other_ms: list[float]) -> float:
    """Median over rounds of base/other, each round's two times taken back to back.

    Unlike the ratio of the two medians, it cancels a drift of the machine's speed between rounds.
    """
    return statistics.median(b / o for b, o in zip(base_ms, other_ms, strict=True))


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache`."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    name = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    return {name: cache}


def cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a `DynamicCache` holds."""
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def decode_rate(model: Any, inputs: dict[str, torch.Tensor], steps: int, device: torch.device) -> float:
    """Tokens per second of `steps` greedy decode steps after a prefill (batch tokens count each)."""
    out, cache = prefill(model, inputs)
    token = out.logits[:, -1:].argmax(-1)
    mask = inputs["attention_mask"]
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, **cache_kwarg(model, cache), use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
    sync(device)
    return steps * token.shape[0] / (time.perf_counter() - start)


def describe_machine(device: torch.device) -> str:
    """A one-line description of where the bench ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
