"""How far is a trained demo adapter from a pruner that always keeps the evidence?

The scenes generator knows which patches hold each answer's evidence (`VQAExample.region`). This
script scores questions with the base model, the trained adapter, FastV, and three "evidence first"
pruners at the same positions and budget: each ranks every alive evidence patch first and fills the
rest of the budget with the adapter's own ranking, a random one or a uniform one. The gap between
"evidence first, then the adapter" and the adapter alone is what the adapter loses by ranking the
evidence wrongly; the gap between the base and "evidence first" is what this base model loses on
short views even when the evidence is there. It also prints what the adapter's final kept set is made
of (evidence, patches of other objects, background), split by right and wrong answers.

    lvpeft demo --out lvpeft-demo
    python scripts/evidence_ceiling.py --adapter lvpeft-demo/adapter --split validation --examples 1000

A diagnostic, not a pruner: it reads the answers' annotations, which real data does not have.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

import lvpeft
from lvpeft.demo.evaluation import evaluate, kept_patches, scorer_variants
from lvpeft.demo.questions import VQAExample, make_split
from lvpeft.demo.tiny_model import generate_answers, load_base
from lvpeft.pruning.scorers import LearnedScorer, RandomScorer, Scorer, ScoringContext, UniformScorer
from lvpeft.tuner.model import lvpruning_tuner

EVIDENCE_BONUS = 1e4
"""Added to the keep logit of evidence patches: larger than any score the fill scorers give."""


class EvidenceFirst:
    """Ranks the alive evidence patches of each row first, then the rest by `fill`'s scores.

    The modules of one forward share `regions` (flat patch indices per row, set before each batch)
    and the first vision position of each row, read at the first module, where every vision token
    is alive.
    """

    def __init__(self, fill: Scorer, stage: int, shared: dict[str, Any]) -> None:
        self.fill, self.stage, self.shared = fill, stage, shared

    def __call__(self, context: ScoringContext) -> torch.Tensor:
        """(B, L, 2) logits: `fill`'s, plus `EVIDENCE_BONUS` on the keep logit of evidence patches."""
        logits = self.fill(context).clone()
        positions = context.positions
        if self.stage == 0:
            far = torch.full_like(positions, torch.iinfo(positions.dtype).max)
            self.shared["first"] = torch.where(context.candidates, positions, far).min(dim=1).values
        patch = positions - self.shared["first"][:, None]  # (B, L) patch index of vision slots
        bonus = torch.zeros(patch.shape, dtype=torch.float32)
        for row, region in enumerate(self.shared["regions"]):
            if region:
                bonus[row] = torch.isin(patch[row], torch.tensor(region)).float() * EVIDENCE_BONUS
        logits[..., 0] += (bonus * context.candidates).to(logits.device)
        return logits


def accuracy_with(
    model: Any, processor: Any, examples: Sequence[VQAExample], make_fill: Callable[[int], Scorer]
) -> tuple[float, dict[str, float]]:
    """Exact-match accuracy (overall, per kind) with `EvidenceFirst(make_fill(s))` at every module."""
    tuner = lvpruning_tuner(model)
    shared: dict[str, Any] = {}
    scorers = [EvidenceFirst(make_fill(s), s, shared) for s in range(len(tuner.active_config.layers))]
    hits: dict[str, list[bool]] = defaultdict(list)
    with tuner.use_scorers(scorers):
        for start in range(0, len(examples), 50):
            chunk = examples[start : start + 50]
            shared["regions"] = [list(e.region) for e in chunk]
            answers = generate_answers(
                model, processor, [e.image for e in chunk], [e.question for e in chunk]
            )
            for example, answer in zip(chunk, answers, strict=True):
                hits[example.kind].append(answer == example.answer)
    every = [h for v in hits.values() for h in v]
    return sum(every) / len(every), {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def composition(model: Any, processor: Any, examples: Sequence[VQAExample], answers: Sequence[str]) -> None:
    """Print the mean make-up of the adapter's final kept set, by question kind and right/wrong."""
    kept = kept_patches(model, processor, [e.image for e in examples], [e.question for e in examples])
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for example, answer, modules in zip(examples, answers, kept, strict=True):
        labels, region = example.patch_labels.reshape(-1), set(example.region)
        last = modules[-1]
        evidence = sum(p in region for p in last)
        objects = sum(p not in region and labels[p] > 0 for p in last)
        row = totals[f"{'right' if answer == example.answer else 'wrong'} {example.kind}"]
        for i, value in enumerate((1, evidence, objects, len(last) - evidence - objects)):
            row[i] += value
    print("adapter's final kept set, mean patches: evidence / other objects / background")
    for key, (n, evidence, objects, background) in sorted(totals.items()):
        print(f"  {key:<24} n={int(n):4d}  {evidence / n:4.1f} / {objects / n:4.1f} / {background / n:4.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", default="lvpeft-demo/adapter", help="a trained demo adapter folder")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, processor = load_base()
    model = lvpeft.from_pretrained(args.adapter, base_model=base).eval()
    examples = make_split(args.split, args.examples, seed=0)
    tuner = lvpruning_tuner(model)
    layers = tuner.active_config.layers
    modules = tuner.decision_modules()

    rows: dict[str, tuple[float, dict[str, float]]] = {}
    with model.disable_adapter():
        rows["base (unpruned)"] = (r := evaluate(model, processor, examples)).accuracy, r.per_kind
    learned = evaluate(model, processor, examples)
    rows["adapter"] = learned.accuracy, learned.per_kind
    with scorer_variants(model)["fastv"]():
        rows["FastV-style"] = (r := evaluate(model, processor, examples)).accuracy, r.per_kind
    fills: dict[str, Callable[[int], Scorer]] = {
        "adapter": lambda s: LearnedScorer(modules[s]),
        "random": lambda s: RandomScorer(),
        "uniform": lambda s: UniformScorer(),
    }
    for name, make_fill in fills.items():
        rows[f"evidence first, then {name}"] = accuracy_with(model, processor, examples, make_fill)
    base_accuracy = rows["base (unpruned)"][0]
    print(f"{args.examples} {args.split} questions, keep {tuner.active_config.keep}, modules before {layers}")
    for name, (accuracy, per_kind) in rows.items():
        kinds = "  ".join(f"{k} {v:.3f}" for k, v in per_kind.items())
        print(f"  {name:<30} {accuracy:.3f} ({accuracy / base_accuracy:6.1%} of base)  {kinds}")
    composition(model, processor, examples, learned.answers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
