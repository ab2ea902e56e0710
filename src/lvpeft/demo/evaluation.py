"""Steps 4 and 5 of the demo: exact-match accuracy of the base, the adapter, the training-free baselines
and other keep ratios on the test questions; how much of each answer's evidence survives; pictures of
what every module keeps. Shapes: B batch, S modules, P patches per image."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .settings import SCORERS, DemoSettings

if TYPE_CHECKING:  # types only
    from .questions import Question, VQAExample
    from .scenes import SceneConfig


@dataclass
class Evaluation:
    """Exact-match results of one model variant on a list of questions.

    Attributes:
        accuracy: share of exact matches.
        per_kind: accuracy per question kind.
        answers: the generated answers, in order.
    """

    accuracy: float
    per_kind: dict[str, float]
    answers: list[str]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def evaluate(model: Any, processor: Any, examples: Sequence[VQAExample], batch_size: int = 50) -> Evaluation:
    """Greedy `generate()` in left-padded batches, exact match of the stripped answer."""
    from .tiny_model import generate_answers

    answers: list[str] = []
    for chunk in _batches(examples, batch_size):
        answers += generate_answers(model, processor, [e.image for e in chunk], [e.question for e in chunk])
    hits: dict[str, list[bool]] = {}
    for example, answer in zip(examples, answers, strict=True):
        hits.setdefault(example.kind, []).append(answer == example.answer)
    every = [h for v in hits.values() for h in v]
    return Evaluation(
        accuracy=sum(every) / max(1, len(every)),
        per_kind={k: sum(v) / len(v) for k, v in sorted(hits.items())},
        answers=answers,
    )


@torch.no_grad()
def kept_patches(
    model: Any, processor: Any, images: Sequence[Any], questions: Sequence[str], batch_size: int = 50
) -> list[list[list[int]]]:
    """Which patches each module keeps: per example, per module, sorted row-major patch indices.

    Read from the decoder: kept tokens keep their ORIGINAL position ids, so the vision positions
    present in the `position_ids` a layer right after module `s` receives are the patches alive
    after it (forward pre-hooks, registered after the pruning hooks, see the KV-cache test
    `test_kept_tokens_keep_their_original_positions`). Layer 0 is never pruned and gives every
    slot's position.
    """
    from ..pruning.architecture import find_llava_parts
    from ..tuner.model import lvpruning_tuner
    from .tiny_model import build_prompts

    positions = list(lvpruning_tuner(model).active_config.layers)
    parts = find_llava_parts(model.get_base_model())
    seen: dict[int, torch.Tensor] = {}

    def recorder(index: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if kwargs.get("position_ids") is None:
                raise RuntimeError("the decoder layers receive no position_ids; cannot read the kept tokens")
            seen[index] = kwargs["position_ids"]

        return hook

    handles = [
        parts.layers[i].register_forward_pre_hook(recorder(i), with_kwargs=True) for i in [0, *positions]
    ]
    out: list[list[list[int]]] = []
    try:
        for start in range(0, len(images), batch_size):
            texts = build_prompts(processor, questions[start : start + batch_size])
            inputs = processor(
                images=list(images[start : start + batch_size]), text=texts, padding=True, return_tensors="pt"
            )
            seen.clear()
            model(**inputs, use_cache=False, logits_to_keep=1)
            ids = inputs["input_ids"]
            alive = [seen[i].expand(ids.shape[0], -1).tolist() for i in positions]  # S x (B, L_s)
            reference = seen[0].expand(ids.shape[0], -1)  # (B, L) position of every slot
            for b in range(ids.shape[0]):
                vision = reference[b][ids[b] == parts.image_token_id].tolist()  # (P,) contiguous positions
                first, vision_set = vision[0], set(vision)
                out.append([sorted(p - first for p in set(rows[b]) & vision_set) for rows in alive])
    finally:
        for handle in handles:
            handle.remove()
    return out


def evidence_kept(kept: Sequence[Sequence[Sequence[int]]], examples: Sequence[VQAExample]) -> float:
    """Mean share of each question's evidence patches alive after the last module (questions that
    have evidence only)."""
    shares = [
        len(set(k[-1]) & set(e.region)) / len(e.region)
        for k, e in zip(kept, examples, strict=True)
        if e.region
    ]
    return float(np.mean(shares)) if shares else float("nan")


def keep_key(keep: float) -> str:
    """The report's key for a keep ratio (`0.1` -> "0.1")."""
    return f"{keep:g}"


@contextlib.contextmanager
def keep_ratio(model: Any, keep: float) -> Iterator[list[float]]:
    """Within the block the adapter prunes to `keep` (`set_keep`); the old keep is restored after."""
    from ..tuner.model import lvpruning_tuner

    tuner = lvpruning_tuner(model)
    previous = tuner.active_config.keep
    try:
        yield tuner.set_keep(keep)
    finally:
        tuner.set_keep(previous)


