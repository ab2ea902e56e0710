"""What the active adapter asks of one forward (`PruningPlan`), and what the last prefill decided
(`PruningStats`). Shapes: B batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from .scorers.base_scorer import Scorer


class PruneMode(str, Enum):
    """How eval-mode decisions are applied."""

    REMOVE = "remove"  # gather the kept tokens into a shorter sequence (the real speed-up)
    MASK = "mask"  # keep shapes, mask dropped tokens out of attention (the reference)


@dataclass
class PruningPlan:
    """What the active adapter asks for in this forward.

    Attributes:
        positions: decoder-layer index before which each module runs (strictly increasing, >= 1).
        ratios: keep ratio after each module, relative to the original vision-token count.
        scorers: one scorer per module.
        mode: how eval-mode decisions are applied.
        training: use hard Gumbel-Softmax decisions and the masked softmax (no removal).
        temperature: Gumbel-Softmax temperature.
        attention_distill: training: compute `PruningStats.attention_loss` at the last module.
        exact_budget: training: keep exactly each module's budget (`decisions.gumbel_top_k`) instead
            of independent per-token Gumbel-Softmax decisions.
        merge_dropped: every vision token a module drops is merged into its most similar kept vision
            token (mass-weighted mean of hidden states; later layers weight each key's attention by its
            mass; `mass.py`).
    """

    positions: list[int]
    ratios: list[float]
    scorers: list[Scorer]
    mode: PruneMode = PruneMode.REMOVE
    training: bool = False
    temperature: float = 1.0
    attention_distill: bool = False
    exact_budget: bool = False
    merge_dropped: bool = False

    def stage_of(self, layer: int) -> int:
        """Index of the last module at or before decoder layer `layer` (-1 if none)."""
        stage = -1
        for s, p in enumerate(self.positions):
            if p <= layer:
                stage = s
        return stage


@dataclass
class PruningStats:
    """What the last prefill (a forward over a new prompt) decided, for trainers and logging.

    Attributes:
        ratio_loss: scalar, the keep-ratio loss of the last training forward (None in eval).
        keep_ratios: per module, the realised fraction of original vision tokens kept
            (mean over samples that have vision tokens).
        attention_loss: scalar, the last module's attention-ranking loss of the last training forward
            (`decisions.attention_rank_loss`; None unless the plan asks for it).
        module_scores: training: per module, its keep scores (B, L) float (in the autograd graph) and
            the (B, L) bool vision slots it ranked that were still alive; the trainer's
            teacher-ranking term reads them. Empty in eval.
    """

    ratio_loss: torch.Tensor | None = None
    keep_ratios: list[float] = field(default_factory=list)
    attention_loss: torch.Tensor | None = None
    module_scores: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
