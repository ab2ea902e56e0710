"""`lvpeft.evaluate` / `lvpeft eval` and `lvpeft train --eval_data`: rows for every variant, keep = 1 equals
the unpruned model, open-ended answers, the JSON report, clear errors, the validation callback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lvpeft
from helpers import randomize_heads, tiny_processor, write_llava_json, write_tiny_model_dir
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.cli import main
from lvpeft.measure.answer_metrics import exact_match, greedy_answers, normalize_answer
from lvpeft.training.data.validation import (
    encode_batch,
    eval_chat_template,
    load_eval_samples,
    tokenize_sample,
)
from lvpeft.training.eval_callback import ValidationNLLCallback

FAST = {"batch_size": 4, "max_new_tokens": 3, "progress": False}


def adapter_model(model_dir: str):
    """The tiny base with an LVPruning adapter (keep 0.25) whose decision heads are random, not tied."""
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir, use_safetensors=True).eval()
    model = get_lvpruning_model(base, LVPruningConfig(keep=0.25, base_model_name_or_path=model_dir))
    randomize_heads(model)
    return model.eval()


def write_open_ended(model, data: str, images: str, out: Path) -> str:
    """`data` with each answer replaced by the unpruned model's greedy 3-token answer (several words)."""
    processor = tiny_processor()
    samples, _ = load_eval_samples(data, images)
    template = eval_chat_template(processor)
    batch = encode_batch(processor, samples, [tokenize_sample(processor, s, template) for s in samples])
    with model.disable_adapter():
        answers = greedy_answers(model, processor, batch, max_new_tokens=3)
    rows = json.loads(Path(data).read_text())
    for row, answer in zip(rows, answers, strict=True):
        row["conversations"][-1]["value"] = answer
    rows = [r for r in rows if len(r["conversations"][-1]["value"].split()) >= 2]
    assert len(rows) >= 4, "the tiny model should give multi-word answers"
    out.write_text(json.dumps(rows[:4]))
    return str(out)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval")
    data, images = write_llava_json(str(root), n=8)
    model_dir = write_tiny_model_dir(root / "model")
    model = adapter_model(model_dir)
    model.save_pretrained(root / "adapter")
    open_ended = write_open_ended(model, data, images, root / "open.json")
    return {
        "root": str(root),
        "data": data,
        "images": images,
        "model": model_dir,
        "adapter": str(root / "adapter"),
        "open": open_ended,
    }


def test_normalize_answer() -> None:
    assert normalize_answer("The Red circle.") == "red circle"
    assert normalize_answer("  It's   3.5 m! ") == "its 3.5 m"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("Yes.", "yes") and not exact_match("yes", "no")


def test_rows_for_every_variant_and_keep_one_equals_unpruned(ws: dict[str, str]) -> None:
    """Open-ended (multi-word) reference answers that the unpruned model gives: it scores 100 %; at keep 1
    the adapter and every scorer give exactly the unpruned accuracy and NLL."""
    model = adapter_model(ws["model"])
    model.train()
    report = lvpeft.evaluate(
        model, ws["open"], image_folder=ws["images"], processor=tiny_processor(), keeps=[0.25, 1.0], **FAST
    )
    methods = ["lvpruning", "random", "uniform", "fastv"]
    assert [(r.method, r.keep) for r in report.rows] == [
        ("unpruned", None),
        *[(m, 0.25) for m in methods],
        *[(m, 1.0) for m in methods],
    ]
    unpruned = report.row("unpruned")
    assert unpruned.accuracy == 1.0 and unpruned.samples == 4
    assert unpruned.answer_tokens > 2 * unpruned.samples  # several words + </s> per answer
    assert 0 < unpruned.nll < float("inf")
    for method in methods:
        at_one = report.row(method, 1.0)
        assert (at_one.accuracy, at_one.nll) == (unpruned.accuracy, unpruned.nll), method
        assert report.row(method, 0.25).schedule == [0.65, 0.45, 0.25]
    # the model is left as it was: its keep, its schedule and train mode
    assert lvpruning_tuner(model).active_config.keep == 0.25 and model.training
    table = report.to_markdown()
    assert "| 1 (none pruned) | unpruned | 100.0 % | 100.0 % |" in table and "| 0.25 | fastv |" in table


