"""Regenerate the README's performance section from `lvpeft flops` and `lvpeft bench` output.

    python scripts/update_perf_table.py            # runs the flops model and the bench, rewrites README.md
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


def render(repeats: int, with_bench: bool, current: str) -> str:
    flops = "Analytic FLOPs (`lvpeft flops`):\n\n" + flops_table()
    if with_bench:
        bench = bench_table(repeats)
    else:
        match = re.search(r"Measured by `lvpeft bench`.*?(?=\n\n<!--|\Z)", current, re.S)
        bench = (
            match.group(0).strip()
            if match
            else "Not measured yet: run `python scripts/update_perf_table.py`."
        )
    return f"{START}\n{flops}\n\n{bench}\n{END}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the FLOPs table is out of date")
    parser.add_argument("--no-bench", action="store_true", help="only refresh the FLOPs table")
    parser.add_argument("--repeats", type=int, default=15)
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
    section = render(args.repeats, not args.no_bench, current)
    README.write_text(head + section + tail, encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
