"""The result of `lvpeft.evaluate`: one `EvalRow` per variant (the unpruned model, the adapter and each
training-free scorer at each keep) in an `EvalReport`, and its renderings: a markdown table, a JSON-ready
dict and a picture (accuracy and NLL against keep, with matplotlib if installed)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

UNPRUNED: str = "unpruned"
"""Method name of the base model's row."""
LEARNED: str = "lvpruning"
"""Method name of the adapter's rows."""


def require_matplotlib() -> None:
    """Raise a clear ImportError when matplotlib is not installed (checked before a long evaluation)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib, which lvpeft does not install by default: "
            "`pip install 'lvpeft[plot]'` (or drop --plot)."
        ) from error


@dataclass
class EvalRow:
    """One variant's results.

    Attributes:
        method: `"unpruned"`, `"lvpruning"` or a scorer name (`"random"`, `"uniform"`, `"fastv"`).
        keep: the final keep ratio (None for `unpruned`).
        schedule: the keep ratio after each module (None for `unpruned`).
        accuracy: share of exact matches of the greedy answers.
        nll: mean negative log-likelihood per reference-answer token, in nats (all tokens of all rows).
        samples: questions answered; answer_tokens: reference-answer tokens scored.
        seconds: wall time of the variant (generation and NLL).
    """

    method: str
    keep: float | None
    schedule: list[float] | None
    accuracy: float
    nll: float
    samples: int
    answer_tokens: int
    seconds: float


@dataclass
class EvalReport:
    """What `evaluate` measured: one `EvalRow` per variant and what they were measured on.

    Attributes:
        rows: `unpruned` first, then per keep (in the order given) the adapter, then each scorer.
        model: the base model (a path, Hub id or class name); adapter: the adapter, if any.
        data: the data file; samples: questions used; skipped_rows: rows the loader skipped.
        layers: decoder layers the modules sit before; seed: the random scorer's seed.
        max_new_tokens: generation budget of each answer.
    """

    rows: list[EvalRow]
    model: str
    adapter: str | None
    data: str
    samples: int
    skipped_rows: int
    layers: list[int]
    seed: int
    max_new_tokens: int
    keeps: list[float] = field(default_factory=list)
    scorers: list[str] = field(default_factory=list)

    def row(self, method: str, keep: float | None = None) -> EvalRow:
        """The row of `method` at `keep` (`keep` is ignored for `unpruned`); KeyError if there is none."""
        for row in self.rows:
            if row.method == method and (method == UNPRUNED or row.keep == keep):
                return row
        raise KeyError(f"no row for method {method!r} at keep {keep}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the settings and `rows` as a list of dicts (NaN NLL written as None)."""
        out = asdict(self)
        for row in out["rows"]:
            if isinstance(row["nll"], float) and math.isnan(row["nll"]):
                row["nll"] = None
        return out

    def to_markdown(self) -> str:
        """A caption line and a markdown table: keep, method, accuracy, % of unpruned accuracy, NLL."""
        base = self.row(UNPRUNED).accuracy
        lines = [
            f"{self.samples} questions of {self.data}; model {self.model}"
            + (f", adapter {self.adapter}" if self.adapter else "")
            + f"; modules before decoder layers {self.layers}; answer NLL in nats per token",
            "",
            "| keep | method | accuracy | % of unpruned | answer NLL |",
            "|---|---|---|---|---|",
        ]
        for row in self.rows:
            share = f"{100 * row.accuracy / base:.1f} %" if base > 0 else "-"
            keep = "1 (none pruned)" if row.keep is None else f"{row.keep:g}"
            lines.append(f"| {keep} | {row.method} | {100 * row.accuracy:.1f} % | {share} | {row.nll:.4f} |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write accuracy and NLL against keep, one line per method, the unpruned model dashed, to `path`
        (format from the suffix). Needs matplotlib, which lvpeft does not depend on."""
        require_matplotlib()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        base = self.row(UNPRUNED)
        methods = list(dict.fromkeys(r.method for r in self.rows if r.method != UNPRUNED))
        panels = (
            (axes[0], "accuracy", "accuracy (exact match)"),
            (axes[1], "nll", "answer NLL (nats/token)"),
        )
        for ax, metric, label in panels:
            ax.axhline(getattr(base, metric), color="black", linestyle="--", label=UNPRUNED)
            for method in methods:
                rows = sorted((r for r in self.rows if r.method == method), key=lambda r: r.keep or 0.0)
                ax.plot([r.keep for r in rows], [getattr(r, metric) for r in rows], marker="o", label=method)
            ax.set_xlabel("keep ratio (vision tokens left after the last module)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"{self.samples} questions of {os.path.basename(self.data)}")
        fig.savefig(path, dpi=120)
        plt.close(fig)
