"""`lvpeft train` end to end: LLaVA-format data in, adapter (+ card) out; resume; push; accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

import lvpeft
from helpers import write_llava_json, write_tiny_model_dir
from lvpeft.cli import main

FAST = ["--learning_rate", "1e-3", "--per_device_train_batch_size", "2", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train")
    data, images = write_llava_json(str(root))
    return {"model": write_tiny_model_dir(root / "model"), "data": data, "images": images, "root": str(root)}


def train_args(ws: dict[str, str], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        ws["model"],
        "--data",
        ws["data"],
        "--image-folder",
        ws["images"],
        "--output-dir",
        str(out),
        "--keep",
        "0.25",
        *FAST,
        *extra,
    ]


def test_train_writes_only_the_adapter_and_it_prunes(workspace: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(train_args(workspace, out, "--max-steps", "2", "--save_strategy", "no")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    card = (out / "README.md").read_text()
    assert "- lvpruning" in card and "| 3 | 3 | 0.25 |" in card and "max_steps | 2" in card
    assert json.loads((out / "adapter_config.json").read_text())["hide_answer_from_modules"] is True
    model = lvpeft.from_pretrained(str(out)).eval()  # base resolved from the adapter config
    ids = [1, 121] + [120] * 16 + [5, 6, 122]
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values=torch.randn(1, 3, 32, 32),
            max_new_tokens=2,
            past_key_values=cache,
        )
    assert [layer.keys.shape[-2] for layer in cache.layers] == [n + 1 for n in (21, 15, 12, 9)]


def test_same_command_and_seed_give_the_same_adapter_bit_for_bit(
    workspace: dict[str, str], tmp_path: Path
) -> None:
    """Modules are initialised under --seed, Gumbel noise and data order too: two runs are identical."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = train_args(workspace, out, "--max-steps", "3", "--save_strategy", "no", "--seed", "7")
        assert main(args) == 0
        runs.append(load_file(out / "adapter_model.safetensors"))
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 0
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    other = tmp_path / "c"
    assert main(train_args(workspace, other, "--max-steps", "3", "--save_strategy", "no", "--seed", "8")) == 0
    third = load_file(other / "adapter_model.safetensors")
    assert any(not torch.equal(runs[0][k], third[k]) for k in runs[0])  # the seed is what decides


def test_resume_continues_the_step_count(workspace: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(train_args(workspace, out, "--max-steps", "2", "--save_steps", "2")) == 0
    assert (out / "checkpoint-2").is_dir()
    first = load_file(out / "adapter_model.safetensors")
    assert main(train_args(workspace, out, "--max-steps", "4", "--save_steps", "2", "--resume", "true")) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 4 and steps == [1, 2, 3, 4]
    second = load_file(out / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_bad_rows_stop_before_training(workspace: dict[str, str], tmp_path: Path, capsys) -> None:
    data = json.loads(Path(workspace["data"]).read_text())
    data[3]["image"] = "missing.png"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    ws = {**workspace, "data": str(bad)}
    out = tmp_path / "out"
    assert main(train_args(ws, out, "--max-steps", "1", "--on_bad_rows", "raise")) == 2
    assert "row3" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(train_args(ws, out, "--max-steps", "1", "--save_strategy", "no")) == 0
    )  # skip: trains on the rest


def test_push_to_hub_repo_argument(workspace: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    pushed: dict[str, object] = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        pushed.update(
            repo_id=repo_id, files=sorted(os.listdir(folder_path)), ignore=kwargs.get("ignore_patterns")
        )
        return type("Commit", (), {"commit_url": "https://example.invalid", "oid": "0"})()

    monkeypatch.setattr(
        "huggingface_hub.HfApi.create_repo", lambda self, repo_id, **k: type("R", (), {"repo_id": repo_id})()
    )
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", fake_upload_folder)
    out = tmp_path / "out"
    assert (
        main(train_args(workspace, out, "--max-steps", "1", "--save_strategy", "no", "--push-to-hub", "me/x"))
        == 0
    )
    assert pushed["repo_id"] == "me/x"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(pushed["files"])
    assert not {"model.safetensors", "training_args.bin"} & set(pushed["files"])


RANK_SCRIPT = """
import os
import sys

from accelerate import PartialState
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from lvpeft.training.train_command import build_train_parser, normalise_argv, run_training

ours, sft_args = build_train_parser().parse_args_into_dataclasses(args=normalise_argv(sys.argv[2:]))
trainer = run_training(ours, sft_args)
state = PartialState()
print("distributed:", state.distributed_type, "world size:", state.num_processes, flush=True)
rank = state.process_index
os.makedirs(sys.argv[1], exist_ok=True)
state = get_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model))
save_file({k: v.contiguous() for k, v in state.items()}, f"{sys.argv[1]}/rank{rank}.safetensors")
"""


def test_two_processes_under_accelerate(workspace: dict[str, str], tmp_path: Path) -> None:
    """DDP on CPU (gloo): both ranks end with the same trained adapter, and rank 0's copy is the saved one."""
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate's launcher must be installed"
    script = tmp_path / "train_ranks.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "out"
    # on a CPU-only machine `--cpu --num_processes 2` starts ONE process (accelerate needs mpirun for
    # multi-CPU); `--multi_gpu` starts two with torchrun, and lvpeft's use_cpu default joins them with gloo
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path / "ranks")]
    command += train_args(workspace, out, "--max-steps", "2", "--save_strategy", "no")[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / "ranks" / f"rank{r}.safetensors") for r in (0, 1)]
    saved = load_file(out / "adapter_model.safetensors")
    assert ranks[0].keys() == ranks[1].keys() == saved.keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in saved), "the ranks' adapters diverged"
    assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    heads = [k for k in saved if k.endswith("head.weight")]
    assert heads and all(saved[k].abs().sum() > 0 for k in heads), (
        "training did not move the zero-initialised heads"
    )
    log = result.stdout + result.stderr
    assert "'train_runtime'" in log
    assert "distributed: DistributedType.MULTI_CPU world size: 2" in log


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--hide_answer_from_modules", "false"], False)])
def test_hide_answer_flag_reaches_the_config(flag: list[str], expected: bool) -> None:
    from lvpeft.training.train_command import adapter_config, build_train_parser

    ours, _ = build_train_parser().parse_args_into_dataclasses(["--model", "m", "--data", "d.json", *flag])
    assert adapter_config(ours).hide_answer_from_modules is expected


