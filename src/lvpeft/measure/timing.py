"""Timing primitives shared by `lvpeft bench` and the demo: interleaved rounds, paired speed-ups,
a `generate()`-style prefill, decode throughput, KV-cache size and peak tensor memory.
Shapes: B batch, L prompt length."""

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


def decode_positions(model: Any, mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the last token of each row of `mask` (B, L), as `generate()` passes them: (B, 1), or
    (3, B, 1) with the prefill's `rope_deltas` added for the Qwen2-VL family's M-RoPE (whose forward, given
    only the mask, would compute positions for all L tokens)."""
    positions = (mask.long().cumsum(-1) - 1)[:, -1:]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    deltas = getattr(getattr(base, "model", None), "rope_deltas", None)
    if deltas is None:
        return positions
    return (positions + deltas.to(positions.device)).unsqueeze(0).expand(3, -1, -1)


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
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=decode_positions(model, mask),
                **cache_kwarg(model, cache),
                use_cache=True,
            )
            token = out.logits[:, -1:].argmax(-1)
    sync(device)
    return steps * token.shape[0] / (time.perf_counter() - start)


def peak_memory(run: Callable[[], Any], device: torch.device) -> tuple[float | None, float | None]:
    """Peak tensor memory of one call of `run`, in MiB: (above what was live when it started, total).

    On a GPU both come from the caching allocator's counters (`torch.cuda.max_memory_allocated`,
    less `memory_allocated` before the call for the first). On a CPU, where torch keeps no such
    counter, the first is read from `torch.profiler`'s memory events (every allocation and free of
    torch's CPU allocator, summed in time order) and the total is None: the weights and other tensors
    that were live before the call are not seen. Neither counts allocator caching, oneDNN scratch
    buffers or the Python heap. The profiler slows `run` down; time it separately.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return (peak - before) / 2**20, peak / 2**20
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:  # a torch without the profiler's raw events: no honest CPU figure
        return None, None
    events = sorted(
        (e for e in results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / 2**20, None


def describe_machine(device: torch.device) -> str:
    """A one-line description of where the bench ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
