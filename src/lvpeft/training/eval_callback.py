"""Validation during `lvpeft train --eval_data`: does the adapter prune better than chance?

`ValidationNLLCallback` measures every `eval_steps` optimizer steps (or at the end of every epoch) and
once more at the end of training. On a fixed validation subset it measures the mean negative
log-likelihood per token of the reference answers (`answer_nll.answer_nll`: prefill with pruning, answer
teacher-forced on the pruned cache, as `generate()` would see it) for

* `eval_nll/lvp`: the model pruned by the adapter being trained, at its keep ratio;
* `eval_nll/random`: the same positions and budget with a seeded random scorer;
* `eval_nll/unpruned`: the base model (adapter disabled), logged once: it never changes.

Lower is better. At the end of training it logs a WARNING when the adapter's NLL is not below random
pruning's: the decision modules have not learned anything a coin would not do (see
docs/evaluation.md). The model is put in eval mode for the measurement (pruning by removal, no Gumbel
noise, no global RNG drawn) and back in train mode after, so training itself is unchanged.

The callback keeps its own schedule rather than riding on the trainer's evaluation loop: that loop would
run a second, teacher-forced forward over the same rows, in which the trained answer is hidden from the
decision modules (see `LVPruningModel.hide_from_modules`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .answer_nll import answer_nll
from .data.validation import EncodedBatch, EvalSample, encode_batch, eval_chat_template, tokenize_sample

logger = logging.getLogger(__name__)

DOCS_HINT: str = "docs/evaluation.md (section 'When the adapter does not beat random pruning')"
"""Where the end-of-training warning points to."""


class ValidationNLLCallback(TrainerCallback):
    """Log the validation answer NLL of the adapter, random pruning and the unpruned model.

    Args:
        trainer: the `LVPruningTrainer` (its model, processor and `log` are used).
        samples: the validation questions (`data.validation.samples_from_dataset`).
        batch_size: questions per forward.
        seed: seed of the random scorer.
        eval_steps: measure every this many optimizer steps (a float < 1: that fraction of the run's
            steps, as `TrainingArguments.eval_steps`); None: only per epoch (if `per_epoch`) and at the end.
        per_epoch: measure at the end of every epoch.

    Attributes:
        history: `{metric: value}` of every measurement, in order (with `step`).
        unpruned: the unpruned model's NLL, once measured.
    """

    def __init__(
        self,
        trainer: Any,
        samples: Sequence[EvalSample],
        batch_size: int = 8,
        seed: int = 0,
        eval_steps: float | None = None,
        per_epoch: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("ValidationNLLCallback needs at least one validation question.")
        self.trainer = trainer
        self.samples = list(samples)
        self.batch_size = max(1, int(batch_size))
        self.seed = seed
        self.eval_steps = eval_steps
        self.per_epoch = per_epoch
        self.history: list[dict[str, float]] = []
        self.unpruned: float | None = None
        self._batches: list[EncodedBatch] | None = None
        self._last_step = -1
        self._every: int | None = None

    # -- trainer events ---------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Resolve a fractional `eval_steps` against the run's number of steps."""
        steps = self.eval_steps
        if steps is not None and steps > 0:
            self._every = max(1, math.ceil(state.max_steps * steps)) if steps < 1 else int(steps)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Measure every `eval_steps` steps."""
        if self._every and state.global_step % self._every == 0:
            self.evaluate(state.global_step)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Measure at the end of an epoch, when asked to."""
        if self.per_epoch and self._last_step != state.global_step:
            self.evaluate(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Measure the final adapter (unless the last step was just measured) and warn if it does not beat
        random pruning."""
        if self._last_step != state.global_step:
            self.evaluate(state.global_step)
        self.warn_if_not_better()

    # -- measuring --------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict[str, float]:
        """Measure now, log through the trainer, remember and return the metrics."""
        metrics = self.measure()
        self._last_step = step
        self.history.append({**metrics, "step": step})
        model = self.trainer.model
        training = model.training
        control = getattr(self.trainer, "control", None)
        pending = control.should_log if control is not None else False
        model.eval()  # SFTTrainer.log would otherwise merge (and clear) the pending training metrics
        try:
            self.trainer.log(dict(metrics))
        finally:
            model.train(training)
            if control is not None:  # logging resets the flag; the step's own training log is still due
                self.trainer.control.should_log = pending
        logger.info(
            "validation answer NLL at step %d: %s",
            step,
            ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items()),
        )
        return metrics

    def measure(self) -> dict[str, float]:
        """`{"eval_nll/lvp", "eval_nll/random"[, "eval_nll/unpruned"]: mean NLL per answer token}`."""
        from ..pruning.scorers import RandomScorer
        from ..tuner.model import lvpruning_tuner

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tuner = lvpruning_tuner(model)
        training = model.training
        model.eval()
        try:
            metrics = {"eval_nll/lvp": self._mean_nll(model)}
            modules = len(tuner.active_config.layers)
            with tuner.use_scorers([RandomScorer(seed=self.seed) for _ in range(modules)]):
                metrics["eval_nll/random"] = self._mean_nll(model)
            if self.unpruned is None:
                with model.disable_adapter():
                    self.unpruned = self._mean_nll(model)
                metrics["eval_nll/unpruned"] = self.unpruned
        finally:
            model.train(training)
        return metrics

    def warn_if_not_better(self) -> str | None:
        """Log (and return) a WARNING when the last measured adapter NLL is not below random pruning's."""
        if not self.history:
            return None
        last = self.history[-1]
        lvp, random = last["eval_nll/lvp"], last["eval_nll/random"]
        if lvp < random:
            return None
        keep = lvpruning_keep(self.trainer)
        message = (
            f"the adapter does not beat random pruning at keep={keep:g}: validation answer NLL {lvp:.4f} "
            f"(adapter) vs {random:.4f} (random, same positions and budget) on {len(self.samples)} "
            f"questions after step {int(last['step'])}; see {DOCS_HINT}."
        )
        logger.warning(message)
        return message

    def _mean_nll(self, model: Any) -> float:
        total, tokens = 0.0, 0
        for batch in self._encoded():
            nll, count = answer_nll(model, batch)
            total += float(nll.double().sum())
            tokens += int(count.sum())
        return total / max(1, tokens)

    def _encoded(self) -> list[EncodedBatch]:
        if self._batches is None:
            processor = self.trainer.processing_class
            template = eval_chat_template(processor)
            tokenized = [tokenize_sample(processor, s, template) for s in self.samples]
            size = self.batch_size
            self._batches = [
                encode_batch(processor, self.samples[i : i + size], tokenized[i : i + size])
                for i in range(0, len(self.samples), size)
            ]
        return self._batches


def lvpruning_keep(trainer: Any) -> float:
    """The keep ratio of the adapter the trainer trains."""
    from ..tuner.model import lvpruning_tuner

    return lvpruning_tuner(trainer.accelerator.unwrap_model(trainer.model)).active_config.keep