@pytest.mark.parametrize(("flag", "expected"), [([], 0.0), (["--attention_distill_weight", "0.2"], 0.2)])
def test_attention_distill_flag_reaches_the_config(flag: list[str], expected: float) -> None:
    from lvpeft.training.train_command import adapter_config, build_train_parser

    ours, _ = build_train_parser().parse_args_into_dataclasses(["--model", "m", "--data", "d.json", *flag])
    assert adapter_config(ours).attention_distill_weight == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], ("lvpeft", 1.0, "top_k", True, True)),
        (["--recipe", "paper"], ("paper", 0.0, "gumbel", False, False)),
        (["--recipe", "paper", "--teacher_rank_weight", "0.5"], ("paper", 0.5, "gumbel", False, False)),
        (["--training_decisions", "gumbel"], ("lvpeft", 1.0, "gumbel", True, True)),
        (["--merge_dropped", "false"], ("lvpeft", 1.0, "top_k", True, False)),
        (["--recipe", "paper", "--merge_dropped", "true"], ("paper", 0.0, "gumbel", False, True)),
    ],
)
def test_recipe_flags_reach_the_config(flags: list[str], expected: tuple) -> None:
    """--recipe sets every recipe-dependent option left unset; an explicit option wins."""
    from lvpeft.training.train_command import adapter_config, build_train_parser

    ours, _ = build_train_parser().parse_args_into_dataclasses(["--model", "m", "--data", "d.json", *flags])
    c = adapter_config(ours)
    got = (c.recipe, c.teacher_rank_weight, c.training_decisions, c.hide_answer_from_modules, c.merge_dropped)
    assert got == expected


def _model_with_template(workspace: dict[str, str], folder: Path, template: str) -> dict[str, str]:
    """The workspace's tiny LLaVA, saved again with another chat template."""
    from helpers import tiny_processor

    shutil.copytree(workspace["model"], folder)
    tiny_processor(template).save_pretrained(folder)
    return {**workspace, "model": str(folder)}


def test_template_without_markers_trains_with_lvpeft_llava_template(
    workspace: dict[str, str], tmp_path: Path, caplog
) -> None:
    """The issue's case: a LLaVA template with `add_generation_prompt` and no `{% generation %}` markers."""
    from lvpeft.demo.tiny_model import CHAT_TEMPLATE

    ws = _model_with_template(workspace, tmp_path / "model", CHAT_TEMPLATE)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert main(train_args(ws, out, "--max-steps", "1", "--save_strategy", "no")) == 0
    assert "training with lvpeft's LLaVA-1.5 template" in caplog.text
    assert (out / "adapter_model.safetensors").is_file()


def test_template_of_another_format_stops_before_training_and_says_what_to_pass(
    workspace: dict[str, str], tmp_path: Path, capsys
) -> None:
    other = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "{{ c['text'] }}{% else %}<image>{% endif %}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    ws = _model_with_template(workspace, tmp_path / "model", other)
    out = tmp_path / "out"
    assert main(train_args(ws, out, "--max-steps", "1")) == 2
    assert "--chat_template_path FILE.jinja" in capsys.readouterr().err
    assert not out.exists()
    marked = other.replace("{% for c in m['content'] %}", "{% generation %}{% for c in m['content'] %}")
    marked = marked.replace("{% endfor %}\n", "{% endfor %}{% endgeneration %}\n", 1)
    (tmp_path / "marked.jinja").write_text(marked)
    args = [
        "--max-steps",
        "1",
        "--save_strategy",
        "no",
        "--chat_template_path",
        str(tmp_path / "marked.jinja"),
    ]
    assert main(train_args(ws, out, *args)) == 0  # what the message says to pass
