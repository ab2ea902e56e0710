"""Regenerate the README's table of model families from `lvpeft.pruning.families.FAMILIES`.

    python scripts/update_families_table.py          # rewrites the table in README.md
    python scripts/update_families_table.py --check  # fails if the table is out of date

The section between `<!-- families:start -->` and `<!-- families:end -->` is replaced; nothing in it is
typed by hand. Every supported family in the table has a tiny model in `tests/test_families.py`
(`test_every_supported_family_is_tested` fails otherwise), which runs the checks the table names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvpeft.pruning.families import FAMILIES

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- families:start -->", "<!-- families:end -->"


def table() -> str:
    """The markdown table: one row per family description, supported first."""
    lines = [
        "| family | classes | positions | status | notes |",
        "|---|---|---|---|---|",
    ]
    for family in sorted(FAMILIES, key=lambda f: not f.supported):
        classes = ", ".join(f"`{c}`" for c in family.model_classes if "For" in c)
        status = "supported: every check above" if family.supported else f"refused: {family.refused}"
        positions = "M-RoPE" if family.positions == "mrope" else "RoPE"
        lines.append(f"| {family.name} | {classes} | {positions} | {status} | {family.notes} |")
    return "\n".join(lines)


def render(current: str) -> str:
    """`current` README text with the families section replaced."""
    head, rest = current.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the README's table is out of date")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    if START not in current or END not in current:
        print(f"README.md has no {START} ... {END} section", file=sys.stderr)
        return 1
    updated = render(current)
    if args.check:
        if updated != current:
            print("README.md's families table is out of date: run python scripts/update_families_table.py")
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
