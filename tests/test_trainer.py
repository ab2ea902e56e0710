"""LVPruningTrainer: TRL's SFTTrainer with the LM + ratio (+ distillation, + attention ranking) loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig

import lvpeft
import lvpeft.pruning.hooks
from helpers import tiny_llava, tiny_processor
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.decisions import select_top_k
from lvpeft.training.trainer import LVPruningTrainer


def toy_dataset(n: int = 16, seed: int = 0) -> Dataset:
    """Prompt/completion rows with one 32 px image each (16 vision tokens)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        question = " ".join(f"w{rng.integers(4, 100)}" for _ in range(3))
        rows.append(
            {
                "prompt": f"USER: <image> {question} ASSISTANT:",
                "completion": f" w{rng.integers(4, 100)} </s>",
                "images": [image],
            }
        )
    return Dataset.from_list(rows)


def make_trainer(tmp_path: Path, config: LVPruningConfig | None = None, **args) -> LVPruningTrainer:
    model = get_lvpruning_model(tiny_llava(), config or LVPruningConfig(keep=0.25))
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        learning_rate=1e-3,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    defaults.update(args)
    return LVPruningTrainer(
        model=model,
        args=SFTConfig(**defaults),
        train_dataset=toy_dataset(),
        processing_class=tiny_processor(),
    )


def test_default_training_keeps_exactly_the_inference_budget(tmp_path: Path) -> None:
    """The default recipe trains with Gumbel-top-k: every module keeps round(ratio * 16) tokens."""
    trainer = make_trainer(tmp_path)
    trainer.train()
    for entry in (e for e in trainer.state.log_history if "keep_ratio/1" in e):
        got = [entry[f"keep_ratio/{i}"] for i in (1, 2, 3)]
        assert got == pytest.approx([round(r * 16) / 16 for r in (0.65, 0.45, 0.25)], abs=1e-6)


def test_steps_change_only_the_adapter_and_log_every_loss(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)  # the default recipe: LM + ratio + teacher ranking
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".pruner.lvpruning_module." in n for n in changed)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert np.isfinite(entry["lm_loss"]) and np.isfinite(entry["ratio_loss"]) and entry["ratio_loss"] > 0
        assert {"keep_ratio/1", "keep_ratio/2", "keep_ratio/3"} <= entry.keys()
        assert entry["teacher_rank_loss"] > 0
        assert entry["loss"] == pytest.approx(
            entry["lm_loss"] + 2.0 * entry["ratio_loss"] + entry["teacher_rank_loss"], rel=1e-4
        )


def test_ratio_loss_drives_keep_ratio_to_the_schedule(tmp_path: Path) -> None:
    config = LVPruningConfig(  # per-token decisions (the paper's): the ratio loss steers the count
        keep=0.25,
        lm_loss_weight=0.0,
        ratio_loss_weight=1.0,
        teacher_rank_weight=0.0,
        training_decisions="gumbel",
        pruner_dim=16,
    )
    trainer = make_trainer(tmp_path, config, max_steps=40, learning_rate=3e-2, lr_scheduler_type="constant")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "keep_ratio/3" in entry]
    first = [logs[0][f"keep_ratio/{i}"] for i in (1, 2, 3)]
    last = np.mean([[entry[f"keep_ratio/{i}"] for i in (1, 2, 3)] for entry in logs[-5:]], axis=0)
    target = np.array([0.65, 0.45, 0.25])
    assert np.abs(last - target).max() < 0.08, (first, last)
    assert np.abs(last - target).sum() < np.abs(np.array(first) - target).sum()


def test_gradient_accumulation_equals_the_large_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # noise-free straight-through decisions, so both runs decide the same
    def deterministic(
        scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor, t: float
    ) -> torch.Tensor:
        hard = select_top_k(scores, candidates, k).float()
        soft = torch.sigmoid(scores.float() / t) * candidates
        return hard - soft.detach() + soft

    monkeypatch.setattr(lvpeft.pruning.hooks, "gumbel_top_k", deterministic)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        trainer = make_trainer(
            tmp_path / str(batch_size),
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=1e-2,
            max_grad_norm=1e9,
            optim="sgd",
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        results.append(
            {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
        )
    for name, update in results[0].items():
        # float noise from the different batch shapes is ~1e-3 relative; a mis-scaled term would be >= 30 %
        error = (results[1][name] - update).norm() / update.norm().clamp(min=1e-12)
        assert error < 1e-2, (name, error.item())


@pytest.mark.parametrize(
    ("field", "weight", "logged"),
    [
        ("distill_weight", 1.0, "distill_loss"),
        ("attention_distill_weight", 0.5, "attention_loss"),
        ("teacher_rank_weight", 0.5, "teacher_rank_loss"),
    ],
)
def test_optional_term_is_logged_and_added(tmp_path: Path, field: str, weight: float, logged: str) -> None:
    config = LVPruningConfig(keep=0.25, **{"teacher_rank_weight": 0.0, field: weight})
    trainer = make_trainer(tmp_path, config, max_steps=1)
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert entry[logged] > 0
    assert entry["loss"] == pytest.approx(
        entry["lm_loss"] + 2.0 * entry["ratio_loss"] + weight * entry[logged], rel=1e-4
    )


def test_trainer_saves_the_adapter_with_the_lvpruning_card(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    out = Path(trainer.args.output_dir)
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "- lvpruning" in card and "| 3 | 3 | 0.25 |" in card and "learning_rate | 0.001" in card
    reloaded = lvpeft.from_pretrained(str(out), base_model=tiny_llava())
    assert lvpruning_tuner(reloaded).peft_config["default"].keep == 0.25


@pytest.mark.parametrize("hide", [True, False])
def test_modules_do_not_see_the_labelled_answer(tmp_path: Path, hide: bool) -> None:
    config = LVPruningConfig(keep=0.25, hide_answer_from_modules=hide)
    trainer = make_trainer(tmp_path, config)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    seen: list[torch.Tensor] = []
    module = lvpruning_tuner(trainer.model).decision_modules()[0]
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[2].sum(dim=1)))
    try:
        trainer.compute_loss(trainer.model, inputs)
    finally:
        handle.remove()
    ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs["attention_mask"].bool()
    language = mask & (ids != trainer.model.config.image_token_id)
    answer = labels != -100
    assert bool((answer & language).any(dim=1).all())  # every row has an answer to hide
    expected = (language & ~answer).sum(dim=1) if hide else language.sum(dim=1)
    assert seen[0].tolist() == expected.tolist()
