"""Scorers, one per file on the shared `base_scorer.py`: the learned LVPruning module and the
training-free baselines, which the pruning machinery applies at the same positions and budget."""

from .base_scorer import Scorer, ScoringContext, as_logits, query_attention
from .fastv_scorer import FastVScorer
from .learned_scorer import LearnedScorer
from .random_scorer import RandomScorer
from .uniform_scorer import UniformScorer

BASELINES: dict[str, type] = {"random": RandomScorer, "uniform": UniformScorer, "fastv": FastVScorer}
"""The training-free baselines by name (`lvpeft bench --scorer`, the demo's comparison)."""

__all__ = [
    "BASELINES",
    "FastVScorer",
    "LearnedScorer",
    "RandomScorer",
    "Scorer",
    "ScoringContext",
    "UniformScorer",
    "as_logits",
    "query_attention",
]
