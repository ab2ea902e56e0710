"""`lvpeft eval`: the accuracy and answer NLL of the unpruned model, the adapter and the training-free
scorers at several keep ratios, on LLaVA-format validation data (`lvpeft.measure.evaluate`).

```bash
lvpeft eval --model my-adapter/ --data val.json --image-folder images/ --json report.json --plot report.png
lvpeft eval --model llava-hf/llava-1.5-7b-hf --data val.json --image-folder images/  # scorers only
```

Prints a markdown table; `--json` alone prints the report as JSON instead (like `lvpeft flops --json` and
`lvpeft bench --json`), `--json PATH` writes it to PATH and still prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluate import DEFAULT_KEEPS, DEFAULT_SCORERS, evaluate

STDOUT = "-"
"""`--json` without a path: the JSON goes to stdout instead of the table."""


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `lvpeft eval` on the `lvpeft` parser."""
    parser = subparsers.add_parser(
        "eval",
        help="accuracy and answer NLL of the unpruned model, the adapter and the training-free scorers "
        "at several keep ratios, on LLaVA-format validation data",
        description="Compare the unpruned model, an LVPruning adapter (at several keep ratios) and the "
        "training-free scorers at the same positions and budget: exact-match accuracy of greedy answers "
        "(normalised: lower case, no punctuation or articles) and the mean NLL per token of the reference "
        "answer (the last assistant turn of each row).",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="adapter folder or Hub id (its config names the base), or a base model folder or Hub id "
        "(then only the training-free scorers are compared, at the default module positions)",
    )
    parser.add_argument("--data", required=True, help="LLaVA-format JSON/JSONL (what `lvpeft train` reads)")
    parser.add_argument(
        "--image-folder", default=None, help="folder of the rows' image paths (default: the data file's)"
    )
    parser.add_argument(
        "--keeps",
        type=_floats,
        default=list(DEFAULT_KEEPS),
        help=f"final keep ratios, comma-separated (default: {','.join(f'{k:g}' for k in DEFAULT_KEEPS)})",
    )
    parser.add_argument(
        "--scorers",
        type=_names,
        default=list(DEFAULT_SCORERS),
        help="training-free scorers, comma-separated, or 'none' (default: " + ",".join(DEFAULT_SCORERS) + ")",
    )
    parser.add_argument("--max-samples", type=int, default=None, help="use the first N usable rows")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per forward (default 8)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget (default: the longest reference answer's tokens + 4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random scorer (default 0)")
    parser.add_argument(
        "--layers", type=_ints, default=None, help="module positions for a base model, e.g. 1,8,16"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="PATH",
        help="write the report as JSON to PATH; without PATH, print JSON instead of the table",
    )
    parser.add_argument(
        "--plot", default=None, metavar="PATH", help="accuracy and NLL vs keep, a picture (matplotlib)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=eval_command)
    return parser


def eval_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft eval`: run `evaluate`, print the table (or JSON), write JSON and plot."""
    if args.plot:
        from .eval_report import require_matplotlib

        try:
            require_matplotlib()  # before the evaluation, not after it
        except ImportError as error:
            raise ValueError(str(error)) from error
    report = evaluate(
        args.model,
        args.data,
        image_folder=args.image_folder,
        keeps=args.keeps,
        scorers=args.scorers,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        layers=args.layers,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        progress=not args.no_progress,
    )
    text = json.dumps(report.to_dict(), indent=2)
    if args.json == STDOUT:
        print(text)
    else:
        print(report.to_markdown())
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
            print(f"JSON report: {args.json}", file=sys.stderr)
    if args.plot:
        report.plot(args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    return [] if names in ([], ["none"]) else names
