"""One LLaVA-format row at a time: read the rows of a JSON or JSONL file, validate a row's structure and
convert its turns to chat messages (`parse_row`); the reasons a row is skipped (`REASONS`). Images are
not opened here (`llava_format.load_llava_dataset` checks them, once per distinct path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER: str = "<image>"
"""The placeholder that stands for one image in a LLaVA human turn."""

ROLE_MAP: dict[str, str] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""LLaVA ``"from"`` values (and their chat names) mapped to chat-template roles."""

REASONS: dict[str, str] = {
    "malformed_json": "a JSONL line that is not valid JSON",
    "malformed_row": "not an object, no 'conversations' list, a turn without string 'from'/'value', "
    "an unknown role, or an 'image' that is not a non-empty path or list of paths",
    "empty_conversations": "'conversations' is an empty list",
    "bad_role_order": "turns do not alternate human, gpt, human, gpt, ... ending with gpt",
    "empty_turn": "a turn with no text and no image",
    "placeholder_mismatch": "number of <image> placeholders in human turns != number of images, "
    "or a placeholder in a gpt turn",
    "missing_image": "an image file that does not exist",
    "corrupt_image": "an image file that PIL cannot open or decode",
}
"""Reason codes of :attr:`LoadReport.skipped_by_reason`, with what they mean."""


class BadRow(Exception):
    """A row failed validation with ``reason`` (a key of :data:`REASONS`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Candidate:
    """A structurally valid row waiting for its images to be checked."""

    row_id: str
    image_paths: list[str]
    messages: list[dict[str, Any]]


class JsonLineError:
    """Internal: a JSONL line that did not parse."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def read_rows(path: Path) -> tuple[Iterator[tuple[int, Any]], int]:
    """``(iterator of (index, row), number of rows)`` for a JSON list file or a JSONL file."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if path.suffix.lower() != ".jsonl" and head.startswith(b"["):
        try:
            with path.open(encoding="utf-8") as f:
                rows = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a JSON list of rows, got {type(rows).__name__}")
        return iter(enumerate(rows)), len(rows)
    with path.open(encoding="utf-8") as f:
        n_rows = sum(1 for line in f if line.strip())
    return iter_jsonl(path), n_rows


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, row)`` for every non-blank line; a line that does not parse becomes a
    :class:`JsonLineError`."""
    index = 0
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as e:
                row = JsonLineError(f"line {line_no}: {e}")
            yield index, row
            index += 1


def row_id_of(row: Any, index: int) -> str:
    """The row's ``"id"`` as a string, or ``"#<index>"`` when it has none."""
    if isinstance(row, dict) and row.get("id") is not None:
        return str(row["id"])
    return f"#{index}"


def parse_row(row: Any, row_id: str, folder: Path) -> Candidate:
    """Validate one row's structure and convert it; raises :class:`BadRow`. Images are not opened."""
    if isinstance(row, JsonLineError):
        raise BadRow("malformed_json", row.detail)
    if not isinstance(row, dict):
        raise BadRow("malformed_row", f"row is a {type(row).__name__}, not an object")
    if "conversations" not in row:
        raise BadRow("malformed_row", "no 'conversations' key")
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise BadRow("malformed_row", f"'conversations' is a {type(turns).__name__}, not a list")
    if not turns:
        raise BadRow("empty_conversations", "'conversations' is empty")
    image_paths = image_paths_of(row.get("image"), folder)

    roles: list[str] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
            raise BadRow("malformed_row", f"turn {i} has no string 'from'")
        if not isinstance(turn.get("value"), str):
            raise BadRow("malformed_row", f"turn {i} has no string 'value'")
        if turn["from"] not in ROLE_MAP:
            raise BadRow("malformed_row", f"turn {i} has unknown role {turn['from']!r}")
        roles.append(ROLE_MAP[turn["from"]])
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if roles != expected or roles[-1] != "assistant":
        shown = ", ".join(t["from"] for t in turns[:8]) + (", ..." if len(turns) > 8 else "")
        raise BadRow("bad_role_order", f"roles are {shown}; expected human, gpt, ... ending with gpt")

    n_placeholders = 0
    for i, (role, turn) in enumerate(zip(roles, turns)):
        count = turn["value"].count(IMAGE_PLACEHOLDER)
        if role == "assistant" and count:
            raise BadRow("placeholder_mismatch", f"turn {i} (an answer) contains {IMAGE_PLACEHOLDER}")
        n_placeholders += count
    if n_placeholders != len(image_paths):
        raise BadRow(
            "placeholder_mismatch",
            f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {len(image_paths)} image(s)",
        )

    messages = []
    for i, (role, turn) in enumerate(zip(roles, turns)):
        content = content_blocks(turn["value"])
        if not content:
            raise BadRow("empty_turn", f"turn {i} ({turn['from']}) is empty")
        messages.append({"role": role, "content": content})
    return Candidate(row_id=row_id, image_paths=image_paths, messages=messages)


def image_paths_of(value: Any, folder: Path) -> list[str]:
    """The row's ``"image"`` field as absolute path strings (``[]`` when absent); raises :class:`BadRow`."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
        raise BadRow(
            "malformed_row", f"'image' must be a non-empty path or a list of them, got {value!r:.80}"
        )
    return [str(folder / p) for p in paths]


def content_blocks(text: str) -> list[dict[str, str | None]]:
    """Split a turn at its ``<image>`` placeholders into ``image``/``text`` blocks, in order.

    Text pieces are stripped (the chat template adds its own separators) and empty ones dropped:
    ``"<image>\nWhat is it?"`` -> ``[{"type": "image", "text": None},
    {"type": "text", "text": "What is it?"}]``.
    """
    blocks: list[dict[str, str | None]] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            blocks.append({"type": "image", "text": None})
        if piece.strip():
            blocks.append({"type": "text", "text": piece.strip()})
    return blocks
