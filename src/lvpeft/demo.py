"""`lvpeft demo`: LVPruning end to end on the tiny LLaVA that lvpeft ships, on a CPU, in minutes.

1. load the shipped base model and its processor (`lvpeft.tiny_model.load_shipped_base`);
2. draw the synthetic scenes splits (`lvpeft.data.scenes`), export train and test as LLaVA-format
   JSON + PNGs into `DIR/data` and load train with `load_llava_dataset` (what `lvpeft train` reads);
3. train an adapter at keep=0.1 with `LVPruningTrainer` (the base model stays frozen);
4. evaluate on the test split with greedy `generate()` and exact match of the one-word answer: the
   base model (adapter disabled), the adapter, the training-free baselines at the same positions and
   budget (`use_scorers`), the adapter at other keep ratios (`set_keep`); and, per scorer, how much of
   each answer's evidence (the patches that show it) is still alive after the last module;
5. picture what every module keeps for two questions about the same test image;
6. save the adapter, reload it with `lvpeft.from_pretrained` on a freshly loaded base, compare answers;
7. time a prefill, base vs pruned, interleaved, and write `report.json`, `report.md` and the PNGs
   (`lvpeft.report`).

Shapes: B batch, L slots, S modules, P patches per image (144 for the tiny model).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # the data package imports `datasets`: loaded when the demo runs, not for `lvpeft --help`
    from .data.scenes import Question, SceneConfig, VQAExample


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
        layers, keep_schedule, pruner_dim, gumbel_temperature, ratio_loss_weight, distill_weight,
        attention_distill_weight:
            `LVPruningConfig` fields (None: the library's default).
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
    ratio_loss_weight: float = 20.0
    distill_weight: float = 1.0
    attention_distill_weight: float = 0.2
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

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
"""A `{% generation %}` tag (not the word in `add_generation_prompt`)."""
SCORERS: tuple[str, ...] = ("random", "uniform", "fastv")
"""Training-free baselines compared at the adapter's positions and budget (`lvpeft.scorers.BASELINES`)."""


# -- 1. the base model ------------------------------------------------------------------------------


def load_base(base_dir: str | Path | None = None) -> tuple[Any, Any]:
    """The shipped tiny LLaVA and its processor (or those saved in `base_dir`), in eval mode.

    Raises:
        FileNotFoundError: no saved model there; the message says how to get one.
    """
    from .tiny_model import SHIPPED_BASE_DIR, load_shipped_base

    path = Path(base_dir) if base_dir is not None else SHIPPED_BASE_DIR
    try:
        return load_shipped_base(path)
    except FileNotFoundError as error:
        where = "the tiny LLaVA base model that lvpeft ships" if base_dir is None else "a LLaVA base model"
        raise FileNotFoundError(
            f"lvpeft demo needs {where} in {path} (config.json, model.safetensors and the processor files), "
            "and there is none. Reinstall lvpeft from a release, train it in a source checkout with "
            "`python scripts/train_base_model.py` (about an hour on a CPU), or pass --base DIR with a "
            "LLaVA model and processor saved by save_pretrained."
        ) from error


# -- 2. data ----------------------------------------------------------------------------------------


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


def prepare_data(out_dir: str | Path, settings: DemoSettings, processor: Any) -> DemoData:
    """Draw the train and test splits, export them as LLaVA JSON + PNGs (the image placeholder before
    or after the question, as `processor`'s prompt has it), load train back."""
    from .data import load_llava_dataset
    from .data.scenes import export_llava_json, make_split
    from .tiny_model import asks_question_first

    question_first = asks_question_first(processor)
    folder = Path(out_dir) / "data"
    train = make_split("train", settings.train_examples, seed=settings.seed)
    test = make_split("test", settings.test_examples, seed=settings.seed)
    train_json = export_llava_json(train, folder, "train.json", question_first)
    export_llava_json(test, folder, "test.json", question_first)
    dataset, load_report = load_llava_dataset(train_json, folder, on_error="raise", image_check="verify")
    if len(dataset) != len(train):
        raise RuntimeError(
            f"load_llava_dataset kept {len(dataset)} of {len(train)} rows: {load_report.summary()}"
        )
    return DemoData(folder=folder, train=dataset, test=test)


# -- 3. training ------------------------------------------------------------------------------------


