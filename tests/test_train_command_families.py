"""`lvpeft train` on tiny Qwen2.5-VL and Gemma 3 models saved like Hub checkpoints (weights, processor and
the public chat template, which has no `{% generation %}` markers), from LLaVA-format JSON, in one process
and under `accelerate launch` with two: the family's training template is used, the labels are the
answers and their end-of-turn token, and the adapter trains, saves and prunes at inference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

import lvpeft
from family_processors import (
    GEMMA3_IMAGE_TOKENS,
    GEMMA3_SPECIALS,
    QWEN_SPECIALS,
    gemma3_processor,
    public_template,
    qwen2_5_vl_processor,
    skip_video_processors,
)
from helpers import tiny_text_kwargs, tiny_vision_kwargs, write_llava_json
from lvpeft.cli import main as lvpeft_main
from lvpeft.training.data.training_templates import (
    GEMMA3_TRAINING_CHAT_TEMPLATE,
    QWEN2_VL_TRAINING_CHAT_TEMPLATE,
)
from lvpeft.training.train_command import build_train_parser, normalise_argv, run_training

VOCAB = 320  # the byte-level tokenizers' 256 bytes and specials, rounded up


def qwen2_5_vl_checkpoint(path: Path) -> str:
    """A random tiny Qwen2.5-VL (the config of tests/test_families.py) and its processor, saved to `path`."""
    ids = {token: i for i, token in enumerate(QWEN_SPECIALS)}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    text = tiny_text_kwargs(
        vocab_size=VOCAB, pad_token_id=0, bos_token_id=0, eos_token_id=ids["<|im_end|>"], rope_parameters=rope
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=64,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=16,
        fullatt_block_indexes=[0],
    )
    config = tf.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
    )
    torch.manual_seed(0)
    tf.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    qwen2_5_vl_processor(public_template("Qwen2.5-VL-7B-Instruct")).save_pretrained(path)
    return str(path)


def gemma3_checkpoint(path: Path) -> str:
    """A random tiny Gemma 3 (sliding-window and full layers) and its processor, saved to `path`."""
    ids = {token: i for i, token in enumerate(GEMMA3_SPECIALS)}
    text = tf.Gemma3TextConfig(
        **tiny_text_kwargs(
            vocab_size=VOCAB,
            head_dim=16,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"] * 2,
        )
    )
    config = tf.Gemma3Config(
        text_config=text,
        vision_config=tf.SiglipVisionConfig(**tiny_vision_kwargs()),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
    )
    torch.manual_seed(0)
    model = tf.Gemma3ForConditionalGeneration(config)
    # its init zeroes the projector, which would make every image token the same
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    model.save_pretrained(path)
    gemma3_processor(public_template("gemma-3-4b-it")).save_pretrained(path)
    return str(path)


CHECKPOINTS = {
    "qwen2.5-vl": (qwen2_5_vl_checkpoint, QWEN2_VL_TRAINING_CHAT_TEMPLATE, "<|im_end|>"),
    "gemma3": (gemma3_checkpoint, GEMMA3_TRAINING_CHAT_TEMPLATE, "<end_of_turn>"),
}


TEMPLATE_NAMES = {"qwen2.5-vl": "Qwen2-VL", "gemma3": "Gemma 3"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train_families")
    data, images = write_llava_json(str(root))
    with pytest.MonkeyPatch.context() as patch:
        skip_video_processors(patch.setattr)
        models = {name: build(root / name) for name, (build, _, _) in CHECKPOINTS.items()}
    return {"data": data, "images": images, **models}


@pytest.fixture(autouse=True)
def _images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_video_processors(monkeypatch.setattr)


def train_args(ws: dict[str, str], family: str, out: Path, steps: int = 2) -> list[str]:
    return [
        "--model",
        ws[family],
        "--data",
        ws["data"],
        "--image-folder",
        ws["images"],
        "--output-dir",
        str(out),
        "--keep",
        "0.25",
        "--learning_rate",
        "1e-3",
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--max-steps",
        str(steps),
        "--save_strategy",
        "no",
    ]


def trained_text(trainer: Any, row: dict[str, Any]) -> str:
    """The text of the tokens the trainer's collator labels in `row`."""
    batch = trainer.data_collator([row])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert torch.equal(ids[labels != -100], labels[labels != -100])
    return trainer.processing_class.tokenizer.decode(ids[labels != -100])