def test_random_scorer_is_seeded_and_batching_changes_nothing(ws: dict[str, str]) -> None:
    model = adapter_model(ws["model"])
    kwargs = {"image_folder": ws["images"], "processor": tiny_processor(), "keeps": [0.25], **FAST}

    def random_row(seed: int, batch_size: int = 4) -> lvpeft.EvalRow:
        report = lvpeft.evaluate(
            model, ws["data"], **{**kwargs, "batch_size": batch_size}, scorers=["random"], seed=seed
        )
        return report.row("random", 0.25)

    first = random_row(seed=0)
    assert random_row(seed=0).nll == first.nll
    assert random_row(seed=1).nll != first.nll
    one_by_one = random_row(seed=0, batch_size=1)
    assert one_by_one.accuracy == first.accuracy
    assert one_by_one.nll == pytest.approx(first.nll, abs=1e-5)


def test_base_model_only_compares_the_scorers_and_is_given_back(ws: dict[str, str]) -> None:
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(ws["model"], use_safetensors=True).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    report = lvpeft.evaluate(
        base, ws["data"], image_folder=ws["images"], keeps=[0.5], scorers=["uniform"], **FAST
    )
    assert [(r.method, r.keep) for r in report.rows] == [("unpruned", None), ("uniform", 0.5)]
    assert report.layers == [1, 2, 3] and report.adapter is None
    assert not any("lvpruning" in name for name, _ in base.named_modules())
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_cli_writes_json_and_prints_the_table(ws: dict[str, str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    args = ["eval", "--model", ws["adapter"], "--data", ws["data"], "--image-folder", ws["images"]]
    args += ["--keeps", "0.25", "--scorers", "random", "--max-samples", "4", "--batch-size", "4"]
    assert main([*args, "--max-new-tokens", "2", "--json", str(out), "--no-progress"]) == 0
    assert "| keep | method | accuracy | % of unpruned | answer NLL |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) >= {
        "model",
        "adapter",
        "data",
        "samples",
        "seed",
        "layers",
        "keeps",
        "scorers",
        "rows",
    }
    assert report["adapter"] == ws["adapter"] and report["model"] == ws["model"]  # the base, from the config
    assert report["samples"] == 4 and report["keeps"] == [0.25]
    assert [(r["method"], r["keep"]) for r in report["rows"]] == [
        ("unpruned", None),
        ("lvpruning", 0.25),
        ("random", 0.25),
    ]
    assert set(report["rows"][1]) == {
        "method",
        "keep",
        "schedule",
        "accuracy",
        "nll",
        "samples",
        "answer_tokens",
        "seconds",
    }


def test_cli_json_without_a_path_prints_json_for_a_base_model(ws: dict[str, str], capsys) -> None:
    args = ["eval", "--model", ws["model"], "--data", ws["data"], "--image-folder", ws["images"]]
    args += ["--keeps", "0.5", "--scorers", "none", "--max-samples", "2", "--max-new-tokens", "1"]
    assert main([*args, "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in report["rows"]] == ["unpruned"] and report["adapter"] is None


def text_only_file(tmp_path: Path) -> str:
    path = tmp_path / "text.json"
    row = {"id": "t", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path.write_text(json.dumps([row]))
    return str(path)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"keeps": [0.0, 0.5]}, ValueError, "every keep ratio must be in (0, 1], got [0.0]"),
        ({"keeps": [1.5]}, ValueError, "must be in (0, 1]"),
        ({"keeps": []}, ValueError, "keeps is empty"),
        ({"scorers": ["random", "oracle"]}, ValueError, "unknown scorer(s) ['oracle']; the training-free "),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"data": "missing.json"}, FileNotFoundError, "LLaVA data file not found"),
        ({"image_folder": "no-such-folder"}, FileNotFoundError, "image folder not found"),
        ({"data": "TEXT_ONLY"}, ValueError, "No usable rows in"),
        ({"model": "./no-such-model"}, FileNotFoundError, "model folder not found: ./no-such-model"),
        ({"model": "IMAGES"}, FileNotFoundError, "holds neither a model (config.json) nor an LVPruning"),
    ],
)
def test_bad_input_raises_clearly(
    ws: dict[str, str], tmp_path: Path, change: dict, error: type, message: str
):
    kwargs = {"model": ws["model"], "data": ws["data"], "image_folder": ws["images"], **FAST, **change}
    kwargs["data"] = text_only_file(tmp_path) if kwargs["data"] == "TEXT_ONLY" else kwargs["data"]
    kwargs["model"] = ws["images"] if kwargs["model"] == "IMAGES" else kwargs["model"]
    with pytest.raises(error) as raised:
        lvpeft.evaluate(kwargs.pop("model"), kwargs.pop("data"), **kwargs)
    assert message in str(raised.value)
    if "scorer" in message:
        assert "['fastv', 'random', 'uniform']" in str(raised.value)


