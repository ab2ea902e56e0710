"""Tests of `lvpeft.tuner.flops`: the paper's FLOPs table, cross-checks against torch's FLOP counter on tiny
real models, monotonicity, input validation and the `flops` subcommand."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lvpeft.measure.flops_command import add_flops_command, llava_1_5_7b_config, paper_schedule
from lvpeft.tuner.config import LVPruningConfig
from lvpeft.tuner.flops import (
    FlopsReport,
    decision_module_flops,
    decoder_layer_flops,
    estimate_flops,
)
from lvpeft.tuner.layer import DecisionModule, default_pruner_dim

PAPER_LAYERS = [1, 8, 16]
# METHOD.md: LLaVA-1.5-7B, 1 image + 30 text tokens, TFLOPs and reduction vs base.
PAPER_ROWS = {
    0.6: ([0.6, 0.4, 0.2], 3.97, 0.526),
    0.5: ([0.5, 0.3, 0.1], 3.18, 0.621),
    0.45: ([0.45, 0.25, 0.05], 2.79, 0.667),
}
IMAGE_TOKEN = 127


def tiny_llava_config(feature_layer: int | list[int] = -2, strategy: str = "default") -> LlavaConfig:
    """CLIP 2 layers x 64 on 32 px images with patch 8 (16 patches + CLS), Llama 2 layers x 64 with GQA."""
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        image_seq_length=16 if strategy == "default" else 17,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )


def count_flops(fn) -> FlopCounterMode:
    """Run `fn` under the FLOP counter; the math SDPA backend decomposes into counted matmuls."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter


def rel_err(measured: float, expected: float) -> float:
    return abs(measured - expected) / expected


# -- the paper's table ----------------------------------------------------------------------------------


def test_paper_base_row():
    report = estimate_flops(llava_1_5_7b_config(), text_tokens=30)
    assert rel_err(report.base_tflops, 8.38) < 0.03
    # no schedule: nothing pruned, no modules
    assert report.pruned_tflops == report.base_tflops
    assert report.pruner_tflops == 0.0
    assert report.vision_tokens == 576
    assert report.decoder_tokens == (606,) * 32


@pytest.mark.parametrize("rho", sorted(PAPER_ROWS))
def test_paper_pruned_rows(rho):
    schedule, paper_tflops, paper_reduction = PAPER_ROWS[rho]
    report = estimate_flops(
        llava_1_5_7b_config(), text_tokens=30, layers=PAPER_LAYERS, schedule=schedule, pruner_dim="paper"
    )
    assert rel_err(report.pruned_tflops, paper_tflops) < 0.03
    assert abs(report.flops_reduction - paper_reduction) < 0.015
    # the pruned total includes the modules, whose cost is also reported on its own
    assert report.pruned.total / 1e12 == pytest.approx(report.pruned_tflops)
    assert report.pruned.pruner / 1e12 == pytest.approx(report.pruner_tflops)
    assert sum(report.module_tflops) == pytest.approx(report.pruner_tflops)
    assert 0.3 < report.pruner_tflops < 0.45
    assert report.kept_tokens == tuple(round(r * 576) for r in schedule)
    # layer 0 sees everything, then T + k_s from each module on
    k = report.kept_tokens
    assert report.decoder_tokens == (606,) + (30 + k[0],) * 7 + (30 + k[1],) * 8 + (30 + k[2],) * 16


def test_paper_schedule_helper():
    assert paper_schedule(0.1) == [0.5, 0.3, 0.1]
    assert paper_schedule(0.05) == [0.45, 0.25, 0.05]
    assert paper_schedule(0.9) == [1.0, 1.0, 0.9]
    with pytest.raises(ValueError, match="keep"):
        paper_schedule(0.0)


# -- cross-checks against torch.utils.flop_counter ------------------------------------------------------


