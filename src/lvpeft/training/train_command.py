"""`lvpeft train`: train an LVPruning adapter on LLaVA-format data, on a laptop or under `accelerate launch`.

```bash
lvpeft train --model llava-hf/llava-1.5-7b-hf --data llava_v1_5_mix665k.json --image-folder data/ \\
    --output-dir out --keep 0.1 --epochs 1
accelerate launch --num_processes 8 $(which lvpeft) train ...   # the same command, distributed
```

Every `SFTConfig` / `TrainingArguments` option is reachable (`--per_device_train_batch_size 8`,
`--gradient_accumulation_steps 4`, `--deepspeed ds.json`, ...). Defaults follow the paper where it
gives them: learning rate 2e-6, 3 % warm-up, cosine schedule, no weight decay, max grad norm 1.0
(METHOD.md; 2e-6 is for a 7B model: a tiny model needs ~1e-3). The output folder receives the
adapter, its model card and the trainer's checkpoints (for `--resume`); never the base weights.

`--eval_data FILE` (LLaVA-format, like `--data`) adds validation on its first `--eval_samples` usable rows:
at every evaluation (`--eval_strategy steps|epoch` and `--eval_steps`; by default every `--eval_steps`, or
`10 * logging_steps`, steps) and at the end of training, `ValidationNLLCallback` logs the answer NLL of the
adapter-pruned model, of random pruning at the same budget and (once) of the unpruned model, and warns at
the end when the adapter does not beat random pruning. The callback runs these evaluations itself; the
trainer's own evaluation loop stays off.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # peft is imported when a run starts, not for `lvpeft train --help`
    from ..tuner.config import LVPruningConfig

logger = logging.getLogger(__name__)

PAPER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-6,
    "warmup_steps": 0.03,  # a float < 1 is a fraction of the training steps
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "num_train_epochs": 1.0,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
    # loss only on the assistant answers (needs a chat template with {% generation %} markers, see below)
    "assistant_only_loss": True,
    # never truncate: a cut through an image's tokens makes the processor fail mid-epoch
    "max_length": None,
}
# the names the issue and the README use, mapped to TrainingArguments' own
ALIASES = {"--epochs": "--num_train_epochs"}


@dataclass
class TrainCommandArguments:
    """lvpeft's own options of `lvpeft train` (the rest are SFTConfig's)."""

    model: str = field(
        metadata={"help": "Base LLaVA model: Hub id or local folder (its processor is loaded too)."}
    )
    data: str = field(metadata={"help": "LLaVA-format JSON/JSONL file of conversations."})
    image_folder: str = field(default=".", metadata={"help": "Folder the rows' image paths are relative to."})
    keep: float = field(default=0.1, metadata={"help": "Final keep ratio (paper: 0.1, i.e. rho = 0.5)."})
    layers: str | None = field(
        default=None, metadata={"help": "Module positions, e.g. '1,8,16' (default: scaled to the depth)."}
    )
    pruner_dim: str | None = field(
        default=None,
        metadata={
            "help": "Decision-module width C: an integer, 'paper' (C = d) or, by default, the light module "
            "(d/8, at least 64)."
        },
    )
    recipe: str = field(
        default="lvpeft",
        metadata={
            "help": "'lvpeft' (default: LM + keep ratio + teacher ranking for every module) or 'paper' "
            "(LVPruning as published). The options below left unset take the recipe's value."
        },
    )
    ratio_loss_weight: float = field(default=2.0, metadata={"help": "lambda_ratio."})
    teacher_rank_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the teacher-ranking term (every module ranks what the unpruned model's later "
            "layers read from each vision token); 0 = off. Default: the recipe's (lvpeft: 1, paper: 0)."
        },
    )
    training_decisions: str | None = field(
        default=None,
        metadata={
            "help": "'gumbel' (per-token, the paper) or 'top_k' (the exact budget). Default: the recipe's."
        },
    )
    distill_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of KL(unpruned || pruned); 0 = off. Default: the recipe's (0)."},
    )
    attention_distill_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the last module's ranking loss against its layer's attention from the last "
            "prompt token; 0 = off. Default: the recipe's (0)."
        },
    )
    hide_answer_from_modules: bool | None = field(
        default=None,
        metadata={
            "help": "The decision modules do not attend to the trained answer tokens, as at inference "
            "(false: the paper's modules see them). Default: the recipe's (lvpeft: true, paper: false)."
        },
    )
    merge_dropped: bool | None = field(
        default=None,
        metadata={
            "help": "Merge each dropped vision token into its most similar kept token (mass-weighted states, "
            "proportional attention), in training and inference (false: drop them, as the paper). "
            "Default: the recipe's (lvpeft: true, paper: false)."
        },
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in --output-dir."})
    keep_text_only: bool = field(default=False, metadata={"help": "Keep text-only rows (paper: dropped)."})
    on_bad_rows: str = field(
        default="skip", metadata={"help": "'skip' bad rows (counted in the log) or 'raise' before training."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA-format validation JSON/JSONL. At every evaluation (--eval_strategy; by default "
            "every --eval_steps or 10 x logging_steps steps) and at the end, log the answer NLL of the "
            "adapter (eval_nll/lvp), of random pruning at the same budget (eval_nll/random) and of the "
            "unpruned model (eval_nll/unpruned)."
        },
    )
    eval_image_folder: str | None = field(
        default=None, metadata={"help": "Folder of --eval_data's image paths (default: --image-folder)."}
    )
    eval_samples: int = field(default=64, metadata={"help": "Validation questions: the first N usable rows."})
    dtype: str = field(
        default="auto", metadata={"help": "Base model dtype: auto, bfloat16, float16, float32."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager or sdpa."})


def build_train_parser() -> Any:
    """HfArgumentParser over lvpeft's options and every SFTConfig option, with the paper's defaults."""
    from transformers import HfArgumentParser
    from trl import SFTConfig

    parser = HfArgumentParser((TrainCommandArguments, SFTConfig), prog="lvpeft train")
    defaults = dict(PAPER_DEFAULTS)
    defaults["output_dir"] = "lvpruning-adapter"
    if not _cuda_bf16():
        defaults["bf16"] = False
    if not _cuda():
        # without it, processes started by `accelerate launch --multi_gpu` (torchrun) on a CPU-only machine
        # would each train alone; with it they form a gloo process group (accelerate's MULTI_CPU)
        defaults["use_cpu"] = True
    parser.set_defaults(**defaults)
    return parser


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Apply the aliases and turn `--push-to-hub REPO` into `--push_to_hub true --hub_model_id REPO`."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        name, eq, value = arg.partition("=")
        if name in ALIASES:
            out.append(ALIASES[name] + (eq + value if eq else ""))
        elif name in ("--push-to-hub", "--push_to_hub"):
            repo = (
                value
                if eq
                else (items[i + 1] if i + 1 < len(items) and not items[i + 1].startswith("-") else "")
            )
            if not eq and repo:
                i += 1
            if repo and repo.lower() not in ("true", "false", "1", "0", "yes", "no"):
                out += ["--push_to_hub", "true", "--hub_model_id", repo]
            else:
                out += ["--push_to_hub", repo or "true"]
        else:
            out.append(arg)
        i += 1
    return out


def train_command(argv: Sequence[str]) -> int:
    """Parse the arguments, load model, processor and data, train, save (and push) the adapter."""
    parser = build_train_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    ours, sft_args = parser.parse_args_into_dataclasses(args=normalise_argv(argv))
    run_training(ours, sft_args)
    return 0


def adapter_config(ours: TrainCommandArguments) -> LVPruningConfig:
    """The `LVPruningConfig` that `lvpeft train`'s options describe (validated on construction)."""
    from ..tuner.config import LVPruningConfig

    return LVPruningConfig(
        keep=ours.keep,
        layers=[int(x) for x in ours.layers.split(",")] if ours.layers else None,
        pruner_dim=int(ours.pruner_dim) if (ours.pruner_dim or "").isdigit() else ours.pruner_dim,
        recipe=ours.recipe,
        ratio_loss_weight=ours.ratio_loss_weight,
        teacher_rank_weight=ours.teacher_rank_weight,
        training_decisions=ours.training_decisions,
        distill_weight=ours.distill_weight,
        attention_distill_weight=ours.attention_distill_weight,
        hide_answer_from_modules=ours.hide_answer_from_modules,
        merge_dropped=ours.merge_dropped,
        base_model_name_or_path=ours.model,
    )


