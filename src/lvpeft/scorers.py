"""Scorers: who decides which vision tokens are worth keeping.

A scorer looks at the hidden states entering decoder layer `p_s` and returns keep/drop logits for
every slot; only the candidate slots (alive vision tokens) are read. The pruning machinery in
`pruning.py` is the same whatever the scorer, so the learned LVPruning module and training-free
baselines differ only here.

Shapes: B batch, L slots, d hidden size.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .layer import DecisionModule
from .tokens import gather_slots, pack, scatter_slots


class Scorer(Protocol):
    """Maps the hidden states before a pruning layer to (keep, drop) logits per slot."""

    def __call__(
        self, hidden: torch.Tensor, candidates: torch.Tensor, language: torch.Tensor
    ) -> torch.Tensor:
        """hidden (B, L, d); candidates, language (B, L) bool -> logits (B, L, 2) float32."""
        ...


class LearnedScorer:
    """LVPruning's scorer: the decision module's cross-attention from vision to language tokens."""

    def __init__(self, module: DecisionModule) -> None:
        self.module = module

    def __call__(
        self, hidden: torch.Tensor, candidates: torch.Tensor, language: torch.Tensor
    ) -> torch.Tensor:
        """Pack candidates and language tokens per row, score, and scatter back to slots."""
        v_index, v_valid = pack(candidates)  # (B, Nv)
        t_index, t_valid = pack(language)  # (B, T)
        logits = self.module(gather_slots(hidden, v_index), gather_slots(hidden, t_index), t_valid)
        return scatter_slots(logits, v_index, v_valid, hidden.shape[1])