@pytest.mark.parametrize(
    ("text_tokens", "feature_layer", "strategy"),
    [(9, -2, "default"), (30, [-2, -1], "full")],
)
def test_base_count_matches_flop_counter(text_tokens, feature_layer, strategy):
    config = tiny_llava_config(feature_layer, strategy)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    report = estimate_flops(config, text_tokens=text_tokens)
    n_image = report.vision_tokens
    assert n_image == (16 if strategy == "default" else 17)
    ids = torch.cat(
        [
            torch.tensor([[1]]),
            torch.full((1, n_image), IMAGE_TOKEN),
            torch.randint(2, 100, (1, text_tokens - 1)),
        ],
        dim=1,
    )
    pixels = torch.randn(1, 3, 32, 32)
    out = {}
    counter = count_flops(
        lambda: out.setdefault("o", model(input_ids=ids, pixel_values=pixels, logits_to_keep=1))
    )
    assert out["o"].logits.shape[1] == 1  # prefill as generate() runs it: last position only
    assert rel_err(counter.get_total_flops(), report.base.total) < 0.02
    # and part by part
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    prefix = "LlavaForConditionalGeneration."
    measured = {
        "vision": counts[prefix + "model.vision_tower"],
        "projector": counts[prefix + "model.multi_modal_projector"],
        "decoder": counts[prefix + "model.language_model"],
        "lm_head": counts[prefix + "lm_head"],
    }
    for part, value in measured.items():
        assert rel_err(value, getattr(report.base, part)) < 0.02, part


def test_pruned_decoder_matches_flop_counter_per_layer():
    """The pruned decoder count equals the measured cost of each layer at the length it runs on."""
    config = tiny_llava_config()
    text_tokens = 12
    report = estimate_flops(config, text_tokens=text_tokens, layers=[1], schedule=[0.25])
    assert report.decoder_tokens == (16 + 12, 12 + 4)
    torch.manual_seed(0)
    language_model = LlavaForConditionalGeneration(config).model.language_model.eval()
    measured = 0
    for i, n in enumerate(report.decoder_tokens):
        counter = count_flops(lambda n=n: language_model(inputs_embeds=torch.randn(1, n, 64)))
        layer = counter.get_flop_counts()[f"LlamaModel.layers.{i}"]
        measured += sum(layer.values())
        assert rel_err(sum(layer.values()), decoder_layer_flops(config.text_config, n)) < 0.02
    assert rel_err(measured, report.pruned.decoder) < 0.02
    assert report.pruned.decoder < report.base.decoder


@pytest.mark.parametrize(("dim", "blocks", "mult"), [(32, 2, 2), (64, 2, 2), (48, 3, 4)])
def test_decision_module_matches_flop_counter(dim, blocks, mult):
    torch.manual_seed(0)
    module = DecisionModule(hidden_size=64, dim=dim, heads=4, blocks=blocks, ffn_mult=mult).eval()
    nv, t = 20, 7
    counter = count_flops(
        lambda: module(torch.randn(2, nv, 64), torch.randn(2, t, 64), torch.ones(2, t, dtype=torch.bool))
    )
    expected = decision_module_flops(64, dim, vision_tokens=nv, text_tokens=t, blocks=blocks, ffn_mult=mult)
    assert rel_err(counter.get_total_flops() / 2, expected) < 0.02  # batch of 2


def test_module_counts_follow_the_alive_tokens():
    config = tiny_llava_config()
    report = estimate_flops(config, text_tokens=5, layers=[1], schedule=[0.5], pruner_dim=32, pruner_heads=4)
    assert report.pruned.pruner == decision_module_flops(64, 32, vision_tokens=16, text_tokens=5)
    big = llava_1_5_7b_config()
    report = estimate_flops(big, layers=PAPER_LAYERS, schedule=[0.5, 0.3, 0.1], pruner_dim="paper")
    alive = [576, 288, 173]
    expected = [decision_module_flops(4096, 4096, vision_tokens=n, text_tokens=30) / 1e12 for n in alive]
    assert report.module_tflops == pytest.approx(expected)
    assert report.pruner_dim == 4096


def test_default_module_is_the_light_one_and_costs_under_one_percent_at_7b():
    config = llava_1_5_7b_config()
    report = estimate_flops(config, layers=PAPER_LAYERS, schedule=[0.5, 0.3, 0.1])
    assert report.pruner_dim == 512 == LVPruningConfig().resolve_pruner_dim(4096)
    assert report.pruner_tflops / report.base_tflops < 0.01
    paper = estimate_flops(config, layers=PAPER_LAYERS, schedule=[0.5, 0.3, 0.1], pruner_dim="paper")
    assert paper.pruner_tflops / paper.base_tflops > 0.04  # the paper's full-width modules
    assert LVPruningConfig(pruner_dim="paper").resolve_pruner_dim(4096) == 4096
    assert [default_pruner_dim(d) for d in (64, 128, 512, 4096, 5120)] == [64, 64, 64, 512, 640]


# -- monotonicity ---------------------------------------------------------------------------------------


