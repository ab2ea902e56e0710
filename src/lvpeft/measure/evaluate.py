"""`lvpeft.evaluate`: accuracy and answer NLL of a pruned model against the unpruned one and the
training-free baselines, at several keep ratios, on LLaVA-format validation data.

```python
report = lvpeft.evaluate("my-adapter/", "val.json", image_folder="images/")  # or a base model folder
print(report.to_markdown())
```

For every variant the same questions are answered greedily by `generate()` (exact match after
`answer_metrics.normalize_answer`) and scored by the mean negative log-likelihood per token of the
reference answer (teacher-forced on the pruned KV cache, see `lvpeft.training.answer_nll`). The variants:

* `unpruned`: the base model (the adapter disabled), once;
* `lvpruning`: the adapter's learned modules at each keep (`set_keep`: the default schedule is recomputed,
  an explicit one shifted), when an adapter is given;
* each training-free scorer of `lvpeft.pruning.scorers.BASELINES` (`random`, seeded; `uniform`; `fastv`) at
  the same positions and budget at each keep (`use_scorers`). Given only a base model, the scorers run at
  the default positions of `LVPruningConfig` (an untrained learned scorer is not reported).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..training.answer_nll import answer_nll
from ..training.data.validation import (
    EncodedBatch,
    EvalSample,
    encode_batch,
    eval_chat_template,
    load_eval_samples,
    tokenize_sample,
)
from .answer_metrics import exact_match, greedy_answers
from .eval_model import EvalModel, load_eval_model
from .eval_report import LEARNED, UNPRUNED, EvalReport, EvalRow

DEFAULT_KEEPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
"""Keep ratios `evaluate` reports by default."""
DEFAULT_SCORERS: tuple[str, ...] = ("random", "uniform", "fastv")
"""Training-free scorers `evaluate` compares by default (names of `lvpeft.pruning.scorers.BASELINES`)."""

_CACHE_BYTES = 1 << 30  # encoded batches are kept for the next variant while they fit in this


def evaluate(
    model: str | os.PathLike[str] | nn.Module,
    data: str | os.PathLike[str],
    *,
    image_folder: str | os.PathLike[str] | None = None,
    processor: Any = None,
    keeps: Sequence[float] = DEFAULT_KEEPS,
    scorers: Sequence[str] = DEFAULT_SCORERS,
    max_samples: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    progress: bool = True,
) -> EvalReport:
    """Compare the unpruned model, the adapter and the training-free scorers on validation questions.

    Args:
        model: an adapter folder or Hub id (its config names the base), a base model folder or Hub id, a
            `PeftModel` with an LVPruning adapter, or a LLaVA-like model (wrapped for the run, unwrapped
            after).
        data: LLaVA-format JSON/JSONL (what `lvpeft train --data` reads); the last assistant turn of a row
            is its reference answer, the turns before it the prompt.
        image_folder: folder of the rows' image paths (default: the data file's folder).
        processor: the model's processor (default: loaded from the model, or from the adapter's base).
        keeps: final keep ratios, each in (0, 1].
        scorers: names in `lvpeft.pruning.scorers.BASELINES`; `()` for none.
        max_samples: use the first N usable rows.
        batch_size: questions per forward.
        max_new_tokens: generation budget; default: the longest reference answer's tokens + 4.
        seed: seed of the random scorer (the same seed gives the same tokens kept).
        layers: module positions when only a base model is given (default: `LVPruningConfig`'s).
        dtype, device, attn_implementation: how a model given by name is loaded (device default: cuda if
            available).
        progress: show a tqdm progress bar.

    Returns:
        An `EvalReport`.

    Raises:
        ValueError: a keep out of (0, 1], an unknown scorer, batch_size < 1, no usable rows.
        FileNotFoundError: the data, image folder or model folder does not exist.
        TypeError: the model is neither LLaVA-like nor wrapped with an LVPruning adapter.
    """
    keeps = check_keeps(keeps)
    scorer_classes = check_scorers(scorers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    samples, load_report = load_eval_samples(data, image_folder, max_samples=max_samples)
    loaded = load_eval_model(
        model,
        processor,
        keep=keeps[0],
        layers=layers,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
    )
    template = eval_chat_template(loaded.processor)
    tokenized = [tokenize_sample(loaded.processor, s, template) for s in samples]
    budget = max_new_tokens or max(len(t.answer_ids) for t in tokenized) + 4
    batches = _Batches(loaded.processor, samples, tokenized, batch_size)
    variants = 1 + len(keeps) * (int(loaded.has_adapter) + len(scorer_classes))
    bar = _progress(variants * len(batches), progress)
    rows: list[EvalRow] = []

    def run(method: str, keep: float | None, schedule: list[float] | None) -> None:
        rows.append(_run_variant(loaded, batches, budget, method, keep, schedule, bar))

    try:
        with loaded.session():
            with loaded.model.disable_adapter():
                run(UNPRUNED, None, None)
            for keep in keeps:
                schedule = loaded.tuner.set_keep(keep)
                if loaded.has_adapter:
                    run(LEARNED, keep, schedule)
                for name, make in scorer_classes.items():
                    with loaded.tuner.use_scorers(make(seed, len(schedule))):
                        run(name, keep, schedule)
            layers_used = list(loaded.tuner.active_config.layers)
    finally:
        bar.close()
    return EvalReport(
        rows=rows,
        model=loaded.name,
        adapter=loaded.adapter,
        data=str(data),
        samples=len(samples),
        skipped_rows=load_report.total_rows - load_report.loaded,
        layers=layers_used,
        seed=seed,
        max_new_tokens=budget,
        keeps=list(keeps),
        scorers=list(scorer_classes),
    )


def check_keeps(keeps: Sequence[float]) -> list[float]:
    """The keep ratios as floats; ValueError if there are none or one is outside (0, 1]."""
    keeps = [float(k) for k in keeps]
    if not keeps:
        raise ValueError("keeps is empty: give at least one keep ratio in (0, 1].")
    bad = [k for k in keeps if not 0 < k <= 1]
    if bad:
        raise ValueError(f"every keep ratio must be in (0, 1], got {bad}.")
    return keeps


def check_scorers(names: Sequence[str]) -> dict[str, Callable[[int, int], list[Any]]]:
    """`{name: make(seed, modules) -> one scorer per module}` for training-free scorer names.

    Scorers whose constructor takes a `seed` (the random scorer) get `seed`.

    Raises:
        ValueError: a name not in `BASELINES` (the message lists the valid ones).
    """
    from ..pruning.scorers import BASELINES

    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown scorer(s) {unknown}; the training-free scorers are {sorted(BASELINES)}.")

    def factory(cls: type) -> Callable[[int, int], list[Any]]:
        seeded = "seed" in inspect.signature(cls).parameters
        return lambda seed, modules: [cls(seed=seed) if seeded else cls() for _ in range(modules)]

    return {name: factory(BASELINES[name]) for name in dict.fromkeys(names)}


class _Batches:
    """The encoded batches, kept for the next variant while they fit in `_CACHE_BYTES`."""

    def __init__(self, processor: Any, samples: list[EvalSample], tokenized: list[Any], size: int) -> None:
        self.processor = processor
        self.chunks = [(samples[i : i + size], tokenized[i : i + size]) for i in range(0, len(samples), size)]
        self.cache: dict[int, EncodedBatch] = {}
        self.keep: bool | None = None

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[tuple[list[EvalSample], EncodedBatch]]:
        for index, (samples, tokenized) in enumerate(self.chunks):
            batch = self.cache.get(index) or encode_batch(self.processor, samples, tokenized)
            if self.keep is None:
                size = sum(t.numel() * t.element_size() for t in batch.prompt.values())
                self.keep = size * len(self.chunks) <= _CACHE_BYTES
            if self.keep:
                self.cache[index] = batch
            yield samples, batch


def _run_variant(
    loaded: EvalModel,
    batches: _Batches,
    max_new_tokens: int,
    method: str,
    keep: float | None,
    schedule: list[float] | None,
    bar: Any,
) -> EvalRow:
    """Answer and score every batch with the model as it is configured now."""
    start = time.perf_counter()
    hits, total_nll, tokens, count = 0, 0.0, 0, 0
    bar.set_postfix_str(f"{method}" + ("" if keep is None else f" keep {keep:g}"))
    for samples, batch in batches:
        answers = greedy_answers(loaded.model, loaded.processor, batch, max_new_tokens)
        nll, n = answer_nll(loaded.model, batch)
        hits += sum(exact_match(a, s.reference) for a, s in zip(answers, samples, strict=True))
        total_nll += float(nll.double().sum())
        tokens += int(n.sum())
        count += len(samples)
        bar.update(1)
    return EvalRow(
        method=method,
        keep=keep,
        schedule=schedule,
        accuracy=hits / count,
        nll=total_nll / tokens if tokens else float("nan"),
        samples=count,
        answer_tokens=tokens,
        seconds=time.perf_counter() - start,
    )


def _progress(total: int, show: bool) -> Any:
    """A tqdm bar over `total` batches (disabled when `show` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="lvpeft eval", unit="batch", disable=not show)
