"""The demo's settings: `DemoSettings`, the full run (`DEFAULT_SETTINGS`, about 6 minutes on 2 CPU cores) and
`lvpeft demo --quick` (`QUICK_SETTINGS`). Why each value is what it is: docs/demo-findings.md."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and measures.

    The defaults fit the whole run into a few minutes on two CPU cores (`QUICK_SETTINGS`: about a
    minute). The adapter is trained with the library's default recipe (`LVPruningConfig()`: exact
    budget, teacher ranking; every loss field here is None) and the learning rate of
    docs/recipe.md's measurements (1e-3 for these tiny models), so that what the demo shows is what
    a user gets out of the box. The earlier hand-tuned demo settings (distillation, a last-module
    attention term, ratio weight 20, lr 3e-3) and their ablations: docs/demo-findings.md.

    Attributes:
        train_steps: optimiser steps (one pass over `train_steps * batch_size` fresh scenes).
        batch_size: training batch size.
        test_examples: questions of the test split that every evaluation runs on.
        keep: final keep ratio the adapter is trained at (paper: 0.1).
        other_keeps: further keep ratios the trained adapter is evaluated at (`set_keep`).
        baselines_at_every_keep: also run the baselines at `other_keeps` (for the plot).
        layers, keep_schedule, pruner_dim, gumbel_temperature, recipe, ratio_loss_weight,
        distill_weight, attention_distill_weight, teacher_rank_weight, training_decisions:
            `LVPruningConfig` fields (None: the library's default, or the recipe's).
        learning_rate, warmup_ratio: the optimiser's schedule (cosine).
        eval_batch_size: batch size of evaluation (left padding).
        pictures: test images pictured with the patches each module keeps (two questions each).
        timing_batch, timing_repeats: prompts per timed prefill and timed runs per variant.
        speed_model: the model of the second speed comparison (`lvpeft.demo.cost.llava_shaped_speed`):
            "llava-1.5-shaped" (`lvpeft bench`'s default random-weight model, LLaVA-1.5's token counts),
            "tiny" (a stand-in for tests) or None (skipped).
        speed_repeats, speed_warmup, speed_new_tokens: its timed and untimed prefill rounds and the
            tokens its `generate()` adds.
        reload_examples: test questions the reloaded adapter must answer identically.
        seed: seeds data order, module initialisation and Gumbel noise.
    """

    train_steps: int = 200
    batch_size: int = 16
    test_examples: int = 300
    keep: float = 0.1
    other_keeps: tuple[float, ...] = (0.05, 0.2, 0.3, 0.5)
    baselines_at_every_keep: bool = True
    layers: tuple[int, ...] | None = None
    keep_schedule: tuple[float, ...] | None = None
    pruner_dim: int | str | None = None
    gumbel_temperature: float = 1.0
    recipe: str = "lvpeft"
    ratio_loss_weight: float | None = None
    distill_weight: float | None = None
    attention_distill_weight: float | None = None
    teacher_rank_weight: float | None = None
    training_decisions: str | None = None
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    eval_batch_size: int = 50
    pictures: int = 2
    timing_batch: int = 16
    timing_repeats: int = 10
    speed_model: str | None = "llava-1.5-shaped"
    speed_repeats: int = 7
    speed_warmup: int = 2
    speed_new_tokens: int = 16
    reload_examples: int = 50
    seed: int = 0

    @property
    def train_examples(self) -> int:
        """Training scenes: one epoch of `train_steps` batches."""
        return self.train_steps * self.batch_size


DEFAULT_SETTINGS = DemoSettings()
"""`lvpeft demo`: about 6 minutes on two CPU cores (image-first base)."""
QUICK_SETTINGS = replace(
    DEFAULT_SETTINGS,
    train_steps=60,
    test_examples=150,
    other_keeps=(0.05, 0.3),
    baselines_at_every_keep=False,
    pictures=1,
    timing_repeats=5,
    speed_repeats=5,
    speed_warmup=1,
    reload_examples=20,
)
"""`lvpeft demo --quick`: about 2 minutes on two CPU cores (image-first base)."""

DEFAULT_BASE: str = "image-first"
"""The shipped base `lvpeft demo` runs on: LLaVA-1.5's token order, where which vision tokens survive
decides the answer (`lvpeft.demo.tiny_model.SHIPPED_BASES`)."""

SCORERS: tuple[str, ...] = ("random", "uniform", "fastv")
"""Training-free baselines compared at the adapter's positions and budget
(`lvpeft.pruning.scorers.BASELINES`)."""
