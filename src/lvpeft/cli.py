"""`lvpeft` command line: one subcommand per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .demo.demo_command import add_demo_command
from .measure.bench import add_bench_command
from .measure.eval_command import add_eval_command
from .measure.flops_command import add_flops_command


def add_inspect_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`lvpeft inspect ADAPTER`: validate an adapter folder or Hub repo and print what it prunes."""
    parser = subparsers.add_parser(
        "inspect", help="check an LVPruning adapter (config + safetensors) and print its schedule"
    )
    parser.add_argument("adapter", help="local adapter folder or Hub repo id")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=inspect_command)
    return parser


def inspect_command(args: argparse.Namespace) -> int:
    """Handler of `lvpeft inspect`."""
    from safetensors import safe_open

    from .tuner.loading import check_adapter_weights, load_adapter_config

    config = load_adapter_config(args.adapter)
    weights = check_adapter_weights(args.adapter)
    with safe_open(weights, framework="pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118
    numel = sum(_prod(shape) for shape in shapes.values())
    info = {
        "adapter": args.adapter,
        "base_model": config.base_model_name_or_path,
        "layers": config.layers,
        "keep": config.keep,
        "keep_schedule": config.resolve_schedule(),
        "pruner_dim": config.pruner_dim,
        "base_text_hidden_size": config.base_text_hidden_size,
        "base_text_num_layers": config.base_text_num_layers,
        "tensors": len(shapes),
        "parameters": numel,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `lvpeft` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lvpeft",
        description="LVPruning: learned, language-guided vision-token pruning for LLaVA models.",
    )
    parser.add_argument("--version", action="version", version=f"lvpeft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_bench_command(subparsers)
    add_demo_command(subparsers)
    add_eval_command(subparsers)
    add_flops_command(subparsers)
    add_inspect_command(subparsers)
    subparsers.add_parser(
        "train",
        help="train an LVPruning adapter on LLaVA-format data (`lvpeft train --help` for every option)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lvpeft` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # its own HfArgumentParser takes every SFTConfig option
        from .training.train_command import train_command

        command, run = "train", lambda: train_command(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return int(run() or 0)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"lvpeft {command}: error: {error}", file=sys.stderr)
        return 2


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


if __name__ == "__main__":
    raise SystemExit(main())
