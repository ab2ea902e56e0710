"""Steps 2 and 3 of the demo: export the scenes as LLaVA-format data and load them the way `lvpeft train`
does, then train an adapter on the frozen base with `LVPruningTrainer`."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DemoSettings

if TYPE_CHECKING:  # types only
    from ..tuner.config import LVPruningConfig
    from .questions import VQAExample


@dataclass
class DemoData:
    """The demo's data: exported files, the training dataset, the test questions.

    Attributes:
        folder: `DIR/data`, holding `train.json`, `test.json` and `images/`.
        train: what `load_llava_dataset` read from `train.json` (columns id, images, messages).
        test: the test questions (the rows of `test.json`), with their evidence regions.
    """

    folder: Path
    train: Any
    test: list[VQAExample]


def prepare_data(
    out_dir: str | Path, settings: DemoSettings, processor: Any, train_kinds: Sequence[str] | None = None
) -> DemoData:
    """Draw the train and test splits, export them as LLaVA JSON + PNGs (the image placeholder before
    or after the question, as `processor`'s prompt has it), load train back. `train_kinds`: train on
    these question kinds only (scripts/recipe_study.py's held-out-kind study; None: all)."""
    from ..training.data.llava_format import load_llava_dataset
    from .questions import export_llava_json, make_split
    from .tiny_model import asks_question_first

    question_first = asks_question_first(processor)
    folder = Path(out_dir) / "data"
    train = make_split("train", settings.train_examples, seed=settings.seed, kinds=train_kinds)
    test = make_split("test", settings.test_examples, seed=settings.seed)
    train_json = export_llava_json(train, folder, "train.json", question_first)
    export_llava_json(test, folder, "test.json", question_first)
    dataset, load_report = load_llava_dataset(train_json, folder, on_error="raise", image_check="verify")
    if len(dataset) != len(train):
        raise RuntimeError(
            f"load_llava_dataset kept {len(dataset)} of {len(train)} rows: {load_report.summary()}"
        )
    return DemoData(folder=folder, train=dataset, test=test)


def training_processor(processor: Any, model_type: str = "llava") -> Any:
    """A copy of `processor` whose chat template marks the answers (for `assistant_only_loss`).

    Like `lvpeft train`, through the same helper (`training_chat_template`): a template with
    `{% generation %}` markers is kept, one without is replaced by lvpeft's training template for
    `model_type` (the demo's bases are LLaVA-1.5). The copy keeps inference prompts (rendered with the
    original) free of the BOS that training templates write.
    """
    from ..training.data.chat_templates import training_chat_template

    processor = copy.deepcopy(processor)
    processor.chat_template = training_chat_template(processor, model_type)
    return processor


def train_adapter(
    base: Any,
    processor: Any,
    dataset: Any,
    settings: DemoSettings,
    output_dir: str | Path,
    config: LVPruningConfig | None = None,
) -> tuple[Any, Any]:
    """Wrap `base` with an LVPruning adapter and train it; returns `(peft_model, trainer)`.

    The adapter's config is built from `settings` unless `config` is given (scripts/recipe_study.py
    passes any `LVPruningConfig`); the optimiser always follows `settings`. The model comes back in
    eval mode (pruning by removal). Nothing is saved here.
    """
    from transformers import set_seed
    from trl import SFTConfig

    from ..training.trainer import LVPruningTrainer
    from ..tuner.config import LVPruningConfig
    from ..tuner.model import get_lvpruning_model

    set_seed(settings.seed)
    chosen = {
        "ratio_loss_weight": settings.ratio_loss_weight,
        "distill_weight": settings.distill_weight,
        "attention_distill_weight": settings.attention_distill_weight,
        "teacher_rank_weight": settings.teacher_rank_weight,
        "training_decisions": settings.training_decisions,
    }
    config = config or LVPruningConfig(
        keep=settings.keep,
        layers=None if settings.layers is None else list(settings.layers),
        keep_schedule=None if settings.keep_schedule is None else list(settings.keep_schedule),
        pruner_dim=settings.pruner_dim,
        gumbel_temperature=settings.gumbel_temperature,
        recipe=settings.recipe,
        **{name: value for name, value in chosen.items() if value is not None},  # None: the recipe's
    )
    model = get_lvpruning_model(base, config)
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=settings.train_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, settings.train_steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # SFTConfig's default: accelerate would leave the model's forward under bf16 autocast
        activation_checkpointing=False,  # SFTConfig turns it on by default; a tiny model does not need it
        disable_tqdm=False,
        assistant_only_loss=True,
        max_length=None,
        dataloader_num_workers=0,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    trainer = LVPruningTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=training_processor(processor)
    )
    trainer.train()
    model.eval()
    return model, trainer


def training_summary(trainer: Any, settings: DemoSettings) -> dict[str, Any]:
    """Hyper-parameters and the first and last logged losses and keep ratios."""
    logs = [e for e in trainer.state.log_history if "lm_loss" in e]
    ratios = sorted(k for k in (logs[-1] if logs else {}) if k.startswith("keep_ratio/"))
    keys = ["step", "lm_loss", "ratio_loss", "teacher_rank_loss", "attention_loss", "distill_loss", *ratios]
    config = trainer.lvpruning_config
    return {
        "steps": settings.train_steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "recipe": config.recipe,
        "gumbel_temperature": config.gumbel_temperature,
        "ratio_loss_weight": config.ratio_loss_weight,
        "distill_weight": config.distill_weight,
        "attention_distill_weight": config.attention_distill_weight,
        "teacher_rank_weight": config.teacher_rank_weight,
        "training_decisions": config.training_decisions,
        "hide_answer_from_modules": config.hide_answer_from_modules,
        "merge_dropped": config.merge_dropped,
        "first_log": {k: logs[0][k] for k in keys if k in logs[0]} if logs else {},
        "last_log": {k: logs[-1][k] for k in keys if k in logs[-1]} if logs else {},
    }
