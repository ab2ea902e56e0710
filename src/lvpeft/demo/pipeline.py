"""`lvpeft demo`: LVPruning end to end on the tiny LLaVA that lvpeft ships, on a CPU, in minutes.

1. load the shipped base model and its processor (`lvpeft.demo.tiny_model.load_shipped_base`);
2. draw the synthetic scenes splits (`lvpeft.demo.questions`), export train and test as LLaVA-format
   JSON + PNGs into `DIR/data` and load train with `load_llava_dataset` (what `lvpeft train` reads);
3. train an adapter at keep=0.1 with `LVPruningTrainer` (the base model stays frozen);
4. evaluate on the test split with greedy `generate()` and exact match of the one-word answer: the
   base model (adapter disabled), the adapter, the training-free baselines at the same positions and
   budget (`use_scorers`), the adapter at other keep ratios (`set_keep`); and, per scorer, how much of
   each answer's evidence (the patches that show it) is still alive after the last module;
5. picture what every module keeps for two questions about the same test image;
6. save the adapter, reload it with `lvpeft.from_pretrained` on a freshly loaded base, compare answers;
7. time a prefill, base vs pruned, interleaved; time prefill and `generate()` again on a random-weight
   model shaped like LLaVA-1.5 (base vs pruned vs the most accurate training-free scorer), where the
   decoder is nearly all of the cost; write `report.json`, `report.md` and the PNGs (`lvpeft.demo.report`).

The steps live in `training.py` (2, 3), `evaluation.py` (4, 5) and `cost.py` (7); this module runs
them in order and checks the reload (6).

Shapes: B batch, L slots, S modules, P patches per image (144 for the tiny model).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cost import (
    best_scorer,
    describe_machine,
    flops_of,
    llava_shaped_speed,
    prompt_text_tokens,
    time_prefill,
)
from .evaluation import evaluate_all, keep_key, make_pictures
from .settings import DEFAULT_SETTINGS, SCORERS, DemoSettings
from .tiny_model import load_base, shipped_base_name
from .training import prepare_data, train_adapter, training_summary

if TYPE_CHECKING:  # types only
    from .questions import VQAExample


@torch.no_grad()
def check_reload(
    model: Any, processor: Any, adapter_dir: Path, base_dir: str | Path | None, examples: Sequence[VQAExample]
) -> dict[str, Any]:
    """Load the saved adapter on a freshly loaded base and compare greedy answers and logits."""
    from ..tuner.loading import from_pretrained
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


class _Clock:
    """Seconds spent per phase."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name`."""
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
        base_dir: a shipped tiny LLaVA by name ("image-first", "question-first"; None is
            "question-first") or a folder with a LLaVA model and processor saved by `save_pretrained`.
        log: where progress lines go.

    Raises:
        FileNotFoundError: no base model (see `load_base`).
    """
    from ..tuner.model import lvpruning_tuner
    from .pictures import plot_accuracy_vs_keep
    from .report import write_report

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
    speed = None
    if settings.speed_model is not None:
        scorer = best_scorer({name: results["at_keep"][name].accuracy for name in SCORERS})
        with clock.phase("llava_speed"):
            speed = llava_shaped_speed(
                config.keep,
                scorer,
                settings.speed_model,
                settings.speed_repeats,
                settings.speed_warmup,
                settings.speed_new_tokens,
            )
        pruned = speed["variants"]["lvpruning"]
        log(
            f"{speed['name']} random-weight model: prefill {pruned['prefill_speedup']:.2f}x, generate "
            f"{pruned['generate_speedup']:.2f}x faster pruned ({speed['flops']['speedup']:.2f}x fewer FLOPs)"
        )
    clock.timings["total"] = round(time.perf_counter() - clock.start, 2)

    n_vision = int(base.config.vision_config.image_size // base.config.vision_config.patch_size) ** 2
    schedule = config.resolve_schedule()
    at_keep = results["at_keep"]
    report: dict[str, Any] = {
        "base_model": shipped_base_name(base_dir),
        "machine": describe_machine(),
        "settings": asdict(settings),
        "keep": config.keep,
        "layers": list(config.layers),
        "schedule": schedule,
        "pruner_dim": config.resolve_pruner_dim(config.base_text_hidden_size),
        "adapter_parameters": sum(p.numel() for n, p in model.named_parameters() if "lvpruning_module" in n),
        "vision_tokens": n_vision,
        "decoder": {k: getattr(base.config.text_config, k) for k in ("hidden_size", "num_hidden_layers")},
        "kept_tokens": [round(r * n_vision) for r in schedule],
        "train_examples": len(data.train),
        "test_examples": len(data.test),
        "base_accuracy": results["base"].accuracy,
        "pruned_accuracy": at_keep["lvpruning"].accuracy,
        "baselines": {name: at_keep[name].accuracy for name in SCORERS},
        "accuracy_by_keep": {keep_key(k): v for k, v in results["by_keep"]["lvpruning"].items()},
        "baselines_by_keep": {
            name: {keep_key(k): v for k, v in results["by_keep"][name].items()}
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
        "llava_shaped_speed": speed,
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
