"""`LVPruningTrainer`: TRL's `SFTTrainer` with LVPruning's loss.

loss = lambda_lm * LM + lambda_ratio * ratio (+ lambda_kd * KL(base || pruned), + lambda_att * attention,
both optional)

- LM is SFTTrainer's own loss (fused LM head, normalised by the tokens of the whole
  gradient-accumulation step, scaled for DDP exactly as SFTTrainer does).
- ratio is the keep-ratio loss of METHOD.md, computed by the pruning hooks in the same forward
  (`PruningStats.ratio_loss`). It is a per-micro-batch mean, so under gradient accumulation it is
  divided by the number of accumulated micro-batches whenever the Trainer does not do it itself
  (the same rule transformers' Trainer applies to the LM loss), and it is never multiplied by the
  number of processes (DDP already averages its gradient).
- KL distils the unpruned model's next-token distribution into the pruned one on the trained
  (label) positions: the teacher is the same model with the adapter disabled, run under no_grad,
  so no second copy of the model is needed. Off unless `LVPruningConfig.distill_weight > 0`.
- attention is the last module's listwise loss against the attention its layer's last prompt token
  pays to the vision tokens (`PruningStats.attention_loss`, computed by the pruning hooks; a
  per-micro-batch mean, scaled like ratio). Off unless `LVPruningConfig.attention_distill_weight > 0`.

Every term (and the realised keep ratio after each module) is logged at every logging step.

The decision modules do not see the answer they are trained on: the labelled tokens are hidden from
their cross-attention (`LVPruningModel.hide_from_modules`), because at inference the modules run at
prefill, before any answer exists (`LVPruningConfig.hide_answer_from_modules`; the paper's modules see
it).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from ..pruning.decisions import attention_rank_loss
from ..tuner.card import ValidationFacts, write_model_card
from ..tuner.config import LVPruningConfig
from ..tuner.model import lvpruning_tuner
from .teacher_importance import importance_after, recording_importance

_NOT_MODEL_INPUTS = ("labels", "shift_labels", "num_items_in_batch", "use_cache", "completion_mask")


class LVPruningTrainer(SFTTrainer):
    """SFTTrainer for LVPruning adapters (base model frozen; only the decision modules learn).

    Pass a model wrapped with `get_lvpruning_model` (or a LLaVA model and
    `peft_config=LVPruningConfig(...)`); every other argument is `SFTTrainer`'s.
    """

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self._lvpruning = lvpruning_tuner(self.accelerator.unwrap_model(self.model))

    @property
    def lvpruning_config(self) -> LVPruningConfig:
        """The active adapter's config (loss weights, schedule)."""
        return self._lvpruning.active_config

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """SFTTrainer's LM loss, weighted, plus the ratio loss (and the distillation term)."""
        config = self.lvpruning_config
        training = self.model.training
        distill = training and config.distill_weight > 0
        rank = training and config.teacher_rank_weight > 0
        captured: dict[str, torch.Tensor] = {}
        handle = None
        if distill:
            handle = self._lvpruning._parts.backbone.register_forward_hook(
                lambda module, args, output: captured.__setitem__("hidden", output.last_hidden_state)
            )
        labels = inputs.get("labels")
        answer = labels != -100 if config.hide_answer_from_modules and labels is not None else None
        try:
            with self._lvpruning.hide_from_modules(answer):
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            if handle is not None:
                handle.remove()
        lm_loss, outputs = result if return_outputs else (result, None)
        mode = "train" if training else "eval"
        stats = self._lvpruning.pruning_stats
        loss = config.lm_loss_weight * lm_loss
        self._log_metric(mode, "lm_loss", lm_loss.detach() * self._lm_loss_display_scale(num_items_in_batch))
        for i, ratio in enumerate(stats.keep_ratios):
            self._log_metric(mode, f"keep_ratio/{i + 1}", torch.tensor(ratio, device=lm_loss.device))
        steps = self._micro_batches(num_items_in_batch)  # the per-micro-batch terms are divided by it
        if training and stats.ratio_loss is not None:
            loss = loss + config.ratio_loss_weight * stats.ratio_loss / steps
            self._log_metric(mode, "ratio_loss", stats.ratio_loss.detach())
        if training and stats.attention_loss is not None:
            loss = loss + config.attention_distill_weight * stats.attention_loss / steps
            self._log_metric(mode, "attention_loss", stats.attention_loss.detach())
        if distill or (rank and stats.module_scores):
            teacher_hidden, importance = self._teacher_pass(model, inputs, with_importance=rank)
            if distill and "hidden" in captured:
                kd = self._distillation_loss(model, inputs, captured["hidden"], teacher_hidden)
                loss = loss + config.distill_weight * kd / steps
                self._log_metric(mode, "distill_loss", kd.detach())
            if rank and stats.module_scores:
                rank_loss = self._teacher_rank_loss(stats.module_scores, importance)
                loss = loss + config.teacher_rank_weight * rank_loss / steps
                self._log_metric(mode, "teacher_rank_loss", rank_loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _lm_loss_display_scale(self, num_items_in_batch: Any) -> float:
        """Undo SFTTrainer's gradient-accumulation and DDP scaling of the LM loss, for logging only."""
        scale = float(self._micro_batches(num_items_in_batch))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale /= self.accelerator.num_processes // self.get_tp_size()
        return scale

    def _micro_batches(self, num_items_in_batch: Any) -> int:
        """How many micro-batches the Trainer sums without dividing (1 when it divides itself)."""
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            return self.current_gradient_accumulation_steps
        return 1

    def _teacher_pass(
        self, model: torch.nn.Module, inputs: dict[str, Any], with_importance: bool
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One no-grad forward of the unpruned model (the adapter disabled): its last hidden states
        (B, L, d) and, if asked, the importance each layer from the first module on reads from every
        token (`teacher_importance.read_importance`, {layer: (B, L)})."""
        peft_model = self.accelerator.unwrap_model(model)
        parts = self._lvpruning._parts
        model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        labels = inputs["labels"]
        readers = torch.zeros_like(labels, dtype=torch.bool)
        readers[:, :-1] = labels[:, 1:] != -100  # the positions that predict a label
        valid = inputs.get("attention_mask", torch.ones_like(labels)).bool()
        first = self._lvpruning.active_config.layers[0]  # resolved, strictly increasing
        recording = (
            recording_importance(parts.layers, first, readers, valid) if with_importance else nullcontext({})
        )
        with torch.no_grad(), peft_model.disable_adapter(), recording as importance:
            hidden = parts.backbone(**model_inputs, use_cache=False).last_hidden_state
        return hidden, importance

    def _teacher_rank_loss(
        self, module_scores: list[tuple[torch.Tensor, torch.Tensor]], importance: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        """Mean over modules of the listwise KL between what the unpruned model's layers from the
        module's position on read from each surviving vision token and the module's keep scores."""
        positions = self._lvpruning.active_config.layers
        losses = [
            attention_rank_loss(scores, importance_after(importance, p).to(scores.device), alive)
            for p, (scores, alive) in zip(positions, module_scores, strict=True)
        ]
        return torch.stack(losses).mean()

    def _distillation_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        student_hidden: torch.Tensor,
        teacher_hidden: torch.Tensor,
    ) -> torch.Tensor:
        """Mean KL(teacher || student) of next-token distributions over the labelled positions."""
        labels = inputs["labels"][:, 1:]
        positions = labels != -100
        if not bool(positions.any()):
            return student_hidden.new_zeros(())
        peft_model = self.accelerator.unwrap_model(model)
        lm_head = peft_model.get_output_embeddings()
        student = lm_head(student_hidden[:, :-1][positions]).float()
        teacher = lm_head(teacher_hidden[:, :-1][positions]).float()
        return F.kl_div(
            F.log_softmax(student, dim=-1),
            F.log_softmax(teacher, dim=-1),
            log_target=True,
            reduction="batchmean",
        )

    def _log_metric(self, mode: str, name: str, value: torch.Tensor) -> None:
        gathered = self.accelerator.gather_for_metrics(value.detach().float().reshape(1))
        self._metrics[mode][name].append(gathered.mean().item())

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save the adapter alone (config, safetensors, card): no base weights, no processor files, no
        pickled training arguments. Checkpoints go through here too; resuming needs nothing else."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(
            output_dir, state_dict=state_dict, is_main_process=self.args.should_save
        )

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Write the LVPruning model card (with the training run's hyper-parameters) to `output_dir`."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            write_model_card(
                self.args.output_dir,
                self.lvpruning_config.card_facts(),
                training_args=self.args,
                force=True,
                validation=self._last_validation(),
            )

    def _last_validation(self) -> ValidationFacts | None:
        """The last measurement of a `ValidationNLLCallback` (`--eval_data`), if one ran."""
        from .eval_callback import ValidationNLLCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ValidationNLLCallback) and callback.history:
                last = callback.history[-1]
                return ValidationFacts(
                    adapter=last["eval_nll/lvp"],
                    random=last["eval_nll/random"],
                    unpruned=callback.unpruned,
                    questions=len(callback.samples),
                    step=int(last["step"]),
                )
        return None