def test_cli_errors_are_one_line_and_plot_needs_matplotlib(ws: dict[str, str], monkeypatch, capsys) -> None:
    args = ["eval", "--model", ws["model"], "--data", ws["data"], "--image-folder", ws["images"]]
    assert main([*args, "--scorers", "random,oracle"]) == 2
    assert "lvpeft eval: error: unknown scorer(s) ['oracle']" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main([*args, "--plot", "out.png"]) == 2
    assert "plotting needs matplotlib" in capsys.readouterr().err


# -- lvpeft train --eval_data ---------------------------------------------------------------------


def parse_train(ws: dict[str, str], out: Path, *extra: str):
    from lvpeft.training.train_command import build_train_parser, normalise_argv

    argv = ["--model", ws["model"], "--data", ws["data"], "--image-folder", ws["images"]]
    argv += ["--output-dir", str(out), "--keep", "0.25", "--learning_rate", "1e-3", "--logging_steps", "1"]
    argv += ["--per_device_train_batch_size", "2", "--save_strategy", "no", "--eval_data", ws["data"]]
    return build_train_parser().parse_args_into_dataclasses(args=normalise_argv([*argv, *extra]))


def test_train_eval_data_logs_the_validation_nll(ws: dict[str, str], tmp_path: Path) -> None:
    from lvpeft.training.train_command import run_training

    ours, sft = parse_train(
        ws, tmp_path / "out", "--max-steps", "3", "--eval_samples", "4", "--eval_steps", "2"
    )
    trainer = run_training(ours, sft)
    logged = [entry for entry in trainer.state.log_history if "eval_nll/lvp" in entry]
    assert [e["step"] for e in logged] == [2, 3]  # at the evaluation step and at the end
    assert all("eval_nll/random" in e for e in logged)
    unpruned = [e for e in trainer.state.log_history if "eval_nll/unpruned" in e]
    assert len(unpruned) == 1 and unpruned[0]["step"] == 2
    training_logs = [e["step"] for e in trainer.state.log_history if "lm_loss" in e]
    assert training_logs == [1, 2, 3]  # the validation log does not swallow the step's training log
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ValidationNLLCallback))
    assert len(callback.samples) == 4 and callback.history[-1]["eval_nll/lvp"] == logged[-1]["eval_nll/lvp"]
    trainer.create_model_card()  # the card reports the last validation
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Validation" in card and "4 held-out questions after step 3, keep 0.25" in card
    assert f"| this adapter | {logged[-1]['eval_nll/lvp']:.4f} |" in card
    assert f"| random scorer, same positions and budget | {logged[-1]['eval_nll/random']:.4f} |" in card


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--logging_steps", "5"], (50, False)),  # no strategy: every 10 x logging_steps steps
        (["--eval_steps", "7"], (7, False)),
        (["--eval_strategy", "steps", "--eval_steps", "0.25"], (0.25, False)),
        (["--eval_strategy", "epoch"], (None, True)),
    ],
)
def test_eval_data_schedule(ws: dict[str, str], tmp_path: Path, flags: list[str], expected: tuple) -> None:
    from lvpeft.training.train_command import load_validation

    ours, sft = parse_train(ws, tmp_path / "out", "--eval_samples", "3", *flags)
    samples, every, per_epoch = load_validation(ours, sft)
    assert len(samples) == 3 and (every, per_epoch) == expected
    assert sft.eval_strategy == "no"  # lvpeft's callback evaluates, not the trainer's loop