def run_training(ours: TrainCommandArguments, sft_args: Any) -> Any:
    """The training run behind `lvpeft train` (see the module docstring); returns the trainer."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, set_seed

    from ..tuner.model import get_lvpruning_model
    from .data.chat_templates import training_chat_template
    from .data.llava_format import load_llava_dataset
    from .eval_callback import ValidationNLLCallback
    from .trainer import LVPruningTrainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if ours.on_bad_rows not in ("skip", "raise"):
        raise ValueError(f"--on_bad_rows must be 'skip' or 'raise', got {ours.on_bad_rows!r}.")
    config = adapter_config(ours)  # validated here, before anything is loaded
    dataset, report = load_llava_dataset(
        ours.data,
        ours.image_folder,
        keep_text_only=ours.keep_text_only,
        on_error=ours.on_bad_rows,
        max_samples=ours.max_samples,
    )
    logger.info("data: %s", report.summary())
    if len(dataset) == 0:
        raise ValueError(f"No usable rows in {ours.data}: {report}")
    validation = load_validation(ours, sft_args) if ours.eval_data else None
    dtype = "auto" if ours.dtype == "auto" else getattr(torch, ours.dtype)
    processor = AutoProcessor.from_pretrained(ours.model)
    if sft_args.assistant_only_loss and not sft_args.chat_template_path:
        # the model's template if it marks the answers, else lvpeft's for its family (or a clear error)
        model_config = AutoConfig.from_pretrained(ours.model)
        processor.chat_template = training_chat_template(processor, model_config, name=ours.model)
    base = AutoModelForImageTextToText.from_pretrained(
        ours.model, dtype=dtype, attn_implementation=ours.attn_implementation, use_safetensors=True
    )
    # The decision modules are initialised here, before the trainer seeds the generators: seed now
    # so that the same command and --seed give the same adapter (Gumbel noise and data order are
    # seeded again by the trainer from the same --seed).
    set_seed(sft_args.seed)
    model = get_lvpruning_model(base, config)
    model.print_trainable_parameters()
    trainer = LVPruningTrainer(model=model, args=sft_args, train_dataset=dataset, processing_class=processor)
    if validation is not None:
        samples, eval_steps, per_epoch = validation
        batch_size = sft_args.per_device_eval_batch_size
        trainer.add_callback(
            ValidationNLLCallback(
                trainer, samples, batch_size, sft_args.seed, eval_steps=eval_steps, per_epoch=per_epoch
            )
        )
    resume = bool(ours.resume) and _has_checkpoint(sft_args.output_dir)
    if ours.resume and not resume:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", sft_args.output_dir)
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(sft_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.create_model_card()
    if sft_args.push_to_hub:
        trainer.push_to_hub()
    return trainer


def load_validation(ours: TrainCommandArguments, sft_args: Any) -> tuple[list[Any], float | None, bool]:
    """The validation questions of `--eval_data` (its first `--eval_samples` usable rows, bad rows skipped)
    and when to measure them: `(samples, every how many steps or None, at every epoch end)`.

    `--eval_strategy steps` (or none given) measures every `--eval_steps` steps, by default every
    `10 * logging_steps` (a fractional `logging_steps` gives a fraction 10 times larger, at most 1);
    `epoch` at every epoch end. `ValidationNLLCallback` measures on that schedule and at the end of training;
    `sft_args.eval_strategy` is set to "no", so the trainer's own evaluation loop (which would need an
    `eval_dataset`) stays off.
    """
    from transformers.trainer_utils import IntervalStrategy

    from .data.validation import load_eval_samples

    if ours.eval_samples < 1:
        raise ValueError(f"--eval_samples must be at least 1, got {ours.eval_samples}.")
    folder = ours.eval_image_folder if ours.eval_image_folder is not None else ours.image_folder
    samples, report = load_eval_samples(ours.eval_data, folder, max_samples=ours.eval_samples)
    logger.info("validation data: %s", report.summary())
    per_epoch = sft_args.eval_strategy == IntervalStrategy.EPOCH
    every = None
    if not per_epoch:
        every = sft_args.eval_steps
        if every is None:
            steps = sft_args.logging_steps
            every = min(1.0, 10 * steps) if steps < 1 else int(10 * steps)
    sft_args.eval_strategy = IntervalStrategy.NO
    logger.info(
        "--eval_data: validation answer NLL on %d questions %s and at the end of training",
        len(samples),
        "at every epoch end" if per_epoch else f"every {every:g} steps",
    )
    return samples, every, per_epoch


def _has_checkpoint(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(d.startswith("checkpoint-") for d in os.listdir(output_dir))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


if __name__ == "__main__":
    raise SystemExit(train_command(sys.argv[1:]))
