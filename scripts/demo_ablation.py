"""Train the demo's adapter under several settings and compare them on the demo's test split
(or, with `--split validation`, on validation questions: the demo never reports those).

Each variant is `lvpeft.demo.settings.DEFAULT_SETTINGS` with some fields replaced; it is trained on the same
data with the same seed as `lvpeft demo`, then evaluated with greedy `generate()` at keep 0.1 (the
adapter) next to the base model and, once, the training-free baselines at the same budget. Prints one
line per variant and a JSON summary; this is how the demo's settings and the library's default module
width were chosen (see the README's demo section).

    python scripts/demo_ablation.py                                  # the recorded variants
    python scripts/demo_ablation.py --variant pruner_dim=paper --variant learning_rate=1e-3,seed=1
    python scripts/demo_ablation.py --split validation --variant train_steps=100
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lvpeft.demo.evaluation import evaluate, evidence_kept, kept_patches, scorer_variants
from lvpeft.demo.questions import make_split
from lvpeft.demo.settings import DEFAULT_SETTINGS, SCORERS, DemoSettings
from lvpeft.demo.tiny_model import load_base
from lvpeft.demo.training import prepare_data, train_adapter

RECORDED_VARIANTS: tuple[str, ...] = (
    "",  # the demo's settings
    "pruner_dim='paper'",  # the paper's module width, C = d
    "distill_weight=0.0",
    "learning_rate=1e-3",
    "gumbel_temperature=0.5",
    "ratio_loss_weight=0.5",
)
"""The variants `lvpeft demo`'s settings were chosen from (each one field changed)."""


def parse_variant(text: str) -> dict[str, Any]:
    """`"a=1,b='x',c=(1,2)"` -> `{"a": 1, "b": "x", "c": (1, 2)}` (Python literals or bare words)."""
    out: dict[str, Any] = {}
    items = re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", text)  # commas that start a new `name=`
    for item in filter(None, (t.strip() for t in items)):
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def run_variant(
    changes: dict[str, Any], base_dir: str | None, work: Path, baselines: bool, split: str = "test"
) -> dict[str, Any]:
    """Train one variant from a freshly loaded base; its accuracy and evidence kept at keep 0.1."""
    settings: DemoSettings = replace(DEFAULT_SETTINGS, **changes)
    base, processor = load_base(base_dir)
    data = prepare_data(work, settings, processor)
    if split != "test":  # choose settings on another split than the one the demo reports
        data.test = make_split(split, settings.test_examples, seed=settings.seed)
    start = time.perf_counter()
    model, trainer = train_adapter(base, processor, data.train, settings, work / "adapter")
    train_s = time.perf_counter() - start
    images, questions = [e.image for e in data.test], [e.question for e in data.test]
    last = [e for e in trainer.state.log_history if "lm_loss" in e][-1]
    row: dict[str, Any] = {
        "changes": changes,
        "train_s": round(train_s, 1),
        "train_keep_ratios": [round(last[k], 3) for k in sorted(last) if k.startswith("keep_ratio/")],
    }
    variants = scorer_variants(model)
    names = ["lvpruning", *SCORERS] if baselines else ["lvpruning"]
    for name in names:
        with variants[name]():
            result = evaluate(model, processor, data.test, settings.eval_batch_size)
            row[name], row[f"{name}_per_kind"] = result.accuracy, result.per_kind
            kept = kept_patches(model, processor, images, questions, settings.eval_batch_size)
            row[f"{name}_evidence"] = evidence_kept(kept, data.test)
    if baselines:
        with model.disable_adapter():
            row["base"] = evaluate(model, processor, data.test, settings.eval_batch_size).accuracy
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", help="fields to change, e.g. pruner_dim='paper'")
    parser.add_argument("--base", default=None, help="a saved base model folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-baselines", action="store_true", help="skip the base and baselines")
    parser.add_argument(
        "--split", default="test", choices=["test", "validation"], help="questions to score on"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.variant or RECORDED_VARIANTS):
            row = run_variant(
                parse_variant(text),
                args.base,
                Path(tmp) / str(i),
                baselines=i == 0 and not args.no_baselines,
                split=args.split,
            )
            rows.append(row)
            extra = "".join(f", {k} {row[k]:.3f}" for k in ("base", *SCORERS) if k in row)
            print(
                f"{text or '(demo settings)':<32} lvpruning {row['lvpruning']:.3f} "
                f"(evidence kept {row['lvpruning_evidence']:.3f}, trained {row['train_s']} s, training keep "
                f"ratios {row['train_keep_ratios']}, per kind "
                f"{ {k: round(v, 2) for k, v in row['lvpruning_per_kind'].items()} }){extra}",
                flush=True,
            )
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
