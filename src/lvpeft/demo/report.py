"""What `lvpeft demo` writes: report.json, report.md and a printed table (the pictures: `pictures.py`).

The functions here only render what `lvpeft.demo.pipeline` measured; nothing is computed from the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .pictures import LABELS


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def method_rows(report: Mapping[str, Any]) -> list[tuple[str, float, float, float | None]]:
    """(label, keep, accuracy, evidence kept) of the unpruned model, the adapter and each baseline."""
    keep = report["keep"]
    evidence = report.get("evidence_kept", {})
    rows = [("unpruned model", 1.0, report["base_accuracy"], 1.0)]
    rows.append((LABELS["lvpruning"], keep, report["pruned_accuracy"], evidence.get("lvpruning")))
    for name, accuracy in report["baselines"].items():
        rows.append((LABELS.get(name, name), keep, accuracy, evidence.get(name)))
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """The short plain-text summary `lvpeft demo` prints at the end."""
    kept = "/".join(str(k) for k in report["kept_tokens"])
    lines = [
        f"LVPruning demo: {report['test_examples']} test questions, {report['vision_tokens']} vision tokens "
        f"per image, modules before layers {report['layers']} keeping {kept}",
        f"{'method':<22} {'keep':>5} {'accuracy':>9} {'evidence kept':>14}",
    ]
    for label, keep, accuracy, evidence in method_rows(report):
        shown = "" if evidence is None else _pct(evidence)
        lines.append(f"{label:<22} {keep:>5g} {_pct(accuracy):>9} {shown:>14}")
    by_keep = "  ".join(f"{k}: {_pct(v)}" for k, v in report["accuracy_by_keep"].items())
    lines.append(f"LVPruning accuracy by keep  {by_keep}")
    flops, batch = report["flops"], report["prefill_ms"]["batch"]
    reload = "passed" if report["reload_check"]["passed"] else "FAILED"
    lines.append(
        f"prefill: {report['prefill_speedup']:.2f}x faster measured ({batch} prompts), "
        f"{flops['speedup']:.2f}x fewer FLOPs; reload check {reload}"
    )
    speed = report.get("llava_shaped_speed")
    if speed:
        pruned, scorer = speed["variants"]["lvpruning"], speed["variants"][speed["scorer"]]
        label = LABELS.get(speed["scorer"], speed["scorer"])
        lines.append(
            f"{_speed_title(speed)}: prefill {pruned['prefill_speedup']:.2f}x (LVPruning), "
            f"{scorer['prefill_speedup']:.2f}x ({label}) faster measured, {speed['flops']['speedup']:.2f}x "
            f"fewer FLOPs; generate() {pruned['generate_speedup']:.2f}x / {scorer['generate_speedup']:.2f}x"
        )
        lines.append(f"  why they differ: {why_speeds_differ(report)}")
    lines.append(f"total {report['timings']['total']:.0f} s; report: {report['files']['markdown']}")
    return "\n".join(lines)


def _dropped_fate(merged: bool) -> str:
    """What happens to the tokens a module drops, in the report's words."""
    if merged:
        return "merged into the most similar kept token (mass-weighted states, proportional attention)"
    return "removed"


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the setting, the results table, the pictures, speed, the reload check, timings."""
    files, flops, prefill = report["files"], report["flops"], report["prefill_ms"]
    r, t = report, report["training"]
    kept = ", ".join(str(k) for k in report["kept_tokens"])
    lines = [
        "# LVPruning demo",
        "",
        f"Base model: `{r['base_model']}` (frozen). Adapter: {len(r['layers'])} decision modules of width "
        f"{r['pruner_dim']} ({r['adapter_parameters']:,} parameters) before decoder layers {r['layers']}, "
        f"keep schedule {r['schedule']} of the {r['vision_tokens']} vision tokens ({kept} kept). Trained for "
        f"{t['steps']} steps of {t['batch_size']} ({r['train_examples']} scenes questions, learning rate "
        f"{t['learning_rate']:g}, the `{t.get('recipe', 'lvpeft')}` recipe: Gumbel temperature "
        f"{t['gumbel_temperature']:g}, ratio-loss weight {t['ratio_loss_weight']:g}, teacher-ranking weight "
        f"{t.get('teacher_rank_weight', 0.0):g}, distillation weight {t['distill_weight']:g}, "
        f"attention-ranking weight {t.get('attention_distill_weight', 0.0):g}, the answer "
        f"{'hidden from' if t.get('hide_answer_from_modules', True) else 'visible to'} the modules, "
        f"dropped tokens {_dropped_fate(t.get('merge_dropped', False))}).",
        "",
        f"Test split: {r['test_examples']} questions, greedy `generate()`, exact match of the one-word "
        "answer. *Evidence kept*: the share of the patches that hold the answer's evidence still alive "
        "after the last module (for random pruning it is about the keep ratio).",
        "",
        "| method | keep | accuracy | evidence kept |",
        "|---|---|---|---|",
    ]
    for label, keep, accuracy, evidence in method_rows(report):
        shown = "" if evidence is None else _pct(evidence)
        lines.append(f"| {label} | {keep:g} | {_pct(accuracy)} | {shown} |")
    by_kind = report.get("accuracy_by_kind", {})
    if by_kind:
        kinds = sorted({k for values in by_kind.values() for k in values})
        lines += ["", "Accuracy by question kind:", "", "| model | " + " | ".join(kinds) + " |"]
        lines.append("|---|" + "---|" * len(kinds))
        for name, values in by_kind.items():
            cells = " | ".join(_pct(values[k]) if k in values else "" for k in kinds)
            lines.append(f"| {LABELS.get(name, name)} | {cells} |")
    lines += ["", "## Accuracy vs keep", "", f"![accuracy vs keep]({files['plot']})", ""]
    lines += [
        "| keep | LVPruning |"
        + "".join(f" {LABELS.get(n, n)} |" for n in report.get("baselines_by_keep", {}))
    ]
    lines.append("|---|---|" + "---|" * len(report.get("baselines_by_keep", {})))
    for keep, accuracy in report["accuracy_by_keep"].items():
        others = "".join(
            f" {_pct(values[keep])} |" if keep in values else " |"
            for values in report.get("baselines_by_keep", {}).values()
        )
        lines.append(f"| {keep} | {_pct(accuracy)} |{others}")
    lines += ["", "## What the modules keep", ""]
    lines.append(
        "Two questions about the same test image; each panel shows what is still alive after a module "
        "(dropped patches faded). Modules that read the question keep different patches for different "
        "questions; the evidence (outlined) is what the answer needs."
    )
    for picture in report["kept_patches"]:
        lines += ["", f"![kept patches of {picture['id']}]({picture['picture']})", ""]
        for q in picture["questions"]:
            final = set(q["kept"][-1])
            hit = len(final & set(q["region"])) / max(1, len(q["region"]))
            lines.append(
                f"- *{q['question']}* answer `{q['answer']}`, pruned model `{q['prediction']}`; "
                f"{len(final)} patches kept, {_pct(hit)} of the evidence"
            )
        n_final = len(picture["questions"][0]["kept"][-1])
        lines.append(
            f"- patches kept for both questions after the last module: {picture['final_overlap']} of "
            f"{n_final}"
        )
    lines += [
        "",
        "## Cost",
        "",
        f"- FLOPs of one prefill ({flops['text_tokens']} text tokens + one image): base "
        f"{flops['base_tflops'] * 1e3:.3f} GFLOPs, pruned {flops['pruned_tflops'] * 1e3:.3f} GFLOPs "
        f"including the modules' {flops['pruner_tflops'] * 1e3:.3f} ({flops['speedup']:.2f}x fewer).",
        f"- Measured prefill on {prefill['batch']} test prompts (median of {prefill['repeats']}, "
        f"interleaved): base {prefill['base']:.1f} ms, pruned {prefill['lvpruning']:.1f} ms: "
        f"**{report['prefill_speedup']:.2f}x**.",
        f"- Machine: {report['machine']}.",
    ]
    if report.get("llava_shaped_speed"):
        lines += ["", *speed_section(report)]
    lines += [
        "",
        "## Save and reload",
        "",
    ]
    check = report["reload_check"]
    same = "yes" if check["same_answers"] else "NO"
    lines.append(
        f"`save_pretrained('{files['adapter']}')`, then `lvpeft.from_pretrained(...)` on a freshly loaded "
        f"base: same answers on {check['examples']} test questions: **{same}** (largest logit difference "
        f"{check['max_abs_logit_diff']:.2e})."
    )
    lines += ["", "## Timings (s)", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in report["timings"].items()]
    return "\n".join(lines) + "\n"


SPEED_TITLES: dict[str, str] = {"llava-1.5-shaped": "LLaVA-1.5-shaped", "tiny": "tiny stand-in"}
"""Short names of the `lvpeft.demo.cost.SPEED_MODELS`, as the report's speed section calls them."""


