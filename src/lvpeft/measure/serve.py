"""`lvpeft bench --serve`: serving-shaped throughput, base vs pruned, where the smaller KV cache pays.

One batch of N prompts of mixed text lengths (spread evenly over a range, shuffled, left padded as a
processor pads them), each with one image, and greedy `generate()` of exactly M new tokens per prompt
(`min_new_tokens = max_new_tokens = M`, so EOS cannot end a row early; the image placeholder is
suppressed, as a trained model never emits it). Per variant (base, LVPruning, the training-free
scorers with `--baselines`) it measures

- tokens/s: N * M generated tokens over the wall time of the whole `generate()` call (vision tower,
  prefill, M - 1 decode steps, the sampling loop);
- time to first token (TTFT): from the call of `generate()` until it hands the batch's first new
  tokens to a streamer, which it does as soon as they are picked (on a GPU the copy to the host
  synchronises): the vision tower, the prefill of the whole batch and the first greedy pick;
- decode tokens/s: the N * (M - 1) later tokens over the time after the first token;
- KV-cache bytes at the end of generation: exact, the sum of the cache tensors (every layer holds
  the padded prompt and M - 1 generated tokens; a pruned layer only the vision tokens it kept);
- peak memory: the peak tensor memory `generate()` allocates above what was live before it (the
  weights), `timing.peak_memory`: the GPU allocator's counters, or on a CPU the profiler's memory
  events, in one extra, untimed call per variant (which also checks that every row got M tokens).

The timed calls run in rounds, each running every variant once back to back in one process, so that
a drift of the machine's speed hits all alike; the speed-ups are medians of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tuner.model import lvpruning_tuner
from .bench_models import make_serve_inputs, serve_text_lengths
from .timing import cache_bytes, cache_kwarg, paired_speedup, peak_memory, sync


@dataclass(frozen=True)
class ServeSetting:
    """What `--serve` runs: `prompts` (N) prompts with text lengths spread over `text_tokens` =
    (least, most), `new_tokens` (M) generated per prompt, `repeats` timed rounds after `warmup`."""

    prompts: int = 16
    new_tokens: int = 64
    text_tokens: tuple[int, int] = (20, 120)
    repeats: int = 5
    warmup: int = 1

    def __post_init__(self) -> None:
        checks = {
            "prompts (--serve-prompts, the batch of prompts N)": (self.prompts, 1),
            "new_tokens (--serve-new-tokens, tokens generated per prompt M)": (self.new_tokens, 1),
            "repeats (--serve-repeats)": (self.repeats, 1),
            "warmup (--serve-warmup)": (self.warmup, 0),
        }
        for name, (value, least) in checks.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"serve {name} must be an integer >= {least}, got {value!r}.")
        pair = self.text_tokens
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
            or not 1 <= pair[0] <= pair[1]
        ):
            raise ValueError(
                "serve text_tokens (--serve-text-tokens LEAST,MOST) must be two integers with "
                f"1 <= LEAST <= MOST, got {self.text_tokens!r}."
            )


@dataclass
class ServeVariant:
    """One variant's serving measurements (times in ms, medians over the rounds).

    Attributes:
        tokens_per_s: generated tokens (N * M, counted) per second of the whole `generate()` call.
        ttft_ms: time to the batch's first new tokens.
        decode_tokens_per_s: the N * (M - 1) later tokens per second after the first token (None if M = 1).
        kv_cache_bytes: the cache at the end of generation.
        peak_memory_mb: peak tensor memory of `generate()` above what was live before it (MiB).
        peak_memory_total_mb: the device's peak allocated memory, weights included (GPU only).
        generated_tokens: new tokens of the checked call, summed over the rows (before any EOS).
        row_tokens: new tokens of each row of the checked call (before any EOS).
        keep_ratios: per decision module, the fraction of vision tokens kept ([] unpruned).
    """

    name: str
    tokens_per_s: float
    ttft_ms: float
    decode_tokens_per_s: float | None
    generate_ms: float
    generate_ms_all: list[float]
    ttft_ms_all: list[float]
    kv_cache_bytes: int
    peak_memory_mb: float | None
    peak_memory_total_mb: float | None
    generated_tokens: int
    row_tokens: list[int]
    keep_ratios: list[float]


@dataclass
class ServeReport:
    """The serving measurement: setting, variants (the base first) and ratios of the second to the base.

    `tokens_per_s_speedup`, `ttft_speedup` and `decode_speedup` are medians of per-round ratios
    (> 1: the pruned model is faster); `kv_cache_ratio` and `peak_memory_ratio` are pruned / base.
    """

    setting: dict[str, Any]
    variants: list[ServeVariant]
    tokens_per_s_speedup: float
    ttft_speedup: float
    decode_speedup: float | None
    kv_cache_ratio: float
    peak_memory_ratio: float | None
    notes: list[str] = field(default_factory=list)


class _FirstToken:
    """A `generate()` streamer that notes when the first new tokens arrive (the first put is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_serve(
    peft_model: Any,
    variants: dict[str, Callable[[], Any]],
    setting: ServeSetting,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
) -> ServeReport:
    """Measure serving-shaped `generate()` under each variant (see the module docstring).

    Args:
        peft_model: an LVPruning PEFT model in eval mode.
        variants: name -> a callable returning the context manager that sets the variant up; the first
            is the base the ratios compare against, the second the pruned model they describe.
        setting: the batch, the tokens to generate and the rounds.
        seed: seeds the prompts' lengths, tokens and pixels.
        image_size: every prompt image's (H, W) in pixels (None: 672 x 672), as `lvpeft bench --image-size`.
    """
    device = next(peft_model.parameters()).device
    config = peft_model.get_base_model().config
    lengths = serve_text_lengths(setting.prompts, setting.text_tokens, seed)
    inputs = make_serve_inputs(peft_model.get_base_model(), lengths, seed, image_size)
    m = setting.new_tokens
    pad = config.text_config.pad_token_id
    options = dict(
        max_new_tokens=m,
        min_new_tokens=m,
        do_sample=False,
        suppress_tokens=[config.image_token_id],
        pad_token_id=0 if pad is None else pad,
    )

    def generate(streamer: _FirstToken | None = None) -> tuple[torch.Tensor, Any]:
        from transformers import DynamicCache

        cache = DynamicCache(config=config.get_text_config())
        with torch.no_grad():
            out = peft_model.generate(
                **inputs, **options, **cache_kwarg(peft_model, cache), streamer=streamer
            )
        return out, cache

    def timed_generate() -> tuple[float, float]:
        streamer = _FirstToken()
        sync(device)
        start = time.perf_counter()
        generate(streamer)
        sync(device)
        end = time.perf_counter()
        if streamer.first is None:
            raise RuntimeError("generate() produced no new token: cannot time the first one.")
        return (end - start) * 1000, (streamer.first - start) * 1000

    total: dict[str, list[float]] = {name: [] for name in variants}
    first: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(setting.warmup + setting.repeats):
        for name, context in variants.items():
            with context():
                total_ms, first_ms = timed_generate()
            if i >= setting.warmup:
                total[name].append(total_ms)
                first[name].append(first_ms)

    tuner = lvpruning_tuner(peft_model)
    eos = _eos_ids(peft_model)
    prompt_length = inputs["input_ids"].shape[1]
    n = setting.prompts
    results = []
    held: list[tuple[torch.Tensor, Any]] = []  # the checked call's (sequences, cache)
    for name, context in variants.items():
        with context():
            peak, peak_total = peak_memory(lambda: held.append(generate()), device)
            keep_ratios = list(tuner.pruning_stats.keep_ratios)
        out, cache = held.pop()
        rows = _row_tokens(out[:, prompt_length:], eos)
        generate_ms, ttft_ms = statistics.median(total[name]), statistics.median(first[name])
        decode_s = statistics.median((t - f) / 1000 for t, f in zip(total[name], first[name]))
        results.append(
            ServeVariant(
                name=name,
                tokens_per_s=sum(rows) / (generate_ms / 1000),
                ttft_ms=ttft_ms,
                decode_tokens_per_s=(sum(rows) - n) / decode_s if m > 1 else None,
                generate_ms=generate_ms,
                generate_ms_all=total[name],
                ttft_ms_all=first[name],
                kv_cache_bytes=cache_bytes(cache),
                peak_memory_mb=peak,
                peak_memory_total_mb=peak_total,
                generated_tokens=sum(rows),
                row_tokens=rows,
                keep_ratios=keep_ratios,
            )
        )
        del out, cache
    base, pruned = results[0], results[1]
    base_decode = [t - f for t, f in zip(base.generate_ms_all, base.ttft_ms_all)]
    pruned_decode = [t - f for t, f in zip(pruned.generate_ms_all, pruned.ttft_ms_all)]
    return ServeReport(
        setting={
            "prompts": n,
            "new_tokens": m,
            "text_tokens": lengths,
            "vision_tokens": int((inputs["input_ids"][0] == config.image_token_id).sum()),
            "padded_prompt_tokens": prompt_length,
            "repeats": setting.repeats,
            "warmup": setting.warmup,
        },
        variants=results,
        tokens_per_s_speedup=paired_speedup(base.generate_ms_all, pruned.generate_ms_all),
        ttft_speedup=paired_speedup(base.ttft_ms_all, pruned.ttft_ms_all),
        decode_speedup=paired_speedup(base_decode, pruned_decode) if m > 1 else None,
        kv_cache_ratio=pruned.kv_cache_bytes / base.kv_cache_bytes,
        peak_memory_ratio=(
            pruned.peak_memory_mb / base.peak_memory_mb
            if pruned.peak_memory_mb is not None and base.peak_memory_mb
            else None
        ),
        notes=[
            "tokens/s = N * M / wall time of one batched generate(), greedy, min_new_tokens = "
            "max_new_tokens = M",
            "TTFT = from the generate() call to the streamer receiving the batch's first new tokens",
            "KV cache = bytes of the cache tensors after generation (prompt + M - 1 tokens per layer)",
            "peak memory = peak tensor memory generate() allocated above what was live before it "
            + ("(torch.cuda counters)" if device.type == "cuda" else "(torch.profiler memory events, CPU)"),
        ],
    )


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _row_tokens(new: torch.Tensor, eos: list[int]) -> list[int]:
    """New tokens of each row up to and including its first EOS: (N, M') long -> N counts."""
    counts = []
    for row in new.tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        counts.append(len(row) if stop is None else stop + 1)
    return counts


def format_serve(report: ServeReport) -> str:
    """A short table: one row per variant, then the ratios."""
    s = report.setting
    lengths = s["text_tokens"]
    lines = [
        f"serving: {s['prompts']} prompts ({min(lengths)}-{max(lengths)} text + {s['vision_tokens']} vision "
        f"tokens, left padded to {s['padded_prompt_tokens']}) x {s['new_tokens']} new tokens; "
        f"{s['repeats']} rounds after {s['warmup']} warm-up",
        f"{'variant':<10} {'tokens/s':>9} {'TTFT ms':>9} {'decode tok/s':>13} {'KV cache MB':>12} "
        f"{'peak MB':>9} {'tokens':>7}",
    ]
    for v in report.variants:
        lines.append(
            f"{v.name:<10} {v.tokens_per_s:>9.1f} {v.ttft_ms:>9.1f} {_num(v.decode_tokens_per_s, 13)} "
            f"{v.kv_cache_bytes / 2**20:>12.2f} {_num(v.peak_memory_mb, 9)} {v.generated_tokens:>7}"
        )
    lines.append(
        f"tokens/s x{report.tokens_per_s_speedup:.2f}; TTFT x{report.ttft_speedup:.2f}; "
        f"decode x{_num(report.decode_speedup, 0, 2)}; KV cache x{report.kv_cache_ratio:.2f}; "
        f"peak memory x{_num(report.peak_memory_ratio, 0, 2)}"
    )
    return "\n".join(lines)


def _num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
