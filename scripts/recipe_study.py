"""Train an adapter with a training recipe on a shipped (or saved) tiny LLaVA and measure it on the
validation split at several keeps; or measure the training-free baselines. One JSON line per run.

The record of docs/recipe.md: every number there comes from this script (1,000 validation questions,
200 steps of 16, keep 0.1 trained, `set_keep` for the other keeps, one CPU thread).

    python scripts/recipe_study.py --base image-first --baselines --out runs.jsonl
    python scripts/recipe_study.py --base image-first --seed 1 --out runs.jsonl        # the default recipe
    python scripts/recipe_study.py --base image-first --set recipe=paper --out runs.jsonl
    python scripts/recipe_study.py --base question-first --set training_decisions=top_k --out runs.jsonl

`--set FIELD=VALUE` sets any `LVPruningConfig` field (repeatable).
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lvpeft.demo.evaluation import evaluate, keep_ratio, scorer_variants
from lvpeft.demo.questions import make_split
from lvpeft.demo.settings import DEFAULT_SETTINGS, SCORERS
from lvpeft.demo.tiny_model import load_base
from lvpeft.demo.training import prepare_data, train_adapter
from lvpeft.tuner.config import LVPruningConfig
from lvpeft.tuner.model import get_lvpruning_model, lvpruning_tuner


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--base", default="image-first", help="image-first, question-first, or a saved model folder"
    )
    p.add_argument("--set", action="append", default=[], help="an LVPruningConfig field, FIELD=VALUE")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument(
        "--seed", type=int, default=0, help="seeds module init, Gumbel noise and the training data"
    )
    p.add_argument("--val", type=int, default=1000, help="validation questions (split seed 0, fixed)")
    p.add_argument("--keeps", default="0.05,0.1,0.2,0.3,0.5")
    p.add_argument("--baselines", action="store_true", help="unpruned + training-free scorers, no training")
    p.add_argument("--name", default="")
    p.add_argument("--save", help="also save the trained adapter to this folder")
    p.add_argument(
        "--merge",
        choices=["config", "both"],
        default="config",
        help="both: measure every variant with merge_dropped off and on (keys name@keep, "
        "name+merge@keep); config: as the config says",
    )
    p.add_argument(
        "--train-kinds",
        help="train on these question kinds only, comma-separated (the held-out-kind study; default all)",
    )
    p.add_argument(
        "--per-kind", action="store_true", help="also record each measurement's accuracy per question kind"
    )
    p.add_argument("--out", required=True, help="JSONL file the result line is appended to")
    return p.parse_args()


def config_changes(pairs: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            changes[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            changes[key] = value
    return changes


def merge_settings(model: torch.nn.Module, mode: str) -> Iterator[str]:
    """Yield the row-key suffix of each `merge_dropped` setting to measure, with it applied."""
    config = lvpruning_tuner(model).active_config
    if mode == "config":
        yield ""
        return
    saved = config.merge_dropped
    try:
        for on, suffix in ((False, ""), (True, "+merge")):
            config.merge_dropped = on
            yield suffix
    finally:
        config.merge_dropped = saved


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    changes = config_changes(args.set)
    keeps = [float(k) for k in args.keeps.split(",")]
    base, processor = load_base(args.base)
    settings = replace(
        DEFAULT_SETTINGS, train_steps=args.steps, seed=args.seed, learning_rate=args.lr, test_examples=1
    )
    questions = make_split("validation", args.val, seed=0)
    train_kinds = args.train_kinds.split(",") if args.train_kinds else None
    row: dict[str, Any] = {"name": args.name, "base": args.base, "seed": args.seed, "lr": args.lr}
    if train_kinds:
        row["train_kinds"] = train_kinds
    per_kind: dict[str, dict[str, float]] = {}

    def measure(key: str) -> None:
        result = evaluate(model, processor, questions)
        row[key] = result.accuracy
        if args.per_kind:
            per_kind[key] = result.per_kind

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        config = LVPruningConfig(keep=0.1, **changes)
        row["config"] = {k: v for k, v in config.to_dict().items() if "weight" in k or k == "recipe"}
        row["config"]["changes"] = changes
        if args.baselines:
            model = get_lvpruning_model(base, config).eval()
            with model.disable_adapter():
                measure("unpruned")
            variants = scorer_variants(model)
            for keep in keeps:
                with keep_ratio(model, keep):
                    for name in SCORERS:
                        with variants[name]():
                            for suffix in merge_settings(model, args.merge):
                                measure(f"{name}{suffix}@{keep:g}")
        else:
            data = prepare_data(Path(tmp), settings, processor, train_kinds=train_kinds)
            model, trainer = train_adapter(
                base, processor, data.train, settings, Path(tmp) / "adapter", config=config
            )
            logs = [e for e in trainer.state.log_history if "lm_loss" in e]
            row["grad_norms"] = [round(e.get("grad_norm", 0.0), 2) for e in logs]
            row["last_log"] = logs[-1] if logs else {}
            if args.save:
                model.save_pretrained(args.save)
            for keep in keeps:
                with keep_ratio(model, keep):
                    for suffix in merge_settings(model, args.merge):
                        measure(f"lvp{suffix}@{keep:g}")
    if per_kind:
        row["per_kind"] = per_kind
    row["seconds"] = round(time.time() - start)
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
