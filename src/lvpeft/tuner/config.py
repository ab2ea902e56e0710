"""`LVPruningConfig`: the PEFT config of an LVPruning adapter.

Every field is validated when the config is built, which is also what happens when a saved
`adapter_config.json` is loaded (`PeftConfig.from_pretrained` builds the dataclass), so a bad value
fails with the field, the value and the valid range before any weight is touched.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from peft import PeftConfig

from ..pruning.placement import default_layers
from .card import CardFacts, write_model_card
from .flops import FlopsReport, estimate_flops
from .layer import PAPER_PRUNER_DIM, resolve_pruner_dim
from .recipes import RECIPES
from .registration import PEFT_TYPE


def _fail(name: str, value: object, valid: str) -> None:
    raise ValueError(f"LVPruningConfig.{name} must be {valid}, got {value!r}.")


@dataclass
class LVPruningConfig(PeftConfig):
    """Configuration of an LVPruning adapter (learned, language-guided vision-token pruning).

    The adapter inserts one small *decision module* before each of a few decoder layers of a LLaVA
    model's language model. Module `s` scores the vision tokens still alive by cross-attention to the
    language tokens and keeps the top `round(keep_schedule[s] * n_vision)` of them, where
    `n_vision` is the sample's ORIGINAL number of vision tokens. Dropped tokens stay dropped.

    Example: `LVPruningConfig(keep=0.1)` on a 32-layer model places modules before layers 1, 8, 16
    keeping 50 %, 30 %, 10 % of the vision tokens: the paper's trained setting (rho = 0.5).
    """

    keep: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of a sample's vision tokens left after the last pruning module, in (0, 1]. "
            "Can be changed after training (`set_keep`), as the paper does at inference."
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Position of each pruning module, counted as the number of decoder layers before it "
            "(paper: [1, 8, 16] for 32 layers). Strictly increasing, each in [1, num_layers - 1]. "
            "None scales the paper's placement to the model's depth (see `resolve_layers`)."
        },
    )
    num_modules: int = field(
        default=3,
        metadata={"help": "Number of pruning modules when `layers` is None (paper: 3)."},
    )
    keep_schedule: list[float] | None = field(
        default=None,
        metadata={
            "help": "Keep ratio after each module, relative to the ORIGINAL vision-token count; "
            "non-increasing, each in (0, 1], the last equal to `keep`. None gives the paper's progressive "
            "schedule [keep + (S-1)*step, ..., keep + step, keep] capped at 1."
        },
    )
    schedule_step: float = field(
        default=0.2,
        metadata={"help": "Difference between consecutive keep ratios of the default schedule (paper: 0.2)."},
    )
    pruner_dim: int | str | None = field(
        default=None,
        metadata={
            "help": "Inner width C of the decision modules (queries, keys and values are projected to it). "
            "None: the light default d/8 (at least 64, at most d; 512 for a 7B model, 0.13 % of its FLOPs); "
            "'paper': C = d as in the paper (~0.8B parameters, 4.3 % of the FLOPs for LLaVA-1.5-7B); "
            "or an integer."
        },
    )
    pruner_heads: int = field(
        default=8, metadata={"help": "Attention heads of each cross-attention block (paper: 8)."}
    )
    pruner_blocks: int = field(
        default=2, metadata={"help": "Cross-attention blocks per decision module (paper: 2)."}
    )
    pruner_ffn_mult: int = field(
        default=2, metadata={"help": "FFN expansion of each block: Linear(C, mult*C) (paper: 2)."}
    )
    gumbel_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature of the hard Gumbel-Softmax used in training (not in the paper; "
            "DynamicViT, which LVPruning follows, uses 1)."
        },
    )
    ratio_loss_weight: float = field(
        default=2.0,
        metadata={
            "help": "Weight lambda_ratio of the keep-ratio loss (not in the paper; DynamicViT uses 2)."
        },
    )
    lm_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight lambda_lm of the language-modelling loss."}
    )
    recipe: str = field(
        default="lvpeft",
        metadata={
            "help": "Training recipe: 'lvpeft' (the default) or 'paper' (LVPruning as published: LM and "
            "keep-ratio losses only, per-token Gumbel decisions, modules that see the answer). Sets every "
            "recipe-dependent field left at None (`RECIPES`); a value you pass explicitly wins."
        },
    )
    distill_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of an optional distillation term, KL(unpruned || pruned) of the next-token "
            "distributions on the trained positions (not in the paper); 0 turns it off. None: the recipe's."
        },
    )
    teacher_rank_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the teacher-ranking term (not in the paper): for EVERY module, a listwise "
            "KL(importance || softmax(scores)) over the surviving vision tokens, where a token's importance "
            "is what the unpruned model's layers from the module's position on read from it for this "
            "question (value-weighted attention of the answer-producing positions; computed in one "
            "no-grad pass with the adapter disabled). 0 turns it off. None: the recipe's (lvpeft: 1)."
        },
    )
    training_decisions: str | None = field(
        default=None,
        metadata={
            "help": "How modules decide in training: 'gumbel' (the paper: an independent hard "
            "Gumbel-Softmax decision per token, the keep-ratio loss steering the count) or 'top_k' "
            "(exactly the inference budget, Gumbel-top-k with a straight-through gradient). "
            "None: the recipe's (lvpeft: 'top_k', paper: 'gumbel')."
        },
    )
    attention_distill_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of an optional listwise term on the LAST module (not in the paper): "
            "KL(attention || softmax(scores)) between the attention the last prompt token pays to the "
            "surviving vision tokens at that layer (heads averaged, FastV's signal, no gradient) and the "
            "module's keep scores, so that the module also ranks what the model itself reads; 0 turns it "
            "off. None: the recipe's."
        },
    )
    hide_answer_from_modules: bool | None = field(
        default=None,
        metadata={
            "help": "Training: the decision modules attend only to the prompt's language tokens, not to the "
            "teacher-forced answer (the tokens with labels), as at inference, where the answer does not "
            "exist yet when the modules run. The paper's modules attend to every non-vision token, the "
            "answer included (False). None: the recipe's (lvpeft: True, paper: False)."
        },
    )
    merge_dropped: bool | None = field(
        default=None,
        metadata={
            "help": "Each vision token a module drops is merged into the kept vision token most "
            "similar to it (cosine of hidden states): the kept token's state becomes their mass-weighted "
            "mean and later layers add log(mass) to its attention logit, so the kept tokens still weigh as "
            "much as what they stand for (token merging, ToMe; not in the paper, which drops them). In "
            "training too. "
            "None: the recipe's (lvpeft: True, paper: False)."
        },
    )
    base_text_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden size of the base language model; recorded on injection and checked on load."
        },
    )
    base_text_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Decoder depth of the base language model; recorded on injection, checked on load."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self.validate()

    def __new__(cls, *args: Any, **kwargs: Any) -> LVPruningConfig:
        # PEFT builds a loaded config with `config_cls(**json)` and, on a TypeError about an unexpected
        # keyword, drops the unknown fields with a warning. A typo'd field would then silently fall back to
        # its default, so refuse unknown fields here, with a ValueError PEFT does not catch.
        unknown = sorted(set(kwargs) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"LVPruningConfig got unknown fields {unknown}: the adapter config was written by another "
                "version of lvpeft or edited by hand. Remove them, or upgrade lvpeft."
            )
        return super().__new__(cls)

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """PEFT's hook on a loaded `adapter_config.json`: an adapter saved before `merge_dropped` existed
        was trained and measured dropping tokens, and keeps doing so (not the recipe's new default)."""
        kwargs = super().check_kwargs(**kwargs)
        if "merge_dropped" not in kwargs:
            kwargs["merge_dropped"] = False
        return kwargs

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save `adapter_config.json`; when the folder holds a model card (as `PeftModel.save_pretrained`
        and `push_to_hub` write one), turn it into the LVPruning card (see `lvpeft.tuner.card`)."""
        super().save_pretrained(save_directory, **kwargs)
        if os.path.exists(os.path.join(save_directory, "README.md")):
            write_model_card(save_directory, self.card_facts())

    def card_facts(self) -> CardFacts:
        """What the model card says about this adapter."""
        return CardFacts(
            base_model=self.base_model_name_or_path,
            keep=self.keep,
            layers=self.layers,
            schedule=self.resolve_schedule(),
            pruner_dim=self.resolve_pruner_dim(self.base_text_hidden_size)
            if self.base_text_hidden_size
            else self.pruner_dim,
            pruner_heads=self.pruner_heads,
            pruner_blocks=self.pruner_blocks,
            pruner_ffn_mult=self.pruner_ffn_mult,
            training=self.training_summary(),
            hidden_size=self.base_text_hidden_size,
            model_config=getattr(self, "_base_model_config", None),
        )

    def training_summary(self) -> str:
        """One sentence on how the modules are trained: the recipe, the decisions, the loss terms."""
        if self.training_decisions == "top_k":
            decisions = "exactly the inference budget per module (Gumbel-top-k, straight-through)"
        else:
            decisions = f"a hard Gumbel-Softmax decision per token (temperature {self.gumbel_temperature:g})"
        terms = [f"LM (weight {self.lm_loss_weight:g})", f"keep ratio ({self.ratio_loss_weight:g})"]
        extra = {
            "teacher ranking": self.teacher_rank_weight,
            "distillation": self.distill_weight,
            "last-module attention ranking": self.attention_distill_weight,
        }
        terms += [f"{name} ({weight:g})" for name, weight in extra.items() if weight]
        answer = "hidden from" if self.hide_answer_from_modules else "visible to"
        dropped = (
            "merged into the most similar kept token (mass-weighted states, proportional attention)"
            if self.merge_dropped
            else "removed"
        )
        return (
            f"the `{self.recipe}` recipe: {decisions}; losses {', '.join(terms)}; "
            f"the trained answer {answer} the modules; dropped tokens {dropped}"
        )

    def estimate_flops(self, model_config: Any, text_tokens: int = 30) -> FlopsReport:
        """Analytic prefill FLOPs of the base model `model_config` (a `LlavaConfig`) on one image and
        `text_tokens` text tokens, without and with this adapter (`lvpeft.tuner.flops.estimate_flops`)."""
        return estimate_flops(
            model_config,
            text_tokens=text_tokens,
            layers=self.layers,
            schedule=self.resolve_schedule(),
            pruner_dim=self.pruner_dim,
            pruner_heads=self.pruner_heads,
            pruner_blocks=self.pruner_blocks,
            pruner_ffn_mult=self.pruner_ffn_mult,
        )

    # -- validation -------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every field; raise `ValueError` naming the field, the value and the valid range.
        Fills the recipe-dependent fields left at None from `RECIPES[recipe]`."""
        if self.recipe not in RECIPES:
            _fail("recipe", self.recipe, f"one of {sorted(RECIPES)}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if not isinstance(self.merge_dropped, bool):
            _fail("merge_dropped", self.merge_dropped, "True or False")
        if self.training_decisions not in ("gumbel", "top_k"):
            _fail("training_decisions", self.training_decisions, "'gumbel' or 'top_k'")
        if not _is_number(self.keep) or not 0.0 < self.keep <= 1.0:
            _fail("keep", self.keep, "a number in (0, 1]")
        if not _is_int(self.num_modules) or self.num_modules < 1:
            _fail("num_modules", self.num_modules, "an integer >= 1")
        if not _is_number(self.schedule_step) or not 0.0 <= self.schedule_step < 1.0:
            _fail("schedule_step", self.schedule_step, "a number in [0, 1)")
        if self.layers is not None:
            self.layers = list(self.layers)
            if not self.layers or not all(_is_int(p) and p >= 1 for p in self.layers):
                _fail("layers", self.layers, "a non-empty list of integers >= 1 (layer 0 is never pruned)")
            if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
                _fail("layers", self.layers, "strictly increasing")
            self.num_modules = len(self.layers)
        if self.keep_schedule is not None:
            self.keep_schedule = [float(r) for r in self.keep_schedule]
            sched = self.keep_schedule
            if not all(0.0 < r <= 1.0 for r in sched):
                _fail("keep_schedule", sched, "a list of ratios in (0, 1]")
            if any(b > a for a, b in itertools.pairwise(sched)):
                _fail("keep_schedule", sched, "non-increasing (a dropped token stays dropped)")
            if self.layers is not None and len(sched) != len(self.layers):
                _fail("keep_schedule", sched, f"one ratio per module ({len(self.layers)} layers given)")
            if not math.isclose(sched[-1], self.keep, abs_tol=1e-9):
                _fail("keep_schedule", sched, f"a schedule ending at keep={self.keep}")
            self.num_modules = len(sched)
        dim = self.pruner_dim
        if dim is not None and dim != PAPER_PRUNER_DIM and (not _is_int(dim) or dim < 1):
            _fail("pruner_dim", dim, f"None, {PAPER_PRUNER_DIM!r} or an integer >= 1")
        if not _is_int(self.pruner_heads) or self.pruner_heads < 1:
            _fail("pruner_heads", self.pruner_heads, "an integer >= 1")
        if _is_int(dim) and dim % self.pruner_heads:
            _fail("pruner_dim", self.pruner_dim, f"divisible by pruner_heads={self.pruner_heads}")
        if not _is_int(self.pruner_blocks) or self.pruner_blocks < 1:
            _fail("pruner_blocks", self.pruner_blocks, "an integer >= 1")
        if not _is_int(self.pruner_ffn_mult) or self.pruner_ffn_mult < 1:
            _fail("pruner_ffn_mult", self.pruner_ffn_mult, "an integer >= 1")
        if not _is_number(self.gumbel_temperature) or self.gumbel_temperature <= 0:
            _fail("gumbel_temperature", self.gumbel_temperature, "a number > 0")
        weights = ("ratio_loss_weight", "lm_loss_weight", "distill_weight", "attention_distill_weight")
        for name in (*weights, "teacher_rank_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, value, "a number >= 0")
        if not isinstance(self.hide_answer_from_modules, bool):
            _fail("hide_answer_from_modules", self.hide_answer_from_modules, "True or False")
        for name in ("base_text_hidden_size", "base_text_num_layers"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                _fail(name, value, "None or an integer >= 1")

    # -- resolution against a model ---------------------------------------------------------------

    def resolve_layers(self, num_layers: int) -> list[int]:
        """Module positions for a decoder of depth `num_layers`.

        Explicit `layers` are checked against the depth. The default scales the paper's placement
        (1, 8, 16 of 32) to the depth, rounds, and pushes collisions apart: 32 → [1, 8, 16],
        6 → [1, 2, 3], 40 → [1, 10, 20].

        Raises:
            ValueError: a position is past the model's depth, or the model is too shallow.
        """
        if self.layers is not None:
            bad = [p for p in self.layers if p > num_layers - 1]
            if bad:
                raise ValueError(
                    f"LVPruningConfig.layers={self.layers} places a module after layer {bad[0]}, but the "
                    f"language model has {num_layers} decoder layers: each position must be in "
                    f"[1, {num_layers - 1}] (a module needs at least one layer after it)."
                )
            return list(self.layers)
        return default_layers(num_layers, self.num_modules)

    def resolve_pruner_dim(self, hidden_size: int) -> int:
        """The decision modules' width C for a language model of width `hidden_size`."""
        return resolve_pruner_dim(self.pruner_dim, hidden_size, self.pruner_heads)

    def resolve_schedule(self) -> list[float]:
        """Keep ratio after each module, relative to the original number of vision tokens."""
        if self.keep_schedule is not None:
            return list(self.keep_schedule)
        s = self.num_modules
        return [min(1.0, round(self.keep + self.schedule_step * (s - 1 - i), 10)) for i in range(s)]

    def with_keep(self, keep: float) -> list[float]:
        """This config's schedule shifted so that it ends at `keep` (offsets preserved, capped to
        [keep, 1]). Does not modify the config."""
        if not _is_number(keep) or not 0.0 < keep <= 1.0:
            _fail("keep", keep, "a number in (0, 1]")
        shift = keep - self.keep
        return [*[min(1.0, max(keep, round(r + shift, 10))) for r in self.resolve_schedule()][:-1], keep]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
