"""Load LLaVA-format conversation data into a ``datasets.Dataset`` that TRL's ``SFTTrainer`` trains on.

Input
-----
A JSON file holding a list of rows, or a JSONL file with one row per line, as released with LLaVA
(``llava_v1_5_mix665k.json``) and as written by :func:`lvpeft.demo.questions.export_llava_json`::

    {"id": "000000033471",
     "image": "coco/train2017/000000033471.jpg",        # or a list of paths, or absent (text-only)
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."},
                       {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                       {"from": "gpt", "value": "The back of the bus features an advertisement."}]}

Image paths are relative to ``image_folder``. Every ``<image>`` placeholder in a human turn stands for
the next image of the row, in order, so the number of placeholders must equal the number of images.

Output (the format TRL 1.16 calls *conversational language modeling* with images)
--------------------------------------------------------------------------------
One row per conversation, with the columns

* ``"id"``: ``str``, the row's id (dropped by the trainer, kept for debugging);
* ``"images"``: ``list[PIL.Image.Image]`` in placeholder order, stored as file paths with the
  ``datasets.Image(mode="RGB")`` feature, so an image is opened only when its row is read (a 620K-row
  dataset holds paths, not pixels); ``[]`` for a text-only row;
* ``"messages"``: ``[{"role": "user" | "assistant", "content": [{"type": "image" | "text", "text":
  str | None}, ...]}, ...]``. The ``<image>`` placeholders are removed from the text and become
  ``{"type": "image"}`` blocks at the place they had in the turn (``text`` is ``None`` on those).

Why this format, and the trade-off
----------------------------------
TRL's ``DataCollatorForVisionLanguageModeling`` (``trl/trainer/sft_trainer.py``) takes either
``messages`` (+ ``images``) or ``prompt``/``completion`` (+ ``images``) rows:

* ``messages``: ``_collate_language_modeling`` fills the image blocks with the row's images
  (``trl.data_utils.prepare_multimodal_messages``), renders and tokenizes the whole conversation with
  ``processor.apply_chat_template(..., return_assistant_tokens_mask=assistant_only_loss)`` and labels
  every non-pad token, **image tokens and user turns included**, unless ``assistant_only_loss=True``;
  then only the tokens the chat template wraps in ``{% generation %}`` ... ``{% endgeneration %}``
  keep their labels. transformers (>= 5.18, checked by ``SFTTrainer.__init__``) shifts that mask past
  the expanded image tokens (``ProcessorMixin._adjust_assistant_masks_indices``).
* ``prompt``/``completion``: ``_collate_prompt_completion`` tokenizes both parts and, with
  ``completion_only_loss`` (the default for this format), trains on the completion only, that is on the
  **last** assistant turn. A multi-turn conversation would have to be split into one row per assistant
  turn, each re-encoding the image and the history: N times the compute for an N-turn conversation
  (LLaVA-665K averages several turns), and a different weighting of samples than LLaVA's.

This loader therefore emits ``messages``: one forward pass per conversation trains every assistant
turn, as LLaVA itself does. The cost is a requirement on the chat template: it must mark the assistant
answers with ``{% generation %}`` and put the end-of-turn token inside the marked span (TRL's
``is_chat_template_stop_token_trained`` warns otherwise). ``SFTTrainer`` replaces a template without
markers only when it knows it (``trl.chat_template_utils.get_training_chat_template``) and raises for
the others (such as :data:`lvpeft.demo.tiny_model.CHAT_TEMPLATE`). The llava-hf LLaVA-1.5 template has markers
but no end-of-turn token and no BOS (TRL tokenizes with ``add_special_tokens=False``).
:func:`lvpeft.training.data.chat_templates.training_chat_template` picks the template to train with (the
processor's if it has markers, else lvpeft's for the model's family, such as
:data:`LLAVA_TRAINING_CHAT_TEMPLATE`, re-exported here, for LLaVA-1.5); ``lvpeft train`` and the demo use it.

``SFTConfig`` settings
----------------------
* ``assistant_only_loss=True`` (required; the default ``False`` also trains on image and user tokens);
* ``max_length``: the default 1024 truncates long conversations (LLaVA-1.5 used 2048; 576 of the tokens
  are the image); truncation keeps the start (``truncation_mode="keep_end"`` is refused for images), and a
  cut through any image's tokens makes the processor raise mid-epoch, so keep it above the longest row;
* nothing else: ``SFTTrainer`` detects the ``images`` column, skips dataset preparation (images are
  processed on the fly by the collator) and, with ``remove_unused_columns=True`` (the default), keeps the
  columns ``messages`` and ``images`` (``SFTTrainer._set_signature_columns_if_needed``) and drops ``id``.

Validation happens here, before any training: malformed rows, placeholder/image count mismatches,
missing and unreadable images are reported (:class:`LoadReport`) and skipped, or raise a ``ValueError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from PIL import Image

from .chat_templates import GENERATION_MARKER
from .llava_rows import (
    IMAGE_PLACEHOLDER,
    REASONS,
    ROLE_MAP,
    BadRow,
    Candidate,
    parse_row,
    read_rows,
    row_id_of,
)
from .training_templates import LLAVA_TRAINING_CHAT_TEMPLATE

__all__ = [
    "GENERATION_MARKER",
    "IMAGE_PLACEHOLDER",
    "LLAVA_FEATURES",
    "LLAVA_TRAINING_CHAT_TEMPLATE",
    "REASONS",
    "ROLE_MAP",
    "LoadReport",
    "load_llava_dataset",
]

logger = logging.getLogger(__name__)

LLAVA_FEATURES: datasets.Features = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Image(mode="RGB")),
        "messages": [
            {
                "role": datasets.Value("string"),
                "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
            }
        ],
    }
)
"""Schema of the loaded dataset; ``images`` holds paths and decodes to RGB PIL images on access."""

ImageCheck = Literal["load", "verify", "exists"]

_FLUSH_ROWS = 16_384  # converted rows are moved into Arrow every this many rows


@dataclass
class LoadReport:
    """What :func:`load_llava_dataset` read, kept and dropped, and why.

    ``total_rows`` counts the rows read (all of them unless ``max_samples`` stopped early);
    ``total_rows == loaded + skipped_text_only + sum(skipped_by_reason.values())``. ``bad_rows`` holds
    ``(row id, "<reason code>: <detail>")`` for the first :attr:`max_bad_rows` bad rows, in file order;
    a row without an ``"id"`` is named ``"#<index>"`` (0-based row or line index).
    """

    total_rows: int = 0
    loaded: int = 0
    skipped_text_only: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    bad_rows: list[tuple[str, str]] = field(default_factory=list)
    max_bad_rows: int = 20

    @property
    def num_bad_rows(self) -> int:
        """Number of rows dropped (or refused) for a reason in :data:`REASONS`."""
        return sum(self.skipped_by_reason.values())

    def add_bad_row(self, row_id: str, reason: str, detail: str) -> None:
        """Count one bad row under ``reason`` (a key of :data:`REASONS`) and keep it if there is room."""
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        if len(self.bad_rows) < self.max_bad_rows:
            self.bad_rows.append((row_id, f"{reason}: {detail}"))

    def summary(self, max_rows: int = 5) -> str:
        """One-paragraph human-readable summary, listing up to ``max_rows`` bad rows."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_reason.items())) or "none"
        lines = [
            f"read {self.total_rows} rows: loaded {self.loaded}, skipped {self.skipped_text_only} text-only, "
            f"{self.num_bad_rows} bad ({counts})"
        ]
        lines += [f"  row {row_id!r}: {reason}" for row_id, reason in self.bad_rows[:max_rows]]
        if self.num_bad_rows > max_rows:
            lines.append(f"  ... and {self.num_bad_rows - max_rows} more")
        return "\n".join(lines)