def _speed_title(speed: Mapping[str, Any]) -> str:
    return f"{SPEED_TITLES.get(speed['name'], speed['name'])} random-weight model"


def why_speeds_differ(report: Mapping[str, Any]) -> str:
    """One sentence: why the tiny model's measured prefill speed-up and the LLaVA-shaped one differ."""
    speed, flops = report["llava_shaped_speed"], report["flops"]
    other = SPEED_TITLES.get(speed["name"], speed["name"])
    shares = speed["flops"]
    width = report.get("decoder", {}).get("hidden_size")
    narrow = (
        f" and its decoder is only {width} wide, so lvpeft's fixed per-call costs weigh more" if width else ""
    )
    return (
        f"on the tiny model the vision tower and projector, which pruning inside the language model cannot "
        f"shorten, are {_pct(flops['vision_share'])} of a prefill's FLOPs (pruning saves "
        f"{flops['speedup']:.2f}x FLOPs there){narrow}; on the {other} model they are "
        f"{_pct(shares['vision_share'])} (LLaVA-1.5-7B: {_pct(shares['llava_1_5_7b_vision_share'])}) and the "
        f"decoder, which pruning shortens, is nearly all of the cost ({shares['speedup']:.2f}x fewer FLOPs)."
    )


def speed_section(report: Mapping[str, Any]) -> list[str]:
    """report.md's lines on the LLaVA-shaped speed comparison (`lvpeft.demo.cost.llava_shaped_speed`)."""
    speed = report["llava_shaped_speed"]
    s = speed["setting"]
    generates = max(1, s["repeats"] // 2)
    scorer = LABELS.get(speed["scorer"], speed["scorer"])
    lines = [
        f"### Speed on a {_speed_title(speed)}",
        "",
        f"The tiny model above is not shaped like the models pruning is for (why, below). The same "
        f"comparison on a {speed['model']}: base, LVPruning (random module weights: the time does not depend "
        f"on them) and the most accurate training-free scorer above ({scorer}), "
        f"keep {s['keep']:g} {s['schedule']} before layers {s['layers']}, batch {s['batch']}, "
        f"{s['vision_tokens']} vision + {s['text_tokens']} text tokens, {s['attn_implementation']}; in this "
        f"process, prefills interleaved: medians of {s['repeats']} after {s['warmup']} untimed, speed-ups "
        f"the median of the per-round ratios; `generate()` of {s['new_tokens']} new tokens, median of "
        f"{generates}. {speed['machine']}.",
        "",
        "| variant | prefill ms | prefill speed-up | generate ms | generate speed-up | KV cache MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in speed["variants"].items():
        label = "unpruned model" if name == "base" else LABELS.get(name, name).replace(" (trained)", "")
        lines.append(
            f"| {label} | {v['prefill_ms']:.1f} | {v['prefill_speedup']:.2f}x | {v['generate_ms']:.1f} | "
            f"{v['generate_speedup']:.2f}x | {v['kv_cache_bytes'] / 2**20:.2f} |"
        )
    flops = report["flops"]
    lines += [
        "",
        f"Analytic FLOPs: {speed['flops']['speedup']:.2f}x fewer pruned, against {flops['speedup']:.2f}x on "
        f"the tiny model ({report['prefill_speedup']:.2f}x measured there). Why they differ: "
        f"{why_speeds_differ(report)}",
    ]
    return lines


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