def test_lower_keep_means_fewer_flops():
    config = llava_1_5_7b_config()
    totals = [
        estimate_flops(config, layers=PAPER_LAYERS, schedule=paper_schedule(keep)).pruned_tflops
        for keep in (0.6, 0.4, 0.2, 0.1, 0.05)
    ]
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == len(totals)
    assert all(t < estimate_flops(config).base_tflops for t in totals)


def test_smaller_pruner_and_more_text_and_images():
    config = llava_1_5_7b_config()
    sched = [0.5, 0.3, 0.1]
    costs = [
        estimate_flops(config, layers=PAPER_LAYERS, schedule=sched, pruner_dim=c).pruner_tflops
        for c in ("paper", 1024, 512, 256)
    ]
    assert costs == sorted(costs, reverse=True)
    assert costs[-1] / estimate_flops(config).base_tflops < 0.001
    assert (
        estimate_flops(config, text_tokens=60).base_tflops
        > estimate_flops(config, text_tokens=30).base_tflops
    )
    one, two = estimate_flops(config), estimate_flops(config, num_images=2)
    assert two.vision_tokens == 1152
    assert two.base.vision == 2 * one.base.vision
    assert two.base.projector == 2 * one.base.projector
    assert two.base.lm_head == one.base.lm_head


# -- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [1, 8, 32], "schedule": [0.5, 0.3, 0.1]}, r"32 decoder layers.*\[1, 31\]"),
        ({"layers": [0, 8], "schedule": [0.5, 0.3]}, r"\[1, 31\]"),
        ({"layers": [1, 8, 16], "schedule": [0.5, 0.3]}, "same length"),
        ({"layers": [1, 8, 16], "schedule": [0.5, 0.3, 0.0]}, r"\(0, 1\]"),
        ({"layers": [1, 8, 16], "schedule": [1.2, 0.3, 0.1]}, r"\(0, 1\]"),
        ({"layers": [1, 8, 16], "schedule": [0.5, -0.1, 0.1]}, r"\(0, 1\]"),
        ({"layers": [1, 8, 16], "schedule": [0.3, 0.5, 0.1]}, "non-increasing"),
        ({"layers": [8, 1, 16], "schedule": [0.5, 0.3, 0.1]}, "strictly increasing"),
        ({"layers": [1, 8, 16]}, "schedule"),
        ({"schedule": [0.5], "pruner_dim": 100}, "divisible by pruner_heads"),
        ({"text_tokens": 0}, "text_tokens"),
        ({"num_images": 0}, "num_images"),
    ],
)
def test_bad_inputs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_flops(llava_1_5_7b_config(), **kwargs)


def test_default_layers_are_the_adapters():
    report = estimate_flops(llava_1_5_7b_config(), schedule=[0.5, 0.3, 0.1])
    assert report.layers == (1, 8, 16)


# -- command line ---------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> str:
    parser = argparse.ArgumentParser(prog="lvpeft")
    add_flops_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_json_keep(capsys):
    data = json.loads(run_cli(["flops", "--keep", "0.1", "--layers", "1,8,16", "--json"], capsys))
    expected = estimate_flops(llava_1_5_7b_config(), layers=PAPER_LAYERS, schedule=[0.5, 0.3, 0.1])
    for key in ("base_tflops", "pruned_tflops", "pruner_tflops", "flops_reduction"):
        assert data[key] == pytest.approx(getattr(expected, key))
    assert data["schedule"] == [0.5, 0.3, 0.1]
    assert data["base"]["total"] == expected.base.total


def test_cli_local_config_schedule_and_pruner(tmp_path, capsys):
    config = tiny_llava_config()
    config.save_pretrained(tmp_path)
    argv = ["flops", "--model", str(tmp_path), "--layers", "1", "--schedule", "0.5", "--pruner", "32"]
    data = json.loads(run_cli([*argv, "--text-tokens", "7", "--json"], capsys))
    expected = estimate_flops(config, text_tokens=7, layers=[1], schedule=[0.5], pruner_dim=32)
    assert data["pruned_tflops"] == pytest.approx(expected.pruned_tflops)
    assert data["pruner_dim"] == 32
    table = run_cli(argv, capsys)
    assert "total" in table and "pruner" in table and "reduction" in table


def test_cli_table_default_and_exclusive_options(capsys):
    table = run_cli(["flops"], capsys)
    assert "8.4478" in table  # base total of the preset
    with pytest.raises(SystemExit):
        run_cli(["flops", "--keep", "0.1", "--schedule", "0.5,0.3,0.1"], capsys)


