"""`lvpeft demo`: the command line of the demo (`pipeline.run_demo`)."""

from __future__ import annotations

import argparse
import warnings

import torch

from .settings import DEFAULT_BASE, DEFAULT_SETTINGS, QUICK_SETTINGS


def add_demo_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `lvpeft demo` to the CLI."""
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and picture an LVPruning adapter on a shipped tiny LLaVA (CPU, ~6 min)",
    )
    parser.add_argument("--out", default="lvpeft-demo", help="output folder (default: ./lvpeft-demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a shorter run (~2 min): fewer steps and questions"
    )
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help=f"a shipped tiny LLaVA, 'image-first' (LLaVA-1.5's token order, 8 layers) or 'question-first' "
        f"(4 layers), or a folder with a LLaVA model + processor saved by save_pretrained "
        f"(default: {DEFAULT_BASE})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a tiny model gains little from more, and on a busy CPU more "
        "threads than free cores made training 10x slower here)",
    )
    parser.set_defaults(func=demo_command)
    return parser


def demo_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft demo`."""
    from .pipeline import run_demo
    from .report import format_table

    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers, via TRL
    settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    report = run_demo(args.out, settings, base_dir=args.base)
    print()
    print(format_table(report))
    return 0