def test_end_of_training_warns_when_the_adapter_does_not_beat_random(ws: dict[str, str], caplog) -> None:
    model = adapter_model(ws["model"])
    logged: list[dict[str, float]] = []
    trainer = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        processing_class=tiny_processor(),
        log=logged.append,
    )
    samples, _ = load_eval_samples(ws["data"], ws["images"], max_samples=2)
    callback = ValidationNLLCallback(trainer, samples, batch_size=2)
    state = SimpleNamespace(global_step=7)
    with caplog.at_level(logging.WARNING, logger="lvpeft.training.eval_callback"):
        callback.on_train_end(None, state, None)  # measures the final adapter: real numbers
        assert set(logged[0]) == {"eval_nll/lvp", "eval_nll/random", "eval_nll/unpruned"}
        callback.history[-1].update({"eval_nll/lvp": 2.0, "eval_nll/random": 2.5})
        caplog.clear()
        assert callback.warn_if_not_better() is None and not caplog.records
        callback.history[-1].update({"eval_nll/lvp": 2.5})  # a tie is not a win
        message = callback.warn_if_not_better()
    assert message is not None and "the adapter does not beat random pruning at keep=0.25" in caplog.text
    assert "2.5000 (adapter) vs 2.5000 (random" in message and "after step 7" in message
    assert "docs/evaluation.md" in message


def test_answer_nll_is_what_generate_sees(ws: dict[str, str]) -> None:
    """Prefill + the whole answer on the (pruned) cache, batched and left-padded, gives per sample the NLL
    of one teacher-forced forward of the unpruned model, and, pruned, that of feeding the answer one token
    at a time on the pruned cache as `generate()` does."""
    import torch.nn.functional as F
    from transformers import DynamicCache

    from lvpeft.training.answer_nll import answer_nll

    model = adapter_model(ws["model"])
    processor = tiny_processor()
    samples, _ = load_eval_samples(ws["open"], ws["images"])
    tokenized = [tokenize_sample(processor, s, eval_chat_template(processor)) for s in samples]
    batch = encode_batch(processor, samples, tokenized)
    with torch.no_grad():
        with model.disable_adapter():
            unpruned, count = answer_nll(model, batch)
        pruned, _ = answer_nll(model, batch)
        for i, (sample, tok) in enumerate(zip(samples, tokenized, strict=True)):
            prompt = encode_batch(processor, [sample], [tok]).prompt
            answer = torch.tensor([tok.answer_ids])  # (1, A)
            length = prompt["input_ids"].shape[1]
            assert int(count[i]) == answer.shape[1] >= 3
            with model.disable_adapter():
                ids = torch.cat([prompt["input_ids"], answer], dim=1)
                logits = model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits[0, length - 1 : -1]
            assert float(unpruned[i]) == pytest.approx(
                float(F.cross_entropy(logits, answer[0], reduction="sum"))
            )
            cache = DynamicCache(config=model.get_base_model().config.text_config)
            steps = [model(**prompt, cache=cache).logits[0, -1]]
            for j in range(answer.shape[1] - 1):
                mask = torch.ones(1, length + j + 1, dtype=torch.long)
                steps.append(
                    model(input_ids=answer[:, j : j + 1], attention_mask=mask, cache=cache).logits[0, -1]
                )
            expected = F.cross_entropy(torch.stack(steps), answer[0], reduction="sum")
            assert float(pruned[i]) == pytest.approx(float(expected), abs=1e-4)
            assert float(pruned[i]) != pytest.approx(float(unpruned[i]), abs=1e-4)  # it does prune
