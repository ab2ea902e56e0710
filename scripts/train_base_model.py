"""Train the tiny LLaVA that lvpeft ships as its embedded base model.

The model (:func:`lvpeft.demo.tiny_model.build_tiny_llava`) learns the synthetic scenes VQA task
(:mod:`lvpeft.demo.scenes`) from scratch on a CPU. Two losses:

* next-token cross-entropy on the answer word and the ``</s>`` after it (never on the prompt or
  the image tokens);
* an auxiliary per-patch classification loss: a linear head (NOT shipped) reads the vision features
  the projector receives (``(B, 144, C_vision)``) and predicts each patch's class (background or
  colour x shape, from the generator's label map). Without it, end-to-end training sits at the
  answer prior for a long time.

Training is a deterministic function of ``--seed`` (single thread, seeded init, seeded data stream;
the run stops after a fixed number of steps or at a validation-accuracy threshold, never on wall
time). At the end the script measures exact-match accuracy on the test split with greedy
``generate()`` through the processor, then saves model and processor with
``save_pretrained(..., safe_serialization=True)`` and writes a README next to them.

Usage::

    python scripts/train_base_model.py --seed 0 > /tmp/train_base.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lvpeft.demo.questions import Question, VQAExample, ask_question, iter_split, make_split
from lvpeft.demo.scenes import SceneConfig
from lvpeft.demo.tiny_model import (
    NUM_IMAGE_TOKENS,
    SHIPPED_BASE_DIR,
    TEXT_BACKBONES,
    build_processor,
    build_tiny_config,
    build_tiny_llava,
    generate_answers,
    load_shipped_base,
)
from lvpeft.pruning.placement import default_layers


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults are the shipped model's recipe)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4000, help="most optimiser steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--turns", type=int, default=4, help="question-answer turns per training image")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-patch loss")
    p.add_argument("--no-cell-aux", action="store_true", help="no per-patch grid-cell head")
    p.add_argument("--curriculum-steps", type=int, default=0, help="steps to grow from 1 shape to all")
    p.add_argument("--vision-steps", type=int, default=300, help="aux-only steps on the vision tower first")
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-hidden", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument(
        "--text-backbone",
        choices=sorted(TEXT_BACKBONES),
        default="llama",
        help="decoder family (the shipped bases: llama, LLaVA-1.5's; qwen2: same sizes, q/k/v biases)",
    )
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--stop-at", type=float, default=0.985, help="stop when validation accuracy reaches it")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-from", type=Path, default=None, help="start from this saved model + processor")
    p.add_argument(
        "--token-dropout",
        type=float,
        default=0.0,
        help="share of training batches whose decoder sees only a random subset of the vision tokens",
    )
    p.add_argument("--min-keep", type=float, default=0.05, help="smallest share of vision tokens kept then")
    p.add_argument(
        "--keep-objects",
        action="store_true",
        help="token dropout drops background patches only (every object stays, so every answer stays right)",
    )
    p.add_argument(
        "--question-first",
        action="store_true",
        help="prompt 'USER: {question}\\n<image> ASSISTANT:' (default: the image first, as LLaVA-1.5)",
    )
    p.add_argument("--out", type=Path, default=SHIPPED_BASE_DIR)
    p.add_argument("--no-save", action="store_true")
    return p.parse_args()


class Batch:
    """Tensors of one training batch: one image per row, one or more question-answer turns about it.

    A row is the chat ``USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...``;
    the first turn has exactly the single-question format used at inference, later turns only add
    supervision per image (the vision tower and the 144 image tokens are paid for once).

    Attributes:
        inputs: Processor output: ``input_ids``/``attention_mask`` ``(B, T)`` (left-padded) and
            ``pixel_values`` ``(B, 3, 96, 96)``.
        labels: ``(B, T)`` int64, the token id at every answer word and the ``</s>`` after it, else -100.
        first_answer: ``(B,)`` int64 position of each row's first answer word.
        patch_labels: ``(B, 144)`` int64 per-patch class.
    """

    def __init__(
        self,
        processor: LlavaProcessor,
        examples: list[VQAExample],
        extra_turns: list[list[Question]] | None = None,
    ) -> None:
        texts = []
        for i, example in enumerate(examples):
            turns = [(example.question, example.answer)]
            turns += [(q.text, q.answer) for q in (extra_turns[i] if extra_turns else [])]
            messages = []
            for j, (question, answer) in enumerate(turns):
                content = [{"type": "image"}] * (j == 0) + [{"type": "text", "text": question}]
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
            texts.append(processor.apply_chat_template(messages, tokenize=False))
        images = [e.image for e in examples]
        self.inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
        ids = self.inputs["input_ids"]
        assistant, colon = processor.tokenizer.convert_tokens_to_ids(["ASSISTANT", ":"])
        is_answer = torch.zeros_like(ids, dtype=torch.bool)
        is_answer[:, 2:] = (ids[:, :-2] == assistant) & (ids[:, 1:-1] == colon)
        is_target = is_answer.clone()
        is_target[:, 1:] |= is_answer[:, :-1]  # the </s> after each answer
        self.labels = torch.where(is_target, ids, torch.full_like(ids, -100))
        self.first_answer = is_answer.int().argmax(dim=1)
        self.patch_labels = torch.stack([torch.from_numpy(e.patch_labels.reshape(-1)) for e in examples])


class VisionTokenDropout:
    """Show the decoder only ``k`` of each image's vision tokens (a random subset per row), at their
    original positions; every other token stays. A forward pre-hook on the language model gathers the
    kept slots of ``inputs_embeds`` (image features already merged), ``attention_mask`` and
    ``position_ids``, so the decoder sees a shorter sequence, as after pruning, from its first layer on.

    Attributes:
        index: ``(B, T')`` slots kept in the current forward (None: everything).
    """

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        self.index: torch.Tensor | None = None
        model.model.language_model.register_forward_pre_hook(self._gather, with_kwargs=True)

    def choose(
        self,
        ids: torch.Tensor,
        image_token: int,
        keep: int,
        generator: torch.Generator,
        protect: torch.Tensor | None = None,
    ) -> None:
        """Keep every non-image slot of ``ids`` ``(B, T)`` and ``keep`` random image slots per row,
        the image slots marked in ``protect`` ``(B, 144)`` (patch order) first."""
        image = ids == image_token
        score = torch.rand(ids.shape, generator=generator).masked_fill(~image, -1.0)
        if protect is not None:
            score[image] += 2.0 * protect.reshape(-1).float()
        chosen = torch.zeros_like(image).scatter(1, score.topk(keep, dim=1).indices, True) & image
        kept = ~image | chosen  # every row keeps the same number of slots (all rows have 144 image slots)
        order = torch.argsort(kept.int(), dim=1, descending=True, stable=True)[:, : int(kept[0].sum())]
        self.index = order.sort(dim=1).values  # (B, T')

    def _gather(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.index is None:
            return None
        index = self.index
        embeds = kwargs["inputs_embeds"]
        kwargs["inputs_embeds"] = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
        if kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = kwargs["attention_mask"].gather(1, index)
        kwargs["position_ids"] = index  # original positions (left padding: as the unpruned forward)
        return args, kwargs


def answer_loss(
    model: LlavaForConditionalGeneration, batch: Batch, dropout: VisionTokenDropout | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on answer words and their ``</s>``; and first-answer accuracy ``(B,)``.

    With ``dropout.index`` set, the logits cover only the kept slots; labels and answer positions are
    gathered the same way (answers and the token before each are text, always kept).
    """
    labels, first_answer = batch.labels, batch.first_answer
    if dropout is not None and dropout.index is not None:
        labels = labels.gather(1, dropout.index)
        first_answer = (dropout.index < first_answer[:, None]).sum(dim=1)
    logits = model(**batch.inputs).logits[:, :-1]  # position t predicts token t + 1: (B, T - 1, V)
    targets = labels[:, 1:]  # (B, T - 1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    rows = torch.arange(len(targets))
    predicted = logits[rows, first_answer - 1].argmax(-1)  # (B,)
    correct = (predicted == labels[rows, first_answer]).float()
    return loss, correct


class PatchProbe:
    """Linear per-patch heads on the projector's input ``(B, 144, C_vision)`` (training only, not shipped).

    From the generator's label map each patch gets a colour (or background), a shape (or background)
    and their joint class; with ``cells=True`` also the row and column of its grid cell, which keeps
    the patch's position readable in the features (``shape_at`` questions need it). Separate heads
    make colour, shape, row and column separate directions of the features, so a question word such
    as ``blue`` or ``top`` has one direction to match in the decoder's attention.
    """

    def __init__(self, model: LlavaForConditionalGeneration, config: SceneConfig, cells: bool = True) -> None:
        self.features: torch.Tensor | None = None
        self.num_shapes = len(config.shapes)
        hidden = model.config.vision_config.hidden_size
        self.colour_head = nn.Linear(hidden, len(config.colours) + 1)
        self.shape_head = nn.Linear(hidden, len(config.shapes) + 1)
        self.class_head = nn.Linear(hidden, config.num_patch_classes)
        self.cell_heads = nn.ModuleList([nn.Linear(hidden, config.grid) for _ in range(2)]) if cells else None
        n, cell_patches = config.patches_per_side, config.image_size // config.grid // config.patch_size
        line = torch.arange(n) // cell_patches  # (12,) grid row (or column) of each patch row (or column)
        self.rows = line[:, None].expand(n, n).reshape(-1)  # (144,)
        self.cols = line[None, :].expand(n, n).reshape(-1)  # (144,)
        model.model.multi_modal_projector.register_forward_pre_hook(self._capture)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the heads."""
        heads = [self.colour_head, self.shape_head, self.class_head] + (
            [self.cell_heads] if self.cell_heads is not None else []
        )
        return [p for h in heads for p in h.parameters()]

    def _capture(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.features = args[0]

    def loss(self, patch_labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Per-patch loss against ``(B, 144)`` class labels; and colour-and-shape accuracy on object patches.

        Background covers ~90 % of the patches; a plain mean would let it drown the object patches, so
        colour and shape losses are class-balanced: mean over object patches + mean over background.
        """
        assert self.features is not None, "run the vision tower first"
        feats = self.features.flatten(0, 1)  # (B * 144, C_vision)
        labels = patch_labels.reshape(-1)  # (B * 144,)
        is_object = labels != 0
        colour = torch.where(is_object, (labels - 1) // self.num_shapes + 1, 0)
        shape = torch.where(is_object, (labels - 1) % self.num_shapes + 1, 0)
        loss = feats.new_zeros(())
        correct = torch.ones_like(is_object)
        for head, target in ((self.colour_head, colour), (self.shape_head, shape), (self.class_head, labels)):
            logits = head(feats)  # (B * 144, K)
            per_patch = F.cross_entropy(logits, target, reduction="none")
            loss = loss + per_patch[is_object].mean() + per_patch[~is_object].mean()
            correct &= logits.argmax(-1) == target
        if self.cell_heads is not None:
            b = len(patch_labels)
            loss = loss + F.cross_entropy(self.cell_heads[0](feats), self.rows.repeat(b))
            loss = loss + F.cross_entropy(self.cell_heads[1](feats), self.cols.repeat(b))
        return loss, correct[is_object].float().mean().item()


@torch.no_grad()
def validation_accuracy(
    model: LlavaForConditionalGeneration, batches: list[Batch], kinds: list[str]
) -> tuple[float, dict[str, float]]:
    """Teacher-forced first-answer accuracy (argmax at the answer position), overall and per kind."""
    model.eval()
    correct = torch.cat([answer_loss(model, b)[1] for b in batches])
    model.train()
    per_kind = {
        k: correct[[i for i, x in enumerate(kinds) if x == k]].mean().item() for k in sorted(set(kinds))
    }
    return correct.mean().item(), per_kind


def extra_turns(
    example: VQAExample, count: int, rng: np.random.Generator, config: SceneConfig
) -> list[Question]:
    """Up to ``count`` more questions about ``example``'s scene, all different from each other and from it."""
    seen, extra = {example.question}, []
    for _ in range(4 * count):
        if len(extra) == count:
            break
        question = ask_question(example.scene, rng, config)
        if question.text not in seen:
            seen.add(question.text)
            extra.append(question)
    return extra


class Curriculum:
    """Training scenes that start with a single shape and grow to the full task.

    During the first ``steps`` optimiser steps scenes hold ``1..m`` shapes, ``m`` rising linearly from 1
    to ``config.max_objects``; afterwards they follow ``config``. With one shape the answer only needs
    the decoder to pool the object patches; more shapes then force it to pick the asked one.
    Every stage is its own deterministic :func:`iter_split` stream of the train split.
    """

    def __init__(self, seed: int, config: SceneConfig, steps: int) -> None:
        self.steps, self.config = steps, config
        self.streams = {
            m: iter_split("train", seed, replace(config, min_objects=1, max_objects=m))
            for m in range(1, config.max_objects + 1)
        }
        self.final = iter_split("train", seed, config)

    def batch(self, step: int, size: int) -> list[VQAExample]:
        """``size`` training examples for optimiser step ``step`` (0-based)."""
        if step >= self.steps:
            return [next(self.final) for _ in range(size)]
        m = 1 + int(step * self.config.max_objects / self.steps)
        return [next(self.streams[m]) for _ in range(size)]


def warm_start_vision(
    model: LlavaForConditionalGeneration,
    probe: PatchProbe,
    processor: LlavaProcessor,
    curriculum: Curriculum,
    args: argparse.Namespace,
) -> None:
    """``args.vision_steps`` steps of the per-patch loss alone on the vision tower (no decoder: cheap).

    Recognising shapes is the slow part for the vision tower; doing it first means the decoder
    trains on informative image tokens from its first step.
    """
    vision = model.model.vision_tower
    params = [*vision.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    for step in range(args.vision_steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 30)
        batch = Batch(processor, curriculum.batch(args.curriculum_steps, 2 * args.batch_size))
        out = vision(batch.inputs["pixel_values"], output_hidden_states=True)
        probe.features = out.hidden_states[model.config.vision_feature_layer][:, 1:]  # (B, 144, C_vision)
        loss, patch_acc = probe.loss(batch.patch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(
                f"vision step {step + 1} aux {loss.item():.3f} object_patch_acc {patch_acc:.3f}", flush=True
            )


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr`` at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_accuracy(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, examples: list[VQAExample]
) -> tuple[float, dict[str, float]]:
    """Exact-match accuracy of greedy ``generate()`` answers, overall and per question kind."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(examples), 50):
        chunk = examples[i : i + 50]
        answers = generate_answers(model, processor, [e.image for e in chunk], [e.question for e in chunk])
        for e, a in zip(chunk, answers, strict=True):
            hits.setdefault(e.kind, []).append(a == e.answer)
    every = [h for v in hits.values() for h in v]
    return sum(every) / len(every), {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def main() -> None:
    """Train, evaluate on the test split, save (see the module docstring)."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    scene_config = SceneConfig()
    processor = build_processor(scene_config, question_first=args.question_first)
    config = build_tiny_config(
        vocab_size=len(processor.tokenizer),
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        text_backbone=args.text_backbone,
    )
    if args.init_from is not None:  # a second stage: the model and its processor as saved
        model, processor = load_shipped_base(args.init_from)
        model.train()
    else:
        model = build_tiny_llava(args.seed, config).train()
    dropout = VisionTokenDropout(model) if args.token_dropout > 0 else None
    dropout_rng = np.random.default_rng([args.seed, 99])
    dropout_generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    probe = PatchProbe(model, scene_config, cells=not args.no_cell_aux)
    params = [*model.parameters(), *probe.parameters()]
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M (+ probe head)", flush=True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

    curriculum = Curriculum(args.seed, scene_config, args.curriculum_steps)
    rng = np.random.default_rng([args.seed, 1234])  # extra questions about the training scenes
    val_examples = make_split("validation", args.val_size, args.seed, scene_config)
    val_batches = [Batch(processor, val_examples[i : i + 64]) for i in range(0, args.val_size, 64)]
    val_kinds = [e.kind for e in val_examples]

    warm_start_vision(model, probe, processor, curriculum, args)

    best_val, step = 0.0, 0
    running: dict[str, float] = {"lm": 0.0, "aux": 0.0, "acc": 0.0, "patch": 0.0}
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, args)
        examples = curriculum.batch(step - 1, args.batch_size)
        batch = Batch(
            processor, examples, [extra_turns(e, args.turns - 1, rng, scene_config) for e in examples]
        )
        if dropout is not None:
            dropout.index = None
            if dropout_rng.random() < args.token_dropout:
                keep = max(1, round(NUM_IMAGE_TOKENS * dropout_rng.uniform(args.min_keep, 1.0)))
                protect = batch.patch_labels != 0 if args.keep_objects else None
                if protect is not None:  # every answer stays visible: all objects, some background
                    objects = int(protect.sum(dim=1).max())
                    keep = objects + round((NUM_IMAGE_TOKENS - objects) * (keep / NUM_IMAGE_TOKENS))
                image_token = model.config.image_token_id
                dropout.choose(batch.inputs["input_ids"], image_token, keep, dropout_generator, protect)
        lm_loss, correct = answer_loss(model, batch, dropout)
        if dropout is not None:
            dropout.index = None
        aux_loss, patch_acc = probe.loss(batch.patch_labels)
        loss = lm_loss + args.aux_weight * aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for key, value in zip(
            running, (lm_loss.item(), aux_loss.item(), correct.mean().item(), patch_acc), strict=True
        ):
            running[key] += value
        if step % args.eval_every == 0:
            val, val_per_kind = validation_accuracy(model, val_batches, val_kinds)
            best_val = max(best_val, val)
            means = " ".join(f"{k} {v / args.eval_every:.3f}" for k, v in running.items())
            print(
                f"step {step} lr {lr_at(step - 1, args):.2e} {means} val_acc {val:.3f} "
                f"({' '.join(f'{k} {v:.2f}' for k, v in val_per_kind.items())}) "
                f"elapsed {(time.time() - start) / 60:.1f} min",
                flush=True,
            )
            running = dict.fromkeys(running, 0.0)
            if val >= args.stop_at:
                print(f"validation accuracy {val:.3f} >= {args.stop_at}: stopping", flush=True)
                break
    train_minutes = (time.time() - start) / 60

    test = make_split("test", args.test_size, args.seed, scene_config)
    acc, per_kind = test_accuracy(model, processor, test)
    total_minutes = (time.time() - start) / 60
    print(f"test accuracy (greedy generate, {len(test)} examples): {acc:.4f} {per_kind}", flush=True)
    print(f"training {train_minutes:.1f} min, total {total_minutes:.1f} min, {step} steps", flush=True)
    if args.no_save:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    record = {
        "seed": args.seed,
        "steps": step,
        "test_accuracy": acc,
        "test_accuracy_per_kind": per_kind,
        "test_examples": len(test),
        "train_minutes": round(train_minutes, 1),
        "total_minutes": round(total_minutes, 1),
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.init_from is not None and (args.init_from / "training_record.json").is_file():
        record["stage1"] = json.loads((args.init_from / "training_record.json").read_text())
    (args.out / "training_record.json").write_text(json.dumps(record, indent=1))
    write_readme(args.out, record)
    size_mb = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()) / 1e6
    print(f"saved to {args.out} ({size_mb:.1f} MB)", flush=True)


def _flags(args: dict[str, str], out: str) -> str:
    """The command-line flags that reproduce a run (defaults included, `--out` as given)."""
    flags = " ".join(
        f"--{k.replace('_', '-')}" + ("" if v == "True" else f" {v}")
        for k, v in args.items()
        if k not in ("out", "no_save", "init_from") and v not in ("False", "None")
    )
    return f"{flags} --out {out}"


def write_readme(out: Path, record: dict) -> None:
    """Write ``out/README.md``: how the saved model was made, from the training record(s)."""
    a = record["args"]
    stage1 = record.get("stage1")
    first = stage1["args"] if stage1 else a
    weights_mb = (out / "model.safetensors").stat().st_size / 1e6
    per_kind = ", ".join(f"{k} {v:.1%}" for k, v in record["test_accuracy_per_kind"].items())
    prompt = (
        "USER: {question}\\n<image> ASSISTANT:"
        if a["question_first"] == "True"
        else ("USER: <image>\\n{question} ASSISTANT:")
    )
    if stage1:
        commands = (
            f"python scripts/train_base_model.py {_flags(first, 'stage1')}\n"
            f"python scripts/train_base_model.py {_flags(a, os.path.relpath(out))} --init-from stage1"
        )
        minutes = f"{stage1['train_minutes']} + {record['train_minutes']}"
        steps = f"{stage1['steps']} + {record['steps']}"
    else:
        commands = f"python scripts/train_base_model.py {_flags(a, os.path.relpath(out))}"
        minutes, steps = record["train_minutes"], record["steps"]
    if stage1 and a.get("keep_objects") == "True":
        seen = (
            "every object patch but only a random share (0 to 100 %) of the background patches, at their "
            "original positions, from its first layer on"
        )
        after = "still needs the evidence (it never saw an object removed) but no longer the background"
    else:
        seen = (
            f"only a random subset of each image's vision tokens (between {float(a['min_keep']):.0%} and "
            "100 %), at their original positions, from its first layer on"
        )
        after = "still needs the evidence (random tokens do not hold it) but no longer all 144 tokens"
    stage2 = (
        f"""
3. Stage 2, robustness to shorter sequences ({record["steps"]} steps from the stage-1 model, lr {a["lr"]},
   {a["warmup"]} warm-up steps, cosine): in {float(a["token_dropout"]):.0%} of the batches the decoder
   sees {seen}. Real LLaVA models meet images at many resolutions and token counts; a tiny model
   trained on exactly 144 tokens per image answers worse on ANY shorter sequence, even one that still
   holds the answer's evidence (with only the evidence patches kept, the stage-1 model answered 85 %
   of the demo's test questions instead of 95 %), which would blur what a pruning method chooses.
   After this stage the model {after}. Stage-1 test accuracy: {stage1["test_accuracy"]:.1%}.
"""
        if stage1
        else ""
    )
    curriculum = (
        f" During the first {first['curriculum_steps']} steps the scenes grow from one shape to the full "
        "task (a curriculum: with one shape the answer only needs the decoder to pool the object's "
        "patches; more shapes then force it to find the asked one)."
        if int(first.get("curriculum_steps", "0"))
        else ""
    )
    if a["question_first"] == "True":
        order = """The prompt puts the question before the image. With the image first, the question's own
tokens read the image in the decoder's first layer, which no pruning module can precede (modules sit before
layers 1, 2, 3 of 4): every later layer then gets the answer from the text tokens, and which image
tokens survive hardly matters. In a 32-layer LLaVA-1.5 this shortcut is a small part of the
computation; in a 4-layer model it is most of it."""
    else:
        order = f"""The prompt has LLaVA-1.5's order, image first. The decoder has {first["text_layers"]}
layers, so pruning modules sit at the paper's relative depths (before layers \
{", ".join(map(str, default_layers(int(first["text_layers"]), 3)))} by default) and
most of the reading of the image happens after the first module. Nothing trains the question tokens
to hold the answer early (no auxiliary loss on text positions; the per-patch loss reads the vision
tower only) and there is no token-dropout stage, so which vision tokens survive decides the answer:
see `training_record.json` and docs/recipe.md for what random pruning costs this model."""
    title = "Tiny LLaVA" if a["question_first"] == "True" else "Tiny LLaVA, image first"
    backbone = first.get("text_backbone", "llama")  # records from before the option: Llama
    family = TEXT_BACKBONES[backbone].__name__.removesuffix("Config")  # "Llama", "Qwen2"
    decoder = f"{family}ForCausalLM"
    intro = (
        "2-layer GELU projector, Llama decoder)"
        if backbone == "llama"
        else f"2-layer GELU projector) but a {family} decoder\n(`--text-backbone {backbone}`)"
    )
    if backbone != "llama":
        title += f", {family} decoder"
    text = f"""# {title}: lvpeft's embedded base model

A `transformers.LlavaForConditionalGeneration` with the classes LLaVA-1.5 uses (CLIP vision tower,
{intro}, trained from scratch on the synthetic scenes VQA task of
`lvpeft.demo.scenes` so that tests, the demo and the notebooks have a real, offline base model.

| | |
|---|---|
| vision tower | `CLIPVisionModel`, {first["vision_layers"]} layers x {first["vision_hidden"]}, \
96 px, patch 8 |
| vision tokens | 144 per image (`vision_feature_select_strategy="default"` drops CLS) |
| decoder | `{decoder}`, {first["text_layers"]} layers x {first["text_hidden"]}, \
word-level vocabulary |
| parameters | {record["parameters"] / 1e6:.2f} M, float32 (`model.safetensors`, {weights_mb:.1f} MB) |
| prompt | `{prompt}` (the processor's chat template) |
| test accuracy | **{record["test_accuracy"]:.1%}** exact match, greedy `generate()`, \
{record["test_examples"]} test-split questions (seed {record["seed"]}) |
| per kind | {per_kind} |
| training time | {minutes} min, {record["threads"]} CPU thread, {steps} steps |
| made with | torch {record["versions"]["torch"]}, transformers {record["versions"]["transformers"]} |

Load it with `lvpeft.demo.tiny_model.load_shipped_base()` (safetensors only).

## How it was made

```
{commands}
```

1. Vision warm start ({first["vision_steps"]} steps): the vision tower alone learns per-patch linear heads
   (colour, shape, grid row, grid column of every patch, from the generator's label map;
   colour/shape class-balanced between object and background patches).
2. Joint training: next-token loss on the answer words (and their `</s>`) only, plus the same
   per-patch loss (weight {first["aux_weight"]}). Each training image carries {first["turns"]} question-answer
   turns; the first turn has exactly the inference format. AdamW (lr {first["lr"]}, betas 0.9/0.98, weight
   decay {first["weight_decay"]}), {first["warmup"]} warm-up steps, cosine decay, batch {first["batch_size"]},
   grad-norm clip 1.0. Training scenes stream from the train split (never repeated); the run stops after
   {first["steps"]} steps or when teacher-forced validation accuracy reaches {first["stop_at"]}.{curriculum}
{stage2}
{order}

The per-patch heads are not part of the saved model. Each run is a deterministic function of the
seed on one CPU thread with the versions above (other CPUs or builds may differ in the last bits).
`training_record.json` holds the numbers above.
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    main()
