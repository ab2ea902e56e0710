"""The training recipes an LVPruning config can name (`LVPruningConfig.recipe`)."""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "lvpeft": {
        "distill_weight": 0.0,
        "attention_distill_weight": 0.0,
        "teacher_rank_weight": 1.0,
        "training_decisions": "top_k",
        "hide_answer_from_modules": True,
        "merge_dropped": True,
    },
    "paper": {
        "distill_weight": 0.0,
        "attention_distill_weight": 0.0,
        "teacher_rank_weight": 0.0,
        "training_decisions": "gumbel",
        "hide_answer_from_modules": False,
        "merge_dropped": False,
    },
}
"""The training recipes `LVPruningConfig.recipe` selects: the value of every recipe-dependent field left
at None. "paper" is LVPruning as published (LM + keep-ratio loss, per-token Gumbel decisions, modules
that see the answer, dropped tokens removed); "lvpeft" is the library's default (see docs/recipe.md for
the measurements)."""