def load_llava_dataset(
    data_path: str | os.PathLike[str],
    image_folder: str | os.PathLike[str] | None = None,
    *,
    keep_text_only: bool = False,
    on_error: Literal["skip", "raise"] = "skip",
    max_samples: int | None = None,
    image_check: ImageCheck = "load",
    num_workers: int = 8,
    progress: bool | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Read, validate and convert a LLaVA-format JSON/JSONL file for ``SFTTrainer``.

    Args:
        data_path: a ``.json`` file holding a list of rows, or a JSONL file (one row per line; chosen by
            the ``.jsonl`` suffix or when the file does not start with ``[``).
        image_folder: folder the rows' image paths are relative to (absolute paths are used as they
            are); defaults to the folder of ``data_path``.
        keep_text_only: keep rows without images (``images == []``); the paper drops them (default).
        on_error: ``"skip"`` drops bad rows, counts them per reason in the report and logs a warning;
            ``"raise"`` raises a ``ValueError`` naming the first bad rows after validating the file.
        max_samples: stop once this many rows are loaded (the first valid ones in file order); rows after
            that point are neither read nor checked.
        image_check: how much of every image file to check: ``"load"`` decodes it (JPEG at 1/8 scale; the
            only check that catches truncated JPEGs, about 1 ms per COCO image), ``"verify"`` runs PIL's
            ``verify()`` (header and PNG checksums, ~30x faster), ``"exists"`` only checks that the file
            is there. Every distinct path is checked once, by ``num_workers`` threads.
        num_workers: threads checking images.
        progress: show a tqdm bar; ``None`` shows one for files of 10,000 rows or more.

    Returns:
        ``(dataset, report)``: a ``datasets.Dataset`` with :data:`LLAVA_FEATURES` (columns ``id``,
        ``images``, ``messages``; see the module docstring) and a :class:`LoadReport`.

    Raises:
        FileNotFoundError: ``data_path`` or ``image_folder`` does not exist.
        ValueError: the file is not a JSON list / JSONL file; or ``on_error="raise"`` and a row is bad.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if image_check not in ("load", "verify", "exists"):
        raise ValueError(f"image_check must be 'load', 'verify' or 'exists', got {image_check!r}")
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    data_path = Path(data_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"LLaVA data file not found: {data_path}")
    folder = Path(image_folder) if image_folder is not None else data_path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    folder = folder.absolute()

    rows, n_rows = read_rows(data_path)
    report = LoadReport()
    columns: dict[str, list[Any]] = {"id": [], "images": [], "messages": []}
    parts: list[datasets.Dataset] = []  # Arrow-backed pieces, so the Python rows can be freed as we go
    image_errors: dict[str, tuple[str, str] | None] = {}  # path -> (reason, detail), or None if fine
    bar = _progress_bar(n_rows, progress if progress is not None else n_rows >= 10_000)
    chunk_size = 1024 if max_samples is None else max(1, min(1024, max_samples))
    done = max_samples == 0
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for chunk in [] if done else _chunks(rows, chunk_size):
            # 1. structure (cheap), 2. images of the rows that passed (I/O, threaded), 3. bookkeeping in
            # file order, stopping at the max_samples-th loaded row.
            outcomes: list[tuple[str, BadRow | Candidate]] = []
            for index, row in chunk:
                row_id = row_id_of(row, index)
                try:
                    outcomes.append((row_id, parse_row(row, row_id, folder)))
                except BadRow as bad:
                    outcomes.append((row_id, bad))
            new_paths = list(
                dict.fromkeys(
                    p
                    for _, out in outcomes
                    if isinstance(out, Candidate)
                    for p in out.image_paths
                    if p not in image_errors
                )
            )
            for path, error in zip(new_paths, pool.map(lambda p: _check_image(p, image_check), new_paths)):
                image_errors[path] = error
            for row_id, out in outcomes:
                report.total_rows += 1
                if isinstance(out, BadRow):
                    report.add_bad_row(row_id, out.reason, out.detail)
                    continue
                if not out.image_paths and not keep_text_only:
                    report.skipped_text_only += 1
                    continue
                error = next((image_errors[p] for p in out.image_paths if image_errors[p]), None)
                if error is not None:
                    report.add_bad_row(row_id, *error)
                    continue
                columns["id"].append(row_id)
                columns["images"].append(out.image_paths)
                columns["messages"].append(out.messages)
                report.loaded += 1
                if max_samples is not None and report.loaded >= max_samples:
                    done = True
                    break
            if bar is not None:
                bar.update(len(chunk))
            if len(columns["id"]) >= _FLUSH_ROWS:
                parts.append(datasets.Dataset.from_dict(columns, features=LLAVA_FEATURES))
                columns = {name: [] for name in columns}
            if done:
                break
    if bar is not None:
        bar.close()

    if report.num_bad_rows:
        if on_error == "raise":
            raise ValueError(f"{data_path}: bad rows found before training\n{report.summary()}")
        logger.warning("%s: %s", data_path, report.summary())
    else:
        logger.info("%s: %s", data_path, report.summary())
    parts.append(datasets.Dataset.from_dict(columns, features=LLAVA_FEATURES))
    return (parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)), report


def _chunks(items: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    chunk: list[tuple[int, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress_bar(total: int, show: bool) -> Any:
    """A tqdm bar over ``total`` rows, or ``None``."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Validating LLaVA rows", unit="row")


def _check_image(path: str, mode: ImageCheck) -> tuple[str, str] | None:
    """``None`` if the image at ``path`` passes ``mode``, else ``(reason, detail)``."""
    if not os.path.isfile(path):
        return "missing_image", f"{path} does not exist"
    if mode == "exists":
        return None
    try:
        with Image.open(path) as image:
            if mode == "verify":
                image.verify()
            else:
                if image.format == "JPEG":  # decode at 1/8 scale: still reads the whole file
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except Exception as e:
        return "corrupt_image", f"{path}: {type(e).__name__}: {e}"
    return None
