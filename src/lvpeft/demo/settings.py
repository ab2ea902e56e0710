"""The demo's settings: `DemoSettings`, the full run (`DEFAULT_SETTINGS`, about ten minutes on a CPU) and
`lvpeft demo --quick` (`QUICK_SETTINGS`). Why each value is what it is: docs/demo-findings.md."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and measures.

    The defaults fit the whole run into about 4 minutes on two CPU cores (`QUICK_SETTINGS`: about
    1 minute). Why these values (`scripts/demo_ablation.py` on the shipped base, 300 test questions,
    accuracy at keep 0.1; the base model answers 95.3 % of them unpruned):

    - `ratio_loss_weight=20`: with DynamicViT's 2 the distillation term wins and the last module
      keeps ~15 % of the tokens in training while inference keeps exactly 10 % (91.3 %); 20 holds
      training near the schedule (91.7 %); 100 over-constrains it (79 % on an earlier base).
    - `distill_weight=1.0`: the unpruned model's next-token distribution is the signal that teaches
      the modules what the answer needs; with the LM loss alone the modules learned to keep 31 % of
      the evidence patches instead of 84 % and answered 64 % (earlier base, ratio weight 20).
    - `pruner_dim=None`: the library's light default (d/8, at least 64: 64 here); the paper's
      C = d = 128 (`"paper"`) answered 90.0 %, no better.
    - `learning_rate=3e-3`, cosine, 5 % warm-up, 200 steps of 16: a tiny model wants ~1e-3 (2e-6 is the
      paper's for 7B); 1e-3 answered 82.3 % against 84.0 % for 3e-3 (earlier base); on the shipped
      base, 1,000 validation questions: 1e-3 89.4 %, 3e-3 89.7 %, 1e-2 85.1 %.
    - `gumbel_temperature=1.0`: DynamicViT's value, which the paper follows.
    - the answer hidden from the modules in training (the library default,
      `hide_answer_from_modules`): 92.0 % against 91.7 % with the paper's visible answer; on 1,000
      validation questions 89.9 / 90.1 % against 89.7 / 89.6 % (seeds 0 / 1).
    - `attention_distill_weight=0.2`: the last module also learns to rank what the model itself reads
      (the last prompt token's attention at that layer). Without it the last module keeps the
      evidence but orders the objects of a crowded scene at random, since per-token training
      decisions let it keep them all; 1,000 validation questions, seeds 0 / 1 / 2: 92.7 / 91.2 /
      91.1 % against 89.9 / 90.1 / 88.7 % (weight 1: 88.8 %); the demo's test split: 93.7 % against
      92.0 %.

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
    learning_rate: float = 3e-3
    warmup_ratio: float = 0.05
    eval_batch_size: int = 50
    pictures: int = 2
    timing_batch: int = 16
    timing_repeats: int = 10
    reload_examples: int = 50
    seed: int = 0

    @property
    def train_examples(self) -> int:
        """Training scenes: one epoch of `train_steps` batches."""
        return self.train_steps * self.batch_size


DEFAULT_SETTINGS = DemoSettings()
"""`lvpeft demo`: about 4 minutes on two CPU cores."""
QUICK_SETTINGS = replace(
    DEFAULT_SETTINGS,
    train_steps=60,
    test_examples=150,
    other_keeps=(0.05, 0.3),
    baselines_at_every_keep=False,
    pictures=1,
    timing_repeats=5,
    reload_examples=20,
)
"""`lvpeft demo --quick`: about 1 minute on two CPU cores."""

DEFAULT_BASE: str = "image-first"
"""The shipped base `lvpeft demo` runs on: LLaVA-1.5's token order, where which vision tokens survive
decides the answer (`lvpeft.demo.tiny_model.SHIPPED_BASES`)."""

SCORERS: tuple[str, ...] = ("random", "uniform", "fastv")
"""Training-free baselines compared at the adapter's positions and budget
(`lvpeft.pruning.scorers.BASELINES`)."""