def scorer_variants(model: Any) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """`{name: context}`: the learned modules and each baseline (one scorer instance per module)."""
    from ..pruning.scorers import BASELINES
    from ..tuner.model import lvpruning_tuner

    tuner = lvpruning_tuner(model)
    modules = len(tuner.active_config.layers)
    variants: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
        "lvpruning": contextlib.nullcontext
    }
    for name in SCORERS:
        variants[name] = lambda cls=BASELINES[name]: tuner.use_scorers([cls() for _ in range(modules)])
    return variants


def evaluate_all(
    model: Any, processor: Any, test: Sequence[VQAExample], settings: DemoSettings, log: Callable[[str], None]
) -> dict[str, Any]:
    """Base model, adapter, baselines (at the adapter's budget), other keeps, evidence kept."""
    results: dict[str, Any] = {}
    size = settings.eval_batch_size
    with model.disable_adapter():
        base = evaluate(model, processor, test, size)
    log(f"base model (adapter disabled): accuracy {base.accuracy:.3f}")
    variants = scorer_variants(model)
    at_keep: dict[str, Evaluation] = {}
    evidence: dict[str, float] = {}
    images, questions = [e.image for e in test], [e.question for e in test]
    for name, context in variants.items():
        with context():
            at_keep[name] = evaluate(model, processor, test, size)
            evidence[name] = evidence_kept(kept_patches(model, processor, images, questions, size), test)
        log(
            f"{name} at keep {settings.keep:g}: accuracy {at_keep[name].accuracy:.3f}, "
            f"evidence kept {evidence[name]:.3f}"
        )
    by_keep: dict[str, dict[float, float]] = {
        name: {settings.keep: at_keep[name].accuracy} for name in variants
    }
    for keep in settings.other_keeps:
        with keep_ratio(model, keep):
            for name, context in variants.items():
                if name != "lvpruning" and not settings.baselines_at_every_keep:
                    continue
                with context():
                    by_keep[name][keep] = evaluate(model, processor, test, size).accuracy
        log(f"keep {keep:g}: " + ", ".join(f"{n} {v[keep]:.3f}" for n, v in by_keep.items() if keep in v))
    results["base"] = base
    results["at_keep"] = at_keep
    results["evidence"] = evidence
    results["by_keep"] = {name: dict(sorted(points.items())) for name, points in by_keep.items()}
    return results


def picture_questions(example: VQAExample, config: SceneConfig, seed: int = 0) -> list[Question]:
    """Two `shape_at` questions about the two objects of `example`'s scene that lie farthest apart."""
    from .questions import ask_question

    rng = np.random.default_rng([seed, 7])
    found: dict[int, Question] = {}
    for _ in range(64):
        question = ask_question(example.scene, rng, config, "shape_at")
        found.setdefault(question.cell, question)
    cells = sorted(found)

    def distance(pair: tuple[int, int]) -> int:
        (r1, c1), (r2, c2) = divmod(pair[0], config.grid), divmod(pair[1], config.grid)
        return max(abs(r1 - r2), abs(c1 - c2))

    pair = max(((a, b) for a in cells for b in cells if a < b), key=distance)
    return [found[pair[0]], found[pair[1]]]


def make_pictures(
    model: Any, processor: Any, test: Sequence[VQAExample], settings: DemoSettings, out_dir: Path
) -> list[dict[str, Any]]:
    """For the `settings.pictures` test scenes with the most shapes: two questions, the patches each
    module keeps for them, a PNG. Returns what was pictured (questions, answers, kept patches)."""
    from ..tuner.model import lvpruning_tuner
    from .pictures import PictureRow, draw_kept_patches
    from .questions import make_example
    from .scenes import SceneConfig

    config = SceneConfig()
    layers = list(lvpruning_tuner(model).active_config.layers)
    # the busiest scenes first: with more object patches than the budget, the modules must choose
    by_objects = sorted(test, key=lambda e: -len(e.scene.objects))  # stable: test order among equals
    chosen = [e for e in by_objects if len(e.scene.objects) >= 3][: settings.pictures]
    records = []
    for n, example in enumerate(chosen, start=1):
        asked = [
            make_example(example.scene, q, config, f"{example.id}-q{j}", "test")
            for j, q in enumerate(picture_questions(example, config, settings.seed))
        ]
        predictions = evaluate(model, processor, asked).answers
        kept = kept_patches(model, processor, [e.image for e in asked], [e.question for e in asked])
        rows = [
            PictureRow(e.question, e.answer, p, list(e.region), k)
            for e, p, k in zip(asked, predictions, kept, strict=True)
        ]
        name = f"kept_patches_{n}.png"
        draw_kept_patches(example.image, rows, config.patch_size, layers, out_dir / name)
        records.append(
            {
                "id": example.id,
                "picture": name,
                "questions": [
                    {
                        "question": r.question,
                        "answer": r.answer,
                        "prediction": r.prediction,
                        "region": r.region,
                        "kept": r.kept,
                    }
                    for r in rows
                ],
                "final_overlap": len(set(kept[0][-1]) & set(kept[1][-1])),
            }
        )
    return records
