"""The decision modules do not see the answer in training: hidden slots are not language keys."""

from __future__ import annotations

import pytest
import torch

from helpers import IMAGE_TOKEN, batch, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.tuner.layer import DecisionModule

ANSWER = [7, 8, 9]


def module_calls(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Record every decision-module call: its logits and the language mask it was given."""
    calls: list[dict[str, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls.append({"logits": output.detach().clone(), "language_mask": args[2].clone()})

    for m in model.modules():
        if isinstance(m, DecisionModule):
            m.register_forward_hook(hook)
    return calls


def model_and_prompts(train: bool) -> tuple[torch.nn.Module, list[list[int]]]:
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25))
    randomize_heads(model)
    prompts = [prompt_ids(1, 3, 4, seed) for seed in range(3)]  # equal lengths: no padding anywhere
    return (model.train() if train else model.eval()), prompts


@pytest.mark.parametrize("train", [False, True])
def test_modules_with_the_answer_hidden_score_as_on_the_prompt_alone(train: bool) -> None:
    model, prompts = model_and_prompts(train)
    calls = module_calls(model)
    tuner = lvpruning_tuner(model)
    with torch.no_grad():
        model(**batch(prompts))
        alone = list(calls)
        calls.clear()
        full = batch([p + ANSWER for p in prompts])
        answer = torch.zeros_like(full["input_ids"], dtype=torch.bool)
        answer[:, -len(ANSWER) :] = True
        with tuner.hide_from_modules(answer):
            model(**full)
        hidden = list(calls)
        calls.clear()
        model(**full)
        seen = list(calls)
    # in training the later modules score after random Gumbel decisions: compare the first one there
    compared = 1 if train else 3
    assert len(alone) == len(hidden) == len(seen) == 3
    for s in range(compared):
        torch.testing.assert_close(hidden[s]["logits"], alone[s]["logits"], atol=1e-5, rtol=1e-5)
    # the control: a module that reads the answer scores differently
    assert not torch.allclose(seen[0]["logits"], alone[0]["logits"], atol=1e-3)


def test_a_row_with_every_language_token_hidden_keeps_them_all() -> None:
    model, prompts = model_and_prompts(train=False)
    calls = module_calls(model)
    inputs = batch(prompts)
    everything = inputs["input_ids"] != IMAGE_TOKEN
    everything[1:] = False  # rows 1 and 2 hide nothing
    with torch.no_grad(), lvpruning_tuner(model).hide_from_modules(everything):
        model(**inputs)
    counts = calls[0]["language_mask"].sum(dim=1).tolist()
    assert counts == [int((inputs["input_ids"][0] != IMAGE_TOKEN).sum())] * 3


def test_hidden_slots_of_another_shape_are_refused() -> None:
    model, prompts = model_and_prompts(train=False)
    inputs = batch(prompts)
    wrong = torch.zeros(inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="labels != -100"), lvpruning_tuner(model).hide_from_modules(wrong):
        model(**inputs)


def test_hidden_answer_stays_in_the_sequence_in_eval() -> None:
    """Hiding the answer from the modules (as the trainer does, also in its evaluation loop) must not
    remove it from the sequence: the answer's logits equal a pruned prefill of the prompt followed by
    the answer decoded on its cache."""
    from transformers import DynamicCache

    model, prompts = model_and_prompts(train=False)
    inputs = batch(prompts)
    full = batch([p + ANSWER for p in prompts])
    answer = torch.zeros_like(full["input_ids"], dtype=torch.bool)
    answer[:, -len(ANSWER) :] = True
    with torch.no_grad():
        with lvpruning_tuner(model).hide_from_modules(answer):
            together = model(**full).logits[:, -len(ANSWER) - 1 :]
        cache = DynamicCache(config=model.get_base_model().config.text_config)
        prefill = model(**inputs, past_key_values=cache, use_cache=True).logits[:, -1:]
        decoded = model(
            input_ids=full["input_ids"][:, -len(ANSWER) :],
            attention_mask=full["attention_mask"],
            past_key_values=cache,
            use_cache=True,
        ).logits
    torch.testing.assert_close(together, torch.cat([prefill, decoded], dim=1), atol=1e-4, rtol=1e-4)