@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_train_uses_the_family_template_and_the_adapter_prunes(
    family: str, workspace: dict[str, str], tmp_path: Path
) -> None:
    _, template, end_of_turn = CHECKPOINTS[family]
    out = tmp_path / "out"
    ours, sft_args = build_train_parser().parse_args_into_dataclasses(
        args=normalise_argv(train_args(workspace, family, out))
    )
    trainer = run_training(ours, sft_args)
    assert trainer.processing_class.chat_template == template
    row = trainer._remove_unused_columns(trainer.train_dataset)[0]
    answer = row["messages"][1]["content"][0]["text"]
    assert trained_text(trainer, row) == answer + end_of_turn  # the answer and its end of turn, only
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}

    # the saved adapter loads on its base (resolved from the adapter config) and prunes a real prompt
    model = lvpeft.from_pretrained(str(out)).eval()
    processor = tf.AutoProcessor.from_pretrained(workspace[family])
    from PIL import Image

    image = Image.open(Path(workspace["images"]) / "000.png")
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5 w6"}]}]
    inputs = processor(
        images=[image],
        text=[processor.apply_chat_template(prompt, add_generation_prompt=True)],
        return_tensors="pt",
        add_special_tokens=family != "gemma3",  # Gemma 3's template writes the BOS
    )
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    kept = lvpeft.lvpruning_tuner(model).pruning_stats.keep_ratios  # of the prefill: vision tokens kept
    assert len(kept) == 3 and 0 < kept[-1] <= 0.25 + 1e-6, kept

    # lvpeft eval compares the adapter with the unpruned model and the training-free scorers on the family
    report = tmp_path / "eval.json"
    argv = ["eval", "--model", str(out), "--data", workspace["data"], "--image-folder", workspace["images"]]
    argv += ["--keeps", "0.25", "--max-samples", "4", "--no-progress", "--device", "cpu"]
    argv += ["--json", str(report)]
    assert lvpeft_main(argv) == 0
    rows = json.loads(report.read_text())["rows"]
    methods = {(r["method"], r["keep"]) for r in rows}
    assert {("unpruned", None), ("lvpruning", 0.25), ("random", 0.25), ("fastv", 0.25)} <= methods, methods


RANK_SCRIPT = """
import os
import sys

sys.path.insert(0, {tests!r})
from accelerate import PartialState
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from family_processors import skip_video_processors
from lvpeft.training.train_command import build_train_parser, normalise_argv, run_training

skip_video_processors()  # no torchvision here: the Qwen processors load without their video processor
ours, sft_args = build_train_parser().parse_args_into_dataclasses(args=normalise_argv(sys.argv[2:]))
trainer = run_training(ours, sft_args)
state = PartialState()
print("distributed:", state.distributed_type, "world size:", state.num_processes, flush=True)
os.makedirs(sys.argv[1], exist_ok=True)
weights = get_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model))
path = f"{{sys.argv[1]}}/rank{{state.process_index}}.safetensors"
save_file({{k: v.contiguous() for k, v in weights.items()}}, path)
"""


@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_two_processes_under_accelerate(family: str, workspace: dict[str, str], tmp_path: Path) -> None:
    """DDP on CPU (gloo), as tests/test_train_command.py runs LLaVA: both ranks end with the saved adapter."""
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate's launcher must be installed"
    script = tmp_path / "train_ranks.py"
    script.write_text(RANK_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    out = tmp_path / "out"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path / "ranks")]
    command += train_args(workspace, family, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / "ranks" / f"rank{r}.safetensors") for r in (0, 1)]
    saved = load_file(out / "adapter_model.safetensors")
    assert ranks[0].keys() == ranks[1].keys() == saved.keys() and saved
    assert all(torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(saved[k], ranks[0][k]) for k in saved)
    heads = [k for k in saved if k.endswith("head.weight")]
    assert heads and all(saved[k].abs().sum() > 0 for k in heads), "training did not move the heads"
    log = result.stdout + result.stderr
    assert "distributed: DistributedType.MULTI_CPU world size: 2" in log
    assert f"training with lvpeft's {TEMPLATE_NAMES[family]} template" in log
