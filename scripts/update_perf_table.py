"""Regenerate the README's performance section from `lvpeft flops` and `lvpeft bench` output.

    python scripts/update_perf_table.py            # runs the flops model and the bench, rewrites README.md
    python scripts/update_perf_table.py --no-serve # the same without the serving rows (they take minutes)
    python scripts/update_perf_table.py --check    # only checks that the FLOPs table is current

The section between `<!-- perf:start -->` and `<!-- perf:end -->` is replaced; nothing in it is typed
by hand. The bench part records the machine it ran on; rerun this script on the machine you report.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"
PAPER = {"base": 8.38, "rho=0.6": 3.97, "rho=0.5": 3.18, "rho=0.45": 2.79}
BENCH_TEXT = r"Measured by `lvpeft bench`.*?(?=\n\nServing-shaped|\Z)"
SERVE_TEXT = r"Serving-shaped.*"


def flops_table() -> str:
    """The paper's FLOPs table next to lvpeft's count, for the paper's module and a light one."""
    from lvpeft.measure.flops_command import llava_1_5_7b_config
    from lvpeft.tuner.flops import estimate_flops

    config = llava_1_5_7b_config()
    rows = [
        "| setting (LLaVA-1.5-7B, 1 image + 30 text tokens) | paper TFLOPs | lvpeft, paper module (C=4096) "
        "| lvpeft, light module (default, C=512) |",
        "|---|---|---|---|",
    ]
    base = estimate_flops(config, text_tokens=30)
    rows.append(f"| base | {PAPER['base']:.2f} | {base.base_tflops:.2f} | {base.base_tflops:.2f} |")
    for rho in (0.6, 0.5, 0.45):
        schedule = [round(rho, 2), round(rho - 0.2, 2), round(rho - 0.4, 2)]
        cells = []
        for dim in ("paper", None):
            report = estimate_flops(
                config, text_tokens=30, layers=[1, 8, 16], schedule=schedule, pruner_dim=dim
            )
            cells.append(
                f"{report.pruned_tflops:.2f} (−{100 * report.flops_reduction:.1f} %, modules "
                f"{report.pruner_tflops:.3f})"
            )
        rows.append(f"| ρ = {rho} {schedule} | {PAPER[f'rho={rho:g}']:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def bench_table(repeats: int) -> str:
    """Measured prefill/decode/KV cache on this machine, base vs pruned, from `lvpeft bench`."""
    from lvpeft.measure.bench import run_bench
    from lvpeft.measure.bench_models import build_default_model

    lines = [
        "| attention | batch | prefill base ms | prefill pruned ms | prefill speed-up | FLOPs speed-up | "
        "% of FLOPs speed-up | KV cache | decode speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    machine = ""
    for attn in ("sdpa", "eager"):
        for batch in (1, 4):
            report = run_bench(
                build_default_model(attn), keep=0.1, batch=batch, repeats=repeats, new_tokens=8
            )
            machine = report.machine
            base, pruned = report.variants[0], report.variants[1]
            lines.append(
                f"| {attn} | {batch} | {base.prefill_ms:.0f} | {pruned.prefill_ms:.0f} | "
                f"{report.prefill_speedup:.2f}x | {report.flops_speedup:.2f}x | "
                f"{100 * report.speedup_efficiency:.0f} % | x{report.kv_cache_ratio:.2f} | "
                f"{report.decode_speedup:.2f}x |"
            )
    setting = report.setting
    header = (
        f"Measured by `lvpeft bench` on {machine}: the default config-built model (decoder "
        f"{setting['decoder']['num_hidden_layers']} x {setting['decoder']['hidden_size']}, "
        f"{setting['vision_tokens']} vision + {setting['text_tokens']} text tokens, float32), keep 0.1 "
        f"{setting['schedule']} before layers {setting['layers']}, default light modules "
        f"(C = {setting['pruner_dim']}); {repeats} rounds after {setting['warmup']} warm-ups, each "
        "timing base and pruned back to back in one process: latencies are medians, the speed-up is "
        "the median of the per-round ratios."
    )
    return header + "\n\n" + "\n".join(lines)


def serve_table(settings: list[tuple[int, int]], repeats: int) -> str:
    """Measured serving-shaped generate() on this machine, base vs pruned, from `lvpeft bench --serve`."""
    from lvpeft.measure.bench import run_bench
    from lvpeft.measure.bench_models import build_default_model
    from lvpeft.measure.serve import ServeSetting

    lines = [
        "| prompts x new tokens | variant | tokens/s | time to first token ms | decode tokens/s | "
        "KV cache MB | peak memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for prompts, new_tokens in settings:
        setting = ServeSetting(prompts=prompts, new_tokens=new_tokens, repeats=repeats)
        report = run_bench(
            build_default_model("sdpa"), keep=0.1, repeats=1, warmup=0, new_tokens=1, serve=setting
        )
        serve = report.serve
        base, pruned = serve.variants[0], serve.variants[1]
        ratios = {
            "tokens": f" ({serve.tokens_per_s_speedup:.2f}x)",
            "ttft": f" ({serve.ttft_speedup:.2f}x)",
            "decode": f" ({serve.decode_speedup:.2f}x)" if serve.decode_speedup is not None else "",
            "kv": f" (x{serve.kv_cache_ratio:.2f})",
            "peak": f" (x{serve.peak_memory_ratio:.2f})" if serve.peak_memory_ratio is not None else "",
        }
        for variant, label, r in ((base, "base", dict.fromkeys(ratios, "")), (pruned, "LVPruning", ratios)):
            decode = f"{variant.decode_tokens_per_s:.1f}" if variant.decode_tokens_per_s is not None else "-"
            peak = f"{variant.peak_memory_mb:.0f}" if variant.peak_memory_mb is not None else "-"
            lines.append(
                f"| {prompts} x {new_tokens} | {label} | {variant.tokens_per_s:.1f}{r['tokens']} | "
                f"{variant.ttft_ms:.0f}{r['ttft']} | {decode}{r['decode']} | "
                f"{variant.kv_cache_bytes / 2**20:.1f}{r['kv']} | {peak}{r['peak']} |"
            )
    s = serve.setting
    memory = (
        "the GPU allocator's peak"
        if pruned.peak_memory_total_mb is not None
        else "the peak of torch's CPU tensor allocations (profiler memory events)"
    )
    header = (
        f"Serving-shaped, measured by `lvpeft bench --serve` on {report.machine}: the same model, sdpa, "
        f"keep {report.setting['keep']} {report.setting['schedule']}, one batch of N prompts with "
        f"{min(s['text_tokens'])} to {max(s['text_tokens'])} text "
        f"tokens (mixed, left padded) and one image ({s['vision_tokens']} vision tokens) each, greedy "
        "generate() of exactly M new tokens per prompt; tokens/s = N x M / wall time, time to first token "
        "= the generate() call to the batch's first tokens (vision tower, prefill, first pick), decode = "
        "the later tokens over the time after it, KV cache = bytes held at the end of generation, peak "
        f"memory = {memory} during generate() above the loaded weights; {repeats} rounds after "
        f"{s['warmup']} warm-up, base and pruned back to back in each: medians; in brackets the pruned "
        "model's speed-ups (> 1: faster; medians of the per-round ratios) and its KV cache and peak memory "
        "as a fraction of the base's."
    )
    return header + "\n\n" + "\n".join(lines)


def _kept(current: str, pattern: str, placeholder: str) -> str:
    match = re.search(pattern, current, re.S)
    return match.group(0).strip() if match else placeholder


def render(repeats: int, with_bench: bool, serve: list[tuple[int, int]] | None, current: str) -> str:
    flops = "Analytic FLOPs (`lvpeft flops`):\n\n" + flops_table()
    if with_bench:
        bench = bench_table(repeats)
    else:
        bench = _kept(current, BENCH_TEXT, "Not measured yet: run `python scripts/update_perf_table.py`.")
    if with_bench and serve:
        served = serve_table(serve, max(1, repeats // 3))
    else:
        served = _kept(
            current,
            SERVE_TEXT,
            "Serving-shaped: not measured yet: run `python scripts/update_perf_table.py`.",
        )
    return f"{START}\n{flops}\n\n{bench}\n\n{served}\n{END}"


def _serve_settings(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxM[,NxM...], e.g. 16x64, got {text!r}") from None
    if not all(len(p) == 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected NxM[,NxM...], e.g. 16x64, got {text!r}")
    return pairs  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the FLOPs table is out of date")
    parser.add_argument("--no-bench", action="store_true", help="only refresh the FLOPs table")
    parser.add_argument("--no-serve", action="store_true", help="keep the serving rows as they are")
    parser.add_argument(
        "--serve",
        type=_serve_settings,
        default=[(16, 64), (32, 128)],
        help="serving settings, prompts x new tokens (default 16x64,32x128)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="prefill rounds (serving: a third of it)")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} section", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    current, tail = rest.split(END, 1)
    if args.check:
        ok = flops_table() in current
        print("performance section is current" if ok else "FLOPs table is out of date: rerun this script")
        return 0 if ok else 1
    section = render(args.repeats, not args.no_bench, None if args.no_serve else args.serve, current)
    README.write_text(head + section + tail, encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
