"""`lvpeft bench --serve`: a batch of mixed-length prompts generating M tokens each, base vs pruned.

Checked: every row generates exactly M tokens (even when EOS is the greedy pick), the KV cache at the
end matches what the keep schedule implies, the pruned variant really pruned, the inputs are a
left-padded batch of mixed lengths, the CPU peak-memory counter sees a known allocation, and bad
counts fail with a clear error before any model is built. Timings themselves are not asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import PATCHES, tiny_llava
from lvpeft.cli import main
from lvpeft.measure.bench import format_report, run_bench
from lvpeft.measure.bench_models import make_serve_inputs, serve_text_lengths
from lvpeft.measure.serve import ServeSetting
from lvpeft.measure.timing import peak_memory
from lvpeft.pruning.decisions import keep_counts

SETTING = ServeSetting(prompts=3, new_tokens=5, text_tokens=(2, 12), repeats=1, warmup=0)
KEEP = 0.25


def eos_always_wins(model: torch.nn.Module) -> torch.nn.Module:
    """Zero the final norm: every logit is 0, so greedy picks id 0, which is made the EOS id."""
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    model.generation_config.eos_token_id = 0
    return model


@pytest.fixture(scope="module")
def report():
    return run_bench(
        eos_always_wins(tiny_llava(attn="sdpa")),
        keep=KEEP,
        repeats=1,
        warmup=0,
        new_tokens=1,
        baselines=True,
        serve=SETTING,
    )


def test_every_row_generates_m_tokens_although_eos_is_the_greedy_pick(report) -> None:
    # control: without min_new_tokens this model stops every row after one token
    model = eos_always_wins(tiny_llava(attn="sdpa"))
    inputs = make_serve_inputs(model, serve_text_lengths(SETTING.prompts, SETTING.text_tokens))
    out = model.generate(**inputs, max_new_tokens=SETTING.new_tokens, do_sample=False, pad_token_id=0)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1
    serve = report.serve
    n, m = SETTING.prompts, SETTING.new_tokens
    assert [v.name for v in serve.variants] == ["base", "lvpruning", "random", "uniform", "fastv"]
    for v in serve.variants:
        assert v.row_tokens == [m] * n and v.generated_tokens == n * m
        assert len(v.generate_ms_all) == len(v.ttft_ms_all) == SETTING.repeats
        assert 0 < v.ttft_ms <= v.generate_ms
        assert v.tokens_per_s == pytest.approx(n * m / (v.generate_ms / 1000))
        assert v.decode_tokens_per_s > 0
        assert v.peak_memory_mb * 2**20 >= v.kv_cache_bytes  # the cache is allocated inside generate()
        assert v.peak_memory_total_mb is None  # CPU: weights are not seen


def test_kv_cache_matches_the_keep_schedule(report) -> None:
    serve, setting = report.serve, report.setting
    lengths, m = serve.setting["text_tokens"], SETTING.new_tokens
    assert serve.setting["vision_tokens"] == PATCHES
    padded = max(lengths) + PATCHES
    assert serve.setting["padded_prompt_tokens"] == padded
    layers, schedule = setting["layers"], setting["schedule"]
    depth = setting["decoder"]["num_hidden_layers"]
    kept = [int(keep_counts(torch.tensor([PATCHES]), r)) for r in schedule]
    pruned_slots = 0
    for layer in range(depth):
        stage = max((s for s, p in enumerate(layers) if p <= layer), default=-1)
        # re-packed with left padding: the longest text plus the kept vision tokens, then M - 1 generated
        pruned_slots += (padded if stage < 0 else max(lengths) + kept[stage]) + m - 1
    expected = pruned_slots / (depth * (padded + m - 1))
    assert expected < 1
    assert serve.kv_cache_ratio == pytest.approx(expected)
    base = serve.variants[0]
    for v in serve.variants[1:]:  # the learned modules and every scorer keep the same budget
        assert v.kv_cache_bytes / base.kv_cache_bytes == pytest.approx(expected)
    assert serve.peak_memory_ratio == pytest.approx(serve.variants[1].peak_memory_mb / base.peak_memory_mb)


def test_pruned_variants_report_the_schedule_they_ran(report) -> None:
    serve = report.serve
    assert serve.variants[0].keep_ratios == []  # the base: adapter disabled, nothing pruned
    kept = [int(keep_counts(torch.tensor([PATCHES]), r)) / PATCHES for r in report.setting["schedule"]]
    for v in serve.variants[1:]:
        assert v.keep_ratios == pytest.approx(kept)
    text = format_report(report)
    assert "serving: 3 prompts" in text and "TTFT" in text and "lvpruning" in text.split("serving:")[1]
    data = json.loads(json.dumps(report.to_dict()))
    assert {"tokens_per_s_speedup", "ttft_speedup", "kv_cache_ratio", "peak_memory_ratio"} <= data[
        "serve"
    ].keys()


def test_serve_inputs_are_a_left_padded_batch_of_mixed_lengths() -> None:
    model = tiny_llava()
    lengths = serve_text_lengths(5, (4, 20))
    assert sorted(lengths) == [4, 8, 12, 16, 20] and lengths != sorted(lengths)
    inputs = make_serve_inputs(model, lengths)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == (5, 20 + PATCHES) and inputs["pixel_values"].shape == (5, 3, 32, 32)
    assert mask.sum(1).tolist() == [n + PATCHES for n in lengths]
    assert bool((mask[:, -1] == 1).all())  # left padded: every row ends at the last slot
    assert (ids == model.config.image_token_id).sum(1).tolist() == [PATCHES] * 5
    assert bool((ids[mask == 0] == 0).all())


def test_cpu_peak_memory_sees_a_known_allocation() -> None:
    def run() -> None:
        blocks = [torch.ones(2**18) for _ in range(4)]  # 4 x 1 MiB of float32, live together
        del blocks
        torch.ones(2**18)  # 1 MiB after they are freed: not a new peak

    peak, total = peak_memory(run, torch.device("cpu"))
    assert total is None and 4.0 <= peak < 4.1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("prompts", 0, "prompts .*>= 1, got 0"),
        ("new_tokens", 0, "new_tokens .*>= 1, got 0"),
        ("new_tokens", -3, "new_tokens .*>= 1, got -3"),
        ("repeats", 0, "repeats .*>= 1"),
        ("text_tokens", (9, 2), "1 <= LEAST <= MOST"),
        ("text_tokens", (0, 4), "1 <= LEAST <= MOST"),
    ],
)
def test_bad_serve_settings_fail_clearly(field, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        ServeSetting(**{field: value})


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--serve-prompts", "0", "prompts"), ("--serve-new-tokens", "0", "new_tokens")],
)
def test_bad_serve_flags_fail_before_building_a_model(flag, value, message, capsys) -> None:
    assert main(["bench", "--serve", flag, value]) == 2  # no --model: would build the 576-token default
    err = capsys.readouterr().err
    assert err.startswith("lvpeft bench: error: serve ") and message in err and "got 0" in err


def test_serve_flags_without_serve_are_refused(capsys) -> None:
    assert main(["bench", "--serve-prompts", "8", "--serve-warmup", "0"]) == 2  # before building a model
    err = capsys.readouterr().err
    assert "--serve-prompts, --serve-warmup only apply to the serving measurement: add --serve" in err


def test_bench_serve_cli_json(tmp_path, capsys) -> None:
    tiny_llava(attn="sdpa").save_pretrained(tmp_path / "m")
    argv = ["bench", "--model", str(tmp_path / "m"), "--keep", "0.25", "--repeats", "1", "--warmup", "0"]
    serve = ["--serve", "--serve-prompts", "2", "--serve-new-tokens", "3", "--serve-text-tokens", "2,6"]
    assert (
        main([*argv, "--new-tokens", "1", *serve, "--serve-repeats", "1", "--serve-warmup", "0", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["serve"]["setting"]["prompts"] == 2 and data["serve"]["setting"]["new_tokens"] == 3
    assert [v["generated_tokens"] for v in data["serve"]["variants"]] == [6, 6]
    assert sorted(data["serve"]["setting"]["text_tokens"]) == [2, 6]
