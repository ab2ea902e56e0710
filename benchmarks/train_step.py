"""Training-step cost of LVPruning's masked training vs the same model without the adapter.

One training step = forward + backward of the LM loss on a batch, with the backward reaching the
first decoder layer in both cases (the adapter's modules sit there; for the baseline the input
embeddings require grad), so the difference is what the decision modules, the Gumbel decisions
and the masked softmax add. Each measurement runs in a fresh process so that the peak resident
memory (ru_maxrss) belongs to that configuration alone.

    python benchmarks/train_step.py            # tiny and mid-size configs, prints a table and JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = {
    # name: (decoder width, depth, heads, image side / patch -> vision tokens, text tokens, batch)
    "tiny": dict(hidden=64, layers=4, heads=4, image=32, patch=8, text=24, batch=4),
    "mid": dict(hidden=512, layers=8, heads=8, image=336, patch=14, text=64, batch=2),
}


def build(cfg: dict, attn: str):
    from lvpeft.measure.bench_models import build_llava

    model = build_llava(
        hidden=cfg["hidden"],
        layers=cfg["layers"],
        heads=cfg["heads"],
        kv_heads=cfg["heads"],
        mlp=cfg["hidden"] * 8 // 3,
        vocab=1000,
        image=cfg["image"],
        patch=cfg["patch"],
        attn=attn,
    )
    n_vision = (cfg["image"] // cfg["patch"]) ** 2
    ids = torch.randint(3, 900, (cfg["batch"], cfg["text"] + n_vision))
    ids[:, 4 : 4 + n_vision] = model.config.image_token_id  # build_llava's placeholder id
    labels = ids.clone()
    labels[:, : 4 + n_vision] = -100
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(cfg["batch"], 3, cfg["image"], cfg["image"]),
        "labels": labels,
    }
    return model, batch


def measure(name: str, attn: str, adapter: bool, steps: int) -> dict:
    from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner

    cfg = CONFIGS[name]
    model, batch = build(cfg, attn)
    for p in model.parameters():
        p.requires_grad_(False)
    if adapter:
        model = get_lvpruning_model(model, LVPruningConfig(keep=0.1, pruner_dim="paper"))
    model.train()
    embed = model.get_input_embeddings()

    def step() -> None:
        if adapter:
            out = model(**batch)
            loss = out.loss + lvpruning_tuner(model).pruning_stats.ratio_loss
        else:
            embeds = embed(batch["input_ids"]).detach().requires_grad_(True)
            out = model(inputs_embeds=embeds, **{k: v for k, v in batch.items() if k != "input_ids"})
            loss = out.loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "config": name,
        "attn": attn,
        "adapter": adapter,
        "step_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--attn", default="eager,sdpa")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: name,attn,adapter
    args = parser.parse_args()
    if args.one:
        name, attn, adapter = args.one.split(",")
        print(json.dumps(measure(name, attn, adapter == "1", args.steps)))
        return
    rows = []
    for name in args.configs.split(","):
        for attn in args.attn.split(","):
            for adapter in ("0", "1"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        f"{name},{attn},{adapter}",
                        "--steps",
                        str(args.steps),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"training step, median of {args.steps} after warm-up; machine: {machine}")
    header = ("config", "attn", "base s", "lvp s", "ratio", "base MB", "lvp MB", "ratio")
    print("{:<6} {:<6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6}".format(*header))
    summary = []
    for i in range(0, len(rows), 2):
        base, lvp = rows[i], rows[i + 1]
        t, m = lvp["step_s"] / base["step_s"], lvp["peak_rss_mb"] / base["peak_rss_mb"]
        print(
            f"{base['config']:<6} {base['attn']:<6} {base['step_s']:>8.3f} {lvp['step_s']:>8.3f} {t:>6.2f} "
            f"{base['peak_rss_mb']:>8.0f} {lvp['peak_rss_mb']:>8.0f} {m:>6.2f}"
        )
        summary.append(
            {
                "config": base["config"],
                "attn": base["attn"],
                "time_ratio": t,
                "peak_rss_ratio": m,
                "base": base,
                "lvpruning": lvp,
            }
        )
    print(json.dumps({"machine": machine, "results": summary}, indent=1))


if __name__ == "__main__":
    main()
