"""The Hub model card of an LVPruning adapter, rendered from `hub_cards/adapter_card.md`.

`PeftModel.save_pretrained` (and so `push_to_hub`) writes PEFT's generic card first and the adapter
config afterwards; `LVPruningConfig.save_pretrained` then calls `write_model_card`, which keeps the
card's YAML metadata (PEFT's `library_name`, `base_model`, ...), adds LVPruning's tags, and replaces
the body when it is PEFT's empty template or an earlier lvpeft card. A body someone wrote by hand is
kept; only the metadata is updated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from huggingface_hub import ModelCard

from .flops import estimate_flops
from .layer import PAPER_PRUNER_DIM, DecisionModule, resolve_pruner_dim

MARKER = "<!-- lvpeft-card"
PEFT_TEMPLATE_MARKER = "# Model Card for Model ID"
TAGS = ("lvpruning", "token-pruning", "llava", "peft", "image-text-to-text")


@dataclass(frozen=True)
class CardFacts:
    """What the card says about an adapter (`LVPruningConfig.card_facts()` fills it).

    Attributes:
        base_model: the base model's Hub id or path, if known.
        keep: final keep ratio; layers / schedule: module positions and keep ratios.
        pruner_dim, pruner_heads, pruner_blocks, pruner_ffn_mult: the decision module (`pruner_dim`
            resolved to an integer when the base's width is known).
        training: one sentence on how the modules were trained (recipe, decisions, loss terms).
        hidden_size: the base language model's width (None if unknown).
        model_config: the base model's config, for the FLOPs section (None if unknown).
    """

    base_model: str | None
    keep: float
    layers: list[int] | None
    schedule: list[float]
    pruner_dim: int | str | None
    pruner_heads: int
    pruner_blocks: int
    pruner_ffn_mult: int
    training: str
    hidden_size: int | None
    model_config: Any = None


def render_card_body(config: CardFacts, adapter_id: str | None = None) -> str:
    """The markdown body of the card (no YAML header)."""
    template = resources.files("lvpeft").joinpath("hub_cards/adapter_card.md").read_text(encoding="utf-8")
    schedule = config.schedule
    layers = config.layers or ["(scaled to the model's depth)"] * len(schedule)
    rows = "\n".join(f"| {i + 1} | {p} | {r:g} |" for i, (p, r) in enumerate(zip(layers, schedule)))
    dim = config.pruner_dim if isinstance(config.pruner_dim, int) else _unresolved_dim(config.pruner_dim)
    base = config.base_model or "<base model>"
    values: dict[str, Any] = {
        "base_model": base,
        "adapter_id": adapter_id or "<adapter repo or folder>",
        "schedule_rows": rows,
        "keep": f"{config.keep:g}",
        "flops_section": _flops_section(config),
        "num_parameters": _parameter_count(config),
        "blocks": config.pruner_blocks,
        "heads": config.pruner_heads,
        "dim": dim,
        "ffn_mult": config.pruner_ffn_mult,
        "training": config.training,
    }
    return template.format(**values)


@dataclass(frozen=True)
class ValidationFacts:
    """The last validation of a training run (`lvpeft train --eval_data`), for the card.

    Attributes:
        adapter, random, unpruned: mean NLL per reference-answer token (nats) of the adapter at its keep
            ratio, of a seeded random scorer at the same positions and budget, and of the base model.
        questions: how many validation questions; step: the optimizer step measured.
    """

    adapter: float
    random: float
    unpruned: float
    questions: int
    step: int


def write_model_card(
    save_directory: str,
    config: CardFacts,
    *,
    training_args: Any = None,
    force: bool = False,
    validation: ValidationFacts | None = None,
) -> None:
    """Create or update `save_directory/README.md` for an LVPruning adapter (see module docstring).

    `training_args` (a `TrainingArguments`) adds the run's hyper-parameters and `validation` its last
    validation; `force` replaces any body (the trainer uses it over the generic card it writes first).
    """
    path = os.path.join(save_directory, "README.md")
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard("---\n---\n")
    data = card.data
    data.library_name = data.library_name or "peft"
    data.tags = sorted(set(data.tags or []) | set(TAGS))
    data.pipeline_tag = "image-text-to-text"
    if config.base_model:
        data.base_model = config.base_model
    elif not data.get("base_model"):
        data.pop("base_model", None)
    data.tags = [t for t in data.tags if not t.endswith(":")]  # PEFT's tag for an unnamed base
    text = card.text.strip()
    if force or not text or MARKER in text or PEFT_TEMPLATE_MARKER in text:
        adapter_id = os.path.basename(os.path.normpath(save_directory))
        card.text = (
            render_card_body(config, adapter_id=adapter_id)
            + _training_section(training_args)
            + _validation_section(validation, config.keep)
        )
    card.save(path)


def _flops_section(config: CardFacts) -> str:
    model_config = config.model_config
    if model_config is None:
        return "Not computed: the adapter was saved without its base model's config at hand."
    try:
        report = estimate_flops(
            model_config,
            text_tokens=30,
            layers=config.layers,
            schedule=config.schedule,
            pruner_dim=config.pruner_dim,
            pruner_heads=config.pruner_heads,
            pruner_blocks=config.pruner_blocks,
            pruner_ffn_mult=config.pruner_ffn_mult,
        )
    except (ValueError, TypeError, AttributeError) as error:
        return f"Not computed for this base model ({error})."
    change = (
        f"{100 * report.flops_reduction:.1f} % fewer FLOPs"
        if report.flops_reduction >= 0
        else f"{-100 * report.flops_reduction:.1f} % more FLOPs (the modules outweigh the saving)"
    )
    return (
        "Analytic prefill FLOPs for one image and 30 text tokens (`lvpeft flops`): "
        f"base {_format_flops(report.base_tflops)}, pruned {_format_flops(report.pruned_tflops)} "
        f"(of which the decision modules {_format_flops(report.pruner_tflops)}): {change}."
    )


def _format_flops(tflops: float) -> str:
    for unit, scale in (("TFLOPs", 1.0), ("GFLOPs", 1e-3), ("MFLOPs", 1e-6)):
        if tflops >= scale:
            return f"{tflops / scale:.3g} {unit}"
    return f"{tflops * 1e9:.3g} kFLOPs"


def _training_section(args: Any) -> str:
    if args is None:
        return ""
    fields = (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "warmup_steps",
        "lr_scheduler_type",
        "weight_decay",
        "max_grad_norm",
        "seed",
    )
    rows = "\n".join(f"| {name} | {getattr(args, name, None)} |" for name in fields if hasattr(args, name))
    return (
        "\n## Training\n\nTrained with `lvpeft.LVPruningTrainer` (TRL's SFTTrainer, base model frozen).\n\n"
        f"| setting | value |\n|---|---|\n{rows}\n"
    )


def _validation_section(validation: ValidationFacts | None, keep: float) -> str:
    if validation is None:
        return ""
    verdict = (
        "The adapter beats random pruning at the same budget."
        if validation.adapter < validation.random
        else "**The adapter does NOT beat random pruning at the same budget** (lvpeft's docs/evaluation.md)."
    )
    return (
        f"\n## Validation\n\nMean NLL per reference-answer token (nats; lower is better) on "
        f"{validation.questions} held-out questions after step {validation.step}, keep {keep:g}:\n\n"
        "| model | answer NLL |\n|---|---|\n"
        f"| base model, unpruned | {validation.unpruned:.4f} |\n"
        f"| this adapter | {validation.adapter:.4f} |\n"
        f"| random scorer, same positions and budget | {validation.random:.4f} |\n\n{verdict}\n"
    )


def _unresolved_dim(pruner_dim: str | None) -> str:
    return "d" if pruner_dim == PAPER_PRUNER_DIM else "d/8 (at least 64)"


def _parameter_count(config: CardFacts) -> str:
    if config.hidden_size is None:
        return "see adapter_model.safetensors for the"
    d = config.hidden_size
    dim = resolve_pruner_dim(config.pruner_dim, d, config.pruner_heads)
    with torch.device("meta"):
        module = DecisionModule(d, dim, config.pruner_heads, config.pruner_blocks, config.pruner_ffn_mult)
    per_module = sum(p.numel() for p in module.parameters())
    return f"{per_module * len(config.schedule):,}"
