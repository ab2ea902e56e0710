"""Inference by removal: equivalences that define correctness (METHOD.md, "Inference").

- adapter disabled == base model, bit for bit;
- removal == the masked reference (same decisions, dropped tokens masked instead of removed);
- keep=1 == base (the stage masks and gathered positions are exact);
- batched (left padding, different lengths, 0/1/2 images) == one by one;
- text-only input == base, bit for bit;
- the KV cache of pruned layers holds only the kept tokens; kept tokens keep their positions.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from helpers import IMAGE_TOKEN, PATCHES, batch, prompt_ids, randomize_heads, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner

BACKBONES = ["llama", "qwen2"]
ATTENTION = ["eager", "sdpa"]
PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(0, 2, 9, 1), prompt_ids(2, 1, 4, 2), prompt_ids(1, 6, 2, 3)]


def pruned_model(backbone: str = "llama", attn: str = "eager", keep: float = 0.25, **config):
    model = get_lvpruning_model(tiny_llava(backbone, attn), LVPruningConfig(keep=keep, **config))
    randomize_heads(model)
    return model.eval()


def split(inputs: dict[str, torch.Tensor], prompts: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    """The one-by-one inputs of a batch, with the same images."""
    counts = [sum(t == IMAGE_TOKEN for t in p) // PATCHES for p in prompts]
    out, offset = [], 0
    for p, n in zip(prompts, counts):
        single = batch([p])
        if n:
            single["pixel_values"] = inputs["pixel_values"][offset : offset + n]
        offset += n
        out.append(single)
    return out


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("attn", ATTENTION)
def test_disabled_adapter_is_bit_identical_to_base(backbone: str, attn: str) -> None:
    inputs = batch(PROMPTS)
    base = tiny_llava(backbone, attn)
    with torch.no_grad():
        expected = base(**inputs).logits
        expected_tokens = base.generate(**inputs, max_new_tokens=5, do_sample=False)
    model = pruned_model(backbone, attn)
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(**inputs).logits, expected)
        assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), expected_tokens)
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[:, -1], expected[:, -1], atol=1e-3), (
            "pruning had no effect"
        )


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("side", ["left", "right"])
def test_removal_matches_masked_reference(backbone: str, attn: str, side: str) -> None:
    inputs = batch(PROMPTS, side=side)
    model = pruned_model(backbone, attn)
    tuner = lvpruning_tuner(model)
    with torch.no_grad():
        removed = model(**inputs).logits
        removed_ratios = tuner.pruning_stats.keep_ratios
        with tuner.masked_inference():
            masked = model(**inputs).logits
            assert tuner.pruning_stats.keep_ratios == removed_ratios
    assert removed.shape == masked.shape == (*inputs["input_ids"].shape, removed.shape[-1])
    text = (inputs["input_ids"] != IMAGE_TOKEN) & inputs["attention_mask"].bool()
    torch.testing.assert_close(removed[text], masked[text], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "dropped"])
def test_generate_removal_matches_masked_reference_step_by_step(attn: str, merge: bool) -> None:
    inputs = batch(PROMPTS)
    model = pruned_model("llama", attn, merge_dropped=merge)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        removed = model.generate(**inputs, **kwargs)
        with lvpruning_tuner(model).masked_inference():
            masked = model.generate(**inputs, **kwargs)
    assert torch.equal(removed.sequences, masked.sequences)
    for a, b in zip(removed.logits, masked.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ATTENTION)
def test_sampling_matches_masked_reference(attn: str) -> None:
    inputs = batch(PROMPTS)
    model = pruned_model("llama", attn)
    with torch.no_grad():
        torch.manual_seed(7)
        removed = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=0, temperature=1.0)
        torch.manual_seed(7)
        with lvpruning_tuner(model).masked_inference():
            masked = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=0, temperature=1.0)
    assert torch.equal(removed, masked)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("attn", ATTENTION)
def test_keep_one_equals_base(backbone: str, attn: str) -> None:
    inputs = batch(PROMPTS)
    with torch.no_grad():
        expected = tiny_llava(backbone, attn)(**inputs).logits
        got = pruned_model(backbone, attn, keep=1.0)(**inputs).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("attn", ATTENTION)
def test_batched_equals_one_by_one(backbone: str, attn: str) -> None:
    inputs = batch(PROMPTS)
    model = pruned_model(backbone, attn)
    with torch.no_grad():
        batched_logits = model(**inputs).logits[:, -1]
        batched_tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)[
            :, inputs["input_ids"].shape[1] :
        ]
        for i, single in enumerate(split(inputs, PROMPTS)):
            torch.testing.assert_close(model(**single).logits[0, -1], batched_logits[i], atol=1e-5, rtol=0)
            tokens = model.generate(**single, max_new_tokens=6, do_sample=False)[
                0, single["input_ids"].shape[1] :
            ]
            assert tokens.tolist() == batched_tokens[i].tolist()


@pytest.mark.parametrize("attn", ATTENTION)
def test_text_only_input_is_bit_identical_to_base(attn: str) -> None:
    inputs = batch([prompt_ids(0, 3, 5, 0), prompt_ids(0, 1, 9, 1)])
    with torch.no_grad():
        expected = tiny_llava("llama", attn)(**inputs).logits
        assert torch.equal(pruned_model("llama", attn)(**inputs).logits, expected)


def test_kv_cache_holds_only_kept_tokens() -> None:
    model = pruned_model(keep=0.25)  # 16 vision tokens: keep 10, 7, 4 before layers 1, 2, 3
    inputs = batch([PROMPTS[0]])
    length = inputs["input_ids"].shape[1]
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model(**inputs, past_key_values=cache, use_cache=True)
    assert [layer.keys.shape[-2] for layer in cache.layers] == [length, length - 6, length - 9, length - 12]
    assert lvpruning_tuner(model).pruning_stats.keep_ratios == [10 / 16, 7 / 16, 4 / 16]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert [layer.keys.shape[-2] for layer in out.past_key_values.layers] == [
        n + 2 for n in (length, length - 6, length - 9, length - 12)
    ]


def test_kept_tokens_keep_their_original_positions() -> None:
    model = pruned_model(keep=0.25)
    inputs = batch([PROMPTS[2]])  # two images: 32 vision tokens
    seen: dict[int, torch.Tensor] = {}
    layers = model.get_base_model().model.language_model.layers
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: seen.__setitem__(i, kw["position_ids"].clone()), with_kwargs=True
        )
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    ids = inputs["input_ids"][0]
    text_positions = set(torch.nonzero(ids != IMAGE_TOKEN).flatten().tolist())
    vision_positions = set(torch.nonzero(ids == IMAGE_TOKEN).flatten().tolist())
    assert seen[0][0].tolist() == list(range(len(ids)))
    previous: set[int] = vision_positions
    for layer, kept_vision in [(1, 21), (2, 14), (3, 8)]:  # round(32 * 0.65), round(32 * 0.45), 32 * 0.25
        positions = seen[layer][0].tolist()
        assert positions == sorted(set(positions)), "positions must be strictly increasing"
        assert text_positions <= set(positions)
        vision = set(positions) & vision_positions
        assert len(vision) == kept_vision and vision <= previous, "dropped tokens must stay dropped"
        previous = vision


def test_second_generate_reuses_nothing_stale() -> None:
    model = pruned_model()
    first, second = batch([PROMPTS[0]]), batch([PROMPTS[3]], seed=5)
    with torch.no_grad():
        alone = model.generate(**second, max_new_tokens=5, do_sample=False)
        model.generate(**first, max_new_tokens=5, do_sample=False)
        again = model.generate(**second, max_new_tokens=5, do_sample=False)
    assert torch.equal(alone, again)


def test_beam_search_matches_masked_reference() -> None:
    inputs = batch(PROMPTS[:2])
    model = pruned_model()
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        removed = model.generate(**inputs, **kwargs)
        with lvpruning_tuner(model).masked_inference():
            masked = model.generate(**inputs, **kwargs)
    assert torch.equal(removed, masked)


def test_use_cache_false_matches_cached_generation() -> None:
    inputs = batch(PROMPTS)
    model = pruned_model()
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_inputs_embeds_are_pruned_like_input_ids() -> None:
    inputs = batch(PROMPTS)
    model = pruned_model()
    embeds = model.get_base_model().get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).logits
        from_embeds = model(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        ).logits
    assert lvpruning_tuner(model).pruning_stats.keep_ratios[-1] == pytest.approx(0.25)
    torch.testing.assert_close(from_embeds[:, -1], from_ids[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_matches_masked_reference(dtype: torch.dtype) -> None:
    inputs = batch(PROMPTS)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    model = get_lvpruning_model(tiny_llava(dtype=dtype), LVPruningConfig(keep=0.25)).eval()
    randomize_heads(model)
    tuner = lvpruning_tuner(model)
    with torch.no_grad():
        removed = model(**inputs).logits
        with tuner.masked_inference():
            masked = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.isfinite(removed[:, -1]).all() and tokens.shape[1] == inputs["input_ids"].shape[1] + 3
    torch.testing.assert_close(removed[:, -1].float(), masked[:, -1].float(), atol=2e-2, rtol=0)