def test_report_to_dict_is_json_ready():
    report = estimate_flops(llava_1_5_7b_config(), layers=PAPER_LAYERS, schedule=[0.5, 0.3, 0.1])
    assert isinstance(report, FlopsReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["base"]) == {"vision", "projector", "decoder", "lm_head", "pruner", "total"}
    assert data["pruned"]["pruner"] == report.pruned.pruner


def test_readme_flops_table_is_generated_and_current() -> None:
    """The README's performance section is produced by scripts/update_perf_table.py, not typed."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "update_perf_table.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- presets and image sizes ----------------------------------------------------------------------------

PRESET_TOKENS = {  # vision tokens of one 672 x 672 image, and one 480 x 640 image
    "llava-1.5-7b": ("LLaVA", 576, 576),
    "llava-v1.6-mistral-7b": ("LLaVA-NeXT", 2928, 2340),
    "qwen2.5-vl-7b": ("Qwen2.5-VL", 576, 391),
    "gemma-3-4b": ("Gemma 3", 256, 256),
}


@pytest.mark.parametrize("preset", list(PRESET_TOKENS))
def test_cli_presets_and_image_size(preset, capsys):
    family, square, photo = PRESET_TOKENS[preset]
    data = json.loads(run_cli(["flops", "--model", preset, "--keep", "0.1", "--json"], capsys))
    assert (data["family"], data["vision_tokens"], data["image_size"]) == (family, square, [672, 672])
    assert data["kept_tokens"][-1] == round(0.1 * square)
    assert 0 < data["pruned_tflops"] < data["base_tflops"]
    argv = ["flops", "--model", preset, "--image_size", "480", "640", "--json"]
    assert json.loads(run_cli(argv, capsys))["vision_tokens"] == photo


def test_cli_reads_a_local_qwen_processors_pixel_bounds(tmp_path, capsys):
    from lvpeft.measure.presets import qwen2_5_vl_7b_config

    qwen2_5_vl_7b_config().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 200704}))
    argv = ["flops", "--model", str(tmp_path), "--image-size", "1080", "1920", "--json"]
    assert json.loads(run_cli(argv, capsys))["vision_tokens"] == 252  # 12 x 21 merged tokens (256 max)
    override = json.loads(run_cli([*argv, "--max-pixels", "12845056"], capsys))
    assert override["vision_tokens"] == 2691 and override["resized_size"] == [1092, 1932]


def test_cli_reads_a_local_tiled_processors_settings(tmp_path, capsys):
    """Idefics3's `size.longest_edge` and InternVL's `max_patches` come from preprocessor_config.json; the
    flags override them."""
    import transformers as tf

    idefics3, internvl = tmp_path / "idefics3", tmp_path / "internvl"
    tf.Idefics3Config(vision_config={"image_size": 364, "patch_size": 14}).save_pretrained(idefics3)
    (idefics3 / "preprocessor_config.json").write_text(json.dumps({"size": {"longest_edge": 728}}))
    argv = ["flops", "--model", str(idefics3), "--image-size", "1080", "1920", "--json"]
    assert json.loads(run_cli(argv, capsys))["vision_tokens"] == 5 * 169  # 2 x 2 tiles + the global image
    tiles = json.loads(run_cli([*argv, "--longest-edge", "1456"], capsys))["vision_tokens"]
    assert tiles == 13 * 169  # 3 x 4 tiles + the global image
    vision = {"image_size": [448, 448], "patch_size": [14, 14]}
    tf.InternVLConfig(vision_config=vision, text_config={"model_type": "qwen2"}).save_pretrained(internvl)
    (internvl / "preprocessor_config.json").write_text(json.dumps({"max_patches": 1}))
    argv = ["flops", "--model", str(internvl), "--image-size", "1080", "1920", "--json"]
    assert json.loads(run_cli(argv, capsys))["vision_tokens"] == 256  # one tile
    assert json.loads(run_cli([*argv, "--max-tiles", "12"], capsys))["vision_tokens"] == 9 * 256


def test_docs_preset_table_is_current():
    from pathlib import Path

    from lvpeft.measure.flops_command import format_preset_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "performance.md").read_text()
    table = doc.split("<!-- presets:start -->\n")[1].split("\n<!-- presets:end -->")[0]
    assert table == format_preset_table(), (
        "regenerate it with lvpeft.measure.flops_command.format_preset_table()"
    )