def training_processor(processor: Any) -> Any:
    """A copy of `processor` whose chat template marks the answers (for `assistant_only_loss`).

    Like `lvpeft train`: a template without `{% generation %}` is replaced by lvpeft's LLaVA-1.5
    training template. The copy keeps inference prompts (rendered with the original) free of a
    second BOS.
    """
    from .data.llava_format import LLAVA_TRAINING_CHAT_TEMPLATE

    processor = copy.deepcopy(processor)
    if not GENERATION_MARKER.search(getattr(processor, "chat_template", None) or ""):
        processor.chat_template = LLAVA_TRAINING_CHAT_TEMPLATE
    return processor


def train_adapter(
    base: Any, processor: Any, dataset: Any, settings: DemoSettings, output_dir: str | Path
) -> tuple[Any, Any]:
    """Wrap `base` with an LVPruning adapter and train it; returns `(peft_model, trainer)`.

    The model comes back in eval mode (pruning by removal). Nothing is saved here.
    """
    from transformers import set_seed
    from trl import SFTConfig

    from .config import LVPruningConfig
    from .model import get_lvpruning_model
    from .trainer import LVPruningTrainer

    set_seed(settings.seed)
    config = LVPruningConfig(
        keep=settings.keep,
        layers=None if settings.layers is None else list(settings.layers),
        keep_schedule=None if settings.keep_schedule is None else list(settings.keep_schedule),
        pruner_dim=settings.pruner_dim,
        gumbel_temperature=settings.gumbel_temperature,
        ratio_loss_weight=settings.ratio_loss_weight,
        distill_weight=settings.distill_weight,
        attention_distill_weight=settings.attention_distill_weight,
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
    keys = ["step", "lm_loss", "ratio_loss", "attention_loss", *ratios]
    return {
        "steps": settings.train_steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "gumbel_temperature": settings.gumbel_temperature,
        "ratio_loss_weight": settings.ratio_loss_weight,
        "distill_weight": settings.distill_weight,
        "attention_distill_weight": settings.attention_distill_weight,
        "hide_answer_from_modules": trainer.lvpruning_config.hide_answer_from_modules,
        "first_log": {k: logs[0][k] for k in keys if k in logs[0]} if logs else {},
        "last_log": {k: logs[-1][k] for k in keys if k in logs[-1]} if logs else {},
    }


# -- 4. evaluation ----------------------------------------------------------------------------------


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
    from .architecture import find_llava_parts
    from .model import lvpruning_tuner
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


def _keep_key(keep: float) -> str:
    return f"{keep:g}"


@contextlib.contextmanager
def keep_ratio(model: Any, keep: float) -> Iterator[list[float]]:
    """Within the block the adapter prunes to `keep` (`set_keep`); the old keep is restored after."""
    from .model import lvpruning_tuner

    tuner = lvpruning_tuner(model)
    previous = tuner.active_config.keep
    try:
        yield tuner.set_keep(keep)
    finally:
        tuner.set_keep(previous)


def scorer_variants(model: Any) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """`{name: context}`: the learned modules and each baseline (one scorer instance per module)."""
    from .model import lvpruning_tuner
    from .scorers import BASELINES

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


# -- 5. pictures ------------------------------------------------------------------------------------


def picture_questions(example: VQAExample, config: SceneConfig, seed: int = 0) -> list[Question]:
    """Two `shape_at` questions about the two objects of `example`'s scene that lie farthest apart."""
    from .data.scenes import ask_question

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
    from .data.scenes import SceneConfig, make_example
    from .model import lvpruning_tuner
    from .report import PictureRow, draw_kept_patches

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


# -- 6. save and reload -----------------------------------------------------------------------------


@torch.no_grad()
def check_reload(
    model: Any, processor: Any, adapter_dir: Path, base_dir: str | Path | None, examples: Sequence[VQAExample]
) -> dict[str, Any]:
    """Load the saved adapter on a freshly loaded base and compare greedy answers and logits."""
    from .loading import from_pretrained
    from .tiny_model import build_prompts

    fresh, _ = load_base(base_dir)
    reloaded = from_pretrained(str(adapter_dir), base_model=fresh).eval()
    inputs = processor(
        images=[e.image for e in examples],
        text=build_prompts(processor, [e.question for e in examples]),
        padding=True,
        return_tensors="pt",
    )
    generated = [m.generate(**inputs, max_new_tokens=3, do_sample=False) for m in (model, reloaded)]
    logits = [m(**inputs).logits for m in (model, reloaded)]
    same = bool(torch.equal(generated[0], generated[1]))
    difference = float((logits[0] - logits[1]).abs().max())
    return {
        "adapter_dir": str(adapter_dir),
        "examples": len(examples),
        "same_answers": same,
        "max_abs_logit_diff": difference,
        "passed": same and difference < 1e-4,
    }


# -- 7. cost ----------------------------------------------------------------------------------------


def prompt_text_tokens(processor: Any, examples: Sequence[VQAExample]) -> float:
    """Mean number of language (non-image) tokens in the test prompts (BOS and chat words included)."""
    from .tiny_model import build_prompts

    ids = processor.tokenizer(build_prompts(processor, [e.question for e in examples]))["input_ids"]
    image = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    return float(np.mean([sum(t != image for t in row) for row in ids]))


def flops_of(model: Any, text_tokens: float) -> dict[str, float]:
    """Analytic prefill FLOPs, base vs pruned, at the adapter's current schedule (`lvpeft.flops`)."""
    from .flops import estimate_adapter_flops
    from .model import lvpruning_tuner

    config = lvpruning_tuner(model).active_config
    report = estimate_adapter_flops(model.get_base_model().config, config, max(1, round(text_tokens)))
    return {
        "text_tokens": max(1, round(text_tokens)),
        "base_tflops": report.base_tflops,
        "pruned_tflops": report.pruned_tflops,
        "pruner_tflops": report.pruner_tflops,
        "speedup": report.base_tflops / report.pruned_tflops,
    }


@torch.no_grad()
def time_prefill(
    model: Any, processor: Any, examples: Sequence[VQAExample], repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Median wall time of one prefill (forward over the prompts, cache on, last logits only),
    base (adapter disabled) and pruned interleaved so that machine load hits both alike; `speedup`
    is the median of the per-round ratios (`lvpeft.bench.paired_speedup`)."""
    from .bench import interleaved_times, paired_speedup
    from .tiny_model import build_prompts

    inputs = processor(
        images=[e.image for e in examples],
        text=build_prompts(processor, [e.question for e in examples]),
        padding=True,
        return_tensors="pt",
    )
    variants = {"base": model.disable_adapter, "lvpruning": contextlib.nullcontext}
    times = interleaved_times(
        variants, lambda: model(**inputs, use_cache=True, logits_to_keep=1), repeats, warmup, model.device
    )
    return {
        "base": statistics.median(times["base"]),
        "lvpruning": statistics.median(times["lvpruning"]),
        "speedup": paired_speedup(times["base"], times["lvpruning"]),
        "batch": len(examples),
        "repeats": repeats,
        "all": times,
    }


def describe_machine() -> str:
    """One line: CPU, threads, library versions."""
    import transformers

    from .bench import describe_machine as bench_machine

    return (
        f"{bench_machine(torch.device('cpu'))}, {os.cpu_count()} CPUs visible, "
        f"Python {platform.python_version()}, transformers {transformers.__version__}"
    )


# -- the whole run ----------------------------------------------------------------------------------


class _Clock:
    """Seconds spent per phase."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 2)


def run_demo(
    out_dir: str | Path = "lvpeft-demo",
    settings: DemoSettings = DEFAULT_SETTINGS,
    base_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole demo (see the module docstring), write its files into `out_dir`; returns the report.

    Args:
        out_dir: receives `data/`, `adapter/`, `report.json`, `report.md` and the PNGs.
        settings: `DEFAULT_SETTINGS` or `QUICK_SETTINGS` (or your own).
        base_dir: a folder with a LLaVA model and processor saved by `save_pretrained`; None is the
            shipped tiny model.
        log: where progress lines go.

    Raises:
        FileNotFoundError: no base model (see `load_base`).
    """
    from .model import lvpruning_tuner
    from .report import plot_accuracy_vs_keep, write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    with clock.phase("load"):
        base, processor = load_base(base_dir)
    size = sum(p.numel() for p in base.parameters()) / 1e6
    log(f"base model: {base_dir or 'the shipped tiny LLaVA'} ({size:.1f}M parameters)")
    with clock.phase("data"):
        data = prepare_data(out_dir, settings, processor)
    log(f"data: {len(data.train)} training and {len(data.test)} test questions in {data.folder}")
    adapter_dir = out_dir / "adapter"
    with clock.phase("train"):
        model, trainer = train_adapter(base, processor, data.train, settings, adapter_dir)
    with clock.phase("save"):
        model.save_pretrained(str(adapter_dir))
        trainer.create_model_card()
    config = lvpruning_tuner(model).active_config
    with clock.phase("evaluate"):
        results = evaluate_all(model, processor, data.test, settings, log)
    with clock.phase("pictures"):
        pictures = make_pictures(model, processor, data.test, settings, out_dir)
        series = (
            results["by_keep"]
            if settings.baselines_at_every_keep
            else {"lvpruning": results["by_keep"]["lvpruning"]}
        )
        plot_accuracy_vs_keep(
            series,
            results["base"].accuracy,
            out_dir / "accuracy_vs_keep.png",
            title=f"Test accuracy vs keep ratio ({len(data.test)} questions)",
        )
    with clock.phase("reload"):
        reload = check_reload(model, processor, adapter_dir, base_dir, data.test[: settings.reload_examples])
    log(f"reload check: {'passed' if reload['passed'] else 'FAILED'}")
    with clock.phase("timing"):
        flops = flops_of(model, prompt_text_tokens(processor, data.test))
        prefill = time_prefill(model, processor, data.test[: settings.timing_batch], settings.timing_repeats)
    clock.timings["total"] = round(time.perf_counter() - clock.start, 2)

    n_vision = int(base.config.vision_config.image_size // base.config.vision_config.patch_size) ** 2
    schedule = config.resolve_schedule()
    at_keep = results["at_keep"]
    report: dict[str, Any] = {
        "base_model": str(base_dir)
        if base_dir is not None
        else "lvpeft shipped tiny LLaVA (lvpeft/assets/tiny_llava)",
        "machine": describe_machine(),
        "settings": asdict(settings),
        "keep": config.keep,
        "layers": list(config.layers),
        "schedule": schedule,
        "pruner_dim": config.resolve_pruner_dim(config.base_text_hidden_size),
        "adapter_parameters": sum(p.numel() for n, p in model.named_parameters() if "lvpruning_module" in n),
        "vision_tokens": n_vision,
        "kept_tokens": [round(r * n_vision) for r in schedule],
        "train_examples": len(data.train),
        "test_examples": len(data.test),
        "base_accuracy": results["base"].accuracy,
        "pruned_accuracy": at_keep["lvpruning"].accuracy,
        "baselines": {name: at_keep[name].accuracy for name in SCORERS},
        "accuracy_by_keep": {_keep_key(k): v for k, v in results["by_keep"]["lvpruning"].items()},
        "baselines_by_keep": {
            name: {_keep_key(k): v for k, v in results["by_keep"][name].items()}
            for name in SCORERS
            if settings.baselines_at_every_keep
        },
        "accuracy_by_kind": {
            "base": results["base"].per_kind,
            **{name: e.per_kind for name, e in at_keep.items()},
        },
        "evidence_kept": results["evidence"],
        "flops": flops,
        "prefill_speedup": prefill["speedup"],
        "prefill_ms": prefill,
        "reload_check": reload,
        "kept_patches": pictures,
        "training": training_summary(trainer, settings),
        "timings": clock.timings,
        "files": {
            "data": "data",
            "adapter": "adapter",
            "plot": "accuracy_vs_keep.png",
            "pictures": [p["picture"] for p in pictures],
            "json": str(out_dir / "report.json"),
            "markdown": str(out_dir / "report.md"),
        },
    }
    write_report(report, out_dir)
    return report


# -- command line -----------------------------------------------------------------------------------


def add_demo_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `lvpeft demo` to the CLI."""
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and picture an LVPruning adapter on the shipped tiny LLaVA (CPU, ~4 min)",
    )
    parser.add_argument("--out", default="lvpeft-demo", help="output folder (default: ./lvpeft-demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a shorter run (~1 min): fewer steps and questions"
    )
    parser.add_argument(
        "--base", default=None, help="a saved LLaVA model + processor folder (default: the shipped one)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a tiny model gains little from more, and on a busy CPU more "
        "threads than free cores made training 10x slower here)",
    )
    parser.set_defaults(func=demo_command)
    return parser


def demo_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft demo`."""
    from .report import format_table

    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers, via TRL
    settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    report = run_demo(args.out, settings, base_dir=args.base)
    print()
    print(format_table(report))
    return 0
