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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed
from trl import SFTConfig

from lvpeft.demo.evaluation import evaluate, keep_ratio, scorer_variants
from lvpeft.demo.questions import make_split
from lvpeft.demo.settings import DEFAULT_SETTINGS, SCORERS
from lvpeft.demo.tiny_model import load_base
from lvpeft.demo.training import prepare_data, training_processor
from lvpeft.training.trainer import LVPruningTrainer
from lvpeft.tuner.config import LVPruningConfig
from lvpeft.tuner.model import get_lvpruning_model


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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    changes = config_changes(args.set)
    keeps = [float(k) for k in args.keeps.split(",")]
    base, processor = load_base(args.base)
    settings = replace(DEFAULT_SETTINGS, train_steps=args.steps, seed=args.seed, test_examples=1)
    questions = make_split("validation", args.val, seed=0)
    row: dict[str, Any] = {"name": args.name, "base": args.base, "seed": args.seed, "lr": args.lr}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        set_seed(args.seed)
        model = get_lvpruning_model(base, LVPruningConfig(keep=0.1, **changes))
        row["config"] = {k: v for k, v in model.peft_config["default"].to_dict().items() if "weight" in k}
        row["config"].update(recipe=model.peft_config["default"].recipe, changes=changes)
        if args.baselines:
            model.eval()
            with model.disable_adapter():
                row["unpruned"] = evaluate(model, processor, questions).accuracy
            variants = scorer_variants(model)
            for keep in keeps:
                with keep_ratio(model, keep):
                    for name in SCORERS:
                        with variants[name]():
                            row[f"{name}@{keep:g}"] = evaluate(model, processor, questions).accuracy
        else:
            data = prepare_data(Path(tmp), settings, processor)
            sft = SFTConfig(
                output_dir=str(Path(tmp) / "adapter"),
                max_steps=args.steps,
                per_device_train_batch_size=settings.batch_size,
                learning_rate=args.lr,
                lr_scheduler_type="cosine",
                warmup_steps=settings.warmup_ratio,
                weight_decay=0.0,
                max_grad_norm=1.0,
                logging_steps=20,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                bf16=False,
                activation_checkpointing=False,
                disable_tqdm=True,
                assistant_only_loss=True,
                max_length=None,
                dataloader_num_workers=0,
                seed=args.seed,
                data_seed=args.seed,
            )
            trainer = LVPruningTrainer(
                model=model,
                args=sft,
                train_dataset=data.train,
                processing_class=training_processor(processor),
            )
            trainer.train()
            model.eval()
            logs = [e for e in trainer.state.log_history if "lm_loss" in e]
            row["grad_norms"] = [round(e.get("grad_norm", 0.0), 2) for e in logs]
            row["last_log"] = logs[-1] if logs else {}
            for keep in keeps:
                with keep_ratio(model, keep):
                    row[f"lvp@{keep:g}"] = evaluate(model, processor, questions).accuracy
    row["seconds"] = round(time.time() - start)
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
