"""Property-based tests of the pruning machinery (hypothesis), over random batches and configurations.

Drawn per case: decoder (Llama, Qwen2), attention (eager, sdpa), keep, module positions (any valid
`layers` of the 4-layer tiny model), 1-4 samples of different lengths with 0, 1 or 2 images each,
left or right padding. Each (backbone, attention, keep, layers) model is built once per module and
never changed, so every case of every property runs on the same weights. Properties:

- removal == masked reference at every real non-vision position, and step by step through generate();
- batched (left padding) == one by one, logits and greedy tokens;
- kept positions are original and strictly increasing, text always kept, dropped stays dropped;
- per-layer KV-cache lengths follow the keep schedule, at prefill and after decoding;
- keep=1 == base model.

Run with `--hypothesis-show-statistics` to see how many cases each property ran.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from helpers import (
    IMAGE_TOKEN,
    batch,
    cache_lengths,
    expected_cache_lengths,
    prompt_ids,
    randomize_heads,
    tiny_llava,
    unbatch,
)
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.decisions import keep_counts

DEPTH = 4  # decoder layers of tiny_llava
ATOL = 1e-5
# keeps whose schedules hit round-half-up ties (16 * 0.09375 = 1.5, 16 * 0.15625 = 2.5), the minimum of
# one kept token (16 / 32 = 0.5 -> 1), ratios capped at 1 (0.8 + 0.2 * k), and no pruning at all (1.0)
KEEPS = [1 / 32, 0.09375, 0.15625, 0.25, 0.4, 0.5, 0.8, 1.0]

# too_slow: the first case of a configuration builds its model (and the machine is shared)
PROPERTY = settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # the explain phase costs minutes per failure
    suppress_health_check=[HealthCheck.too_slow],
)

backbones = st.sampled_from(["llama", "qwen2"])
attentions = st.sampled_from(["eager", "sdpa"])
keeps = st.sampled_from(KEEPS)
module_layers = st.sampled_from([(1, 2, 3), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3)])  # every valid `layers`
# one sample: (images 0-2, text before, text after, token seed) -> prompt_ids(...)
sample = st.tuples(st.sampled_from([1, 2, 0]), st.integers(0, 5), st.integers(0, 6), st.integers(0, 2**16))
prompt_lists = (
    st.integers(1, 4)
    .flatmap(lambda n: st.lists(sample, min_size=n, max_size=n))
    .map(lambda specs: [prompt_ids(*s) for s in specs])
)
sides = st.sampled_from(["left", "right"])
# three new tokens, no early stop at EOS (a finished sample would be padded in the batch, not alone), and
# never the image placeholder (test_generation_features.py::test_generated_image_token_does_not_crash)
GREEDY = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, suppress_tokens=[IMAGE_TOKEN])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models run fastest on one thread (two spin-wait badly on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.cache
def pruned(backbone: str, attn: str, keep: float, layers: tuple[int, ...]):
    """The pruned tiny model of this configuration, built once (random but fixed decision heads)."""
    model = get_lvpruning_model(tiny_llava(backbone, attn), LVPruningConfig(keep=keep, layers=list(layers)))
    randomize_heads(model)
    return model.eval()


@functools.cache
def base(backbone: str, attn: str):
    """The base tiny model (same weights as every `pruned` model of this backbone), built once."""
    return tiny_llava(backbone, attn)


def schedule(model) -> list[float]:
    return lvpruning_tuner(model).peft_config["default"].resolve_schedule()


def n_vision(prompt: list[int]) -> int:
    return sum(t == IMAGE_TOKEN for t in prompt)


def describe(prompts: list[list[int]], side: str) -> None:
    """Record what kind of batch a case drew (shown by --hypothesis-show-statistics)."""
    images = sorted({n_vision(p) // 16 for p in prompts})
    event(f"batch size {len(prompts)}")
    event(f"images per sample {images}")
    if len({len(p) for p in prompts}) > 1:
        event(f"padded ({side})")


def expected_keep_ratios(prompts: list[list[int]], ratios: list[float]) -> list[float]:
    """Realised keep ratio per module: mean over the samples that have vision tokens."""
    counts = torch.tensor([n_vision(p) for p in prompts])
    has = counts > 0
    return [float((keep_counts(counts, r)[has].float() / counts[has]).mean()) for r in ratios]


@PROPERTY
@given(backbones, attentions, keeps, module_layers, prompt_lists, sides)
def test_removal_matches_masked_reference(backbone, attn, keep, layers, prompts, side) -> None:
    describe(prompts, side)
    model = pruned(backbone, attn, keep, layers)
    tuner = lvpruning_tuner(model)
    inputs = batch(prompts, side=side)
    with torch.no_grad():
        removed = model(**inputs).logits
        removed_ratios = tuner.pruning_stats.keep_ratios
        with tuner.masked_inference():
            masked = model(**inputs).logits
            masked_ratios = tuner.pruning_stats.keep_ratios
    assert removed_ratios == masked_ratios
    if any(n_vision(p) for p in prompts):  # text-only: see test_stats_describe_the_last_forward
        assert removed_ratios == pytest.approx(expected_keep_ratios(prompts, schedule(model)))
    assert removed.shape == masked.shape
    text = (inputs["input_ids"] != IMAGE_TOKEN) & inputs["attention_mask"].bool()
    torch.testing.assert_close(removed[text], masked[text], atol=ATOL, rtol=0)
    if side == "left":  # and step by step through generate()
        kwargs = dict(**GREEDY, return_dict_in_generate=True, output_logits=True)
        with torch.no_grad():
            removed = model.generate(**inputs, **kwargs)
            with tuner.masked_inference():
                masked = model.generate(**inputs, **kwargs)
        assert torch.equal(removed.sequences, masked.sequences)
        for a, b in zip(removed.logits, masked.logits):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@PROPERTY
@given(backbones, attentions, keeps, module_layers, prompt_lists)
def test_batched_equals_one_by_one(backbone, attn, keep, layers, prompts) -> None:
    describe(prompts, "left")
    model = pruned(backbone, attn, keep, layers)
    inputs = batch(prompts, side="left")
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        tokens = model.generate(**inputs, **GREEDY)[:, length:]
        for i, single in enumerate(unbatch(inputs, prompts)):
            torch.testing.assert_close(model(**single).logits[0, -1], logits[i], atol=ATOL, rtol=0)
            alone = model.generate(**single, **GREEDY)[0, len(prompts[i]) :]
            assert alone.tolist() == tokens[i].tolist(), f"sample {i}"


@PROPERTY
@given(backbones, attentions, keeps, module_layers, prompt_lists, sides, st.booleans())
def test_kept_positions_are_original_and_increasing(
    backbone, attn, keep, layers, prompts, side, explicit_positions
) -> None:
    describe(prompts, side)
    model = pruned(backbone, attn, keep, layers)
    ratios = schedule(model)
    inputs = batch(prompts, side=side)
    if explicit_positions:  # as generate() passes them: counted over the real tokens only
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    seen: dict[int, torch.Tensor] = {}
    decoder_layers = model.get_base_model().model.language_model.layers
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: seen.__setitem__(i, kw["position_ids"].clone()), with_kwargs=True
        )
        for i, layer in enumerate(decoder_layers)
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    batch_size, length = ids.shape
    original = seen[0].expand(batch_size, length)
    expected_original = inputs.get("position_ids", torch.arange(length).expand(batch_size, length))
    assert torch.equal(original, expected_original)
    sizes = expected_cache_lengths(prompts, list(layers), ratios, DEPTH)
    any_vision = any(n_vision(p) for p in prompts)
    for b, prompt in enumerate(prompts):
        slot_of = {int(original[b, j]): j for j in torch.nonzero(real[b]).flatten().tolist()}
        text = {j for j in slot_of.values() if ids[b, j] != IMAGE_TOKEN}
        previous = {j for j in slot_of.values() if ids[b, j] == IMAGE_TOKEN}
        for i in range(1, DEPTH):
            stage = max((s for s, p in enumerate(layers) if p <= i), default=-1)
            positions = seen[i].expand(batch_size, -1)[b]
            assert positions.shape[0] == sizes[i]
            if stage < 0 or not any_vision:
                assert torch.equal(positions, original[b]), f"layer {i} before any module"
                continue
            kept_count = len(text) + int(keep_counts(torch.tensor([n_vision(prompt)]), ratios[stage]))
            kept = positions[positions.shape[0] - kept_count :].tolist()  # left padding: real slots last
            assert kept == sorted(set(kept)), f"layer {i}: positions must be strictly increasing"
            assert set(kept) <= set(slot_of), f"layer {i}: positions must be original ones"
            slots = {slot_of[p] for p in kept}
            assert text <= slots, f"layer {i}: every text token is kept"
            vision = slots - text
            assert vision <= previous, f"layer {i}: a dropped vision token came back"
            previous = vision


@PROPERTY
@given(backbones, attentions, keeps, module_layers, prompt_lists, sides)
def test_kv_cache_lengths_follow_the_schedule(backbone, attn, keep, layers, prompts, side) -> None:
    describe(prompts, side)
    model = pruned(backbone, attn, keep, layers)
    expected = expected_cache_lengths(prompts, list(layers), schedule(model), DEPTH)
    inputs = batch(prompts, side=side)
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        model(**inputs, past_key_values=cache, use_cache=True)
    assert cache_lengths(cache) == expected
    if side == "left":  # generate() needs left padding; 3 new tokens, the last one not yet cached
        with torch.no_grad():
            out = model.generate(**inputs, **GREEDY, return_dict_in_generate=True)
        assert cache_lengths(out.past_key_values) == [n + 2 for n in expected]


@PROPERTY
@given(backbones, attentions, module_layers, prompt_lists, sides)
def test_keep_one_equals_base(backbone, attn, layers, prompts, side) -> None:
    describe(prompts, side)
    model = pruned(backbone, attn, 1.0, layers)
    inputs = batch(prompts, side=side)
    with torch.no_grad():
        got = model(**inputs).logits
        expected = base(backbone, attn)(**inputs).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)
    if side == "left":
        with torch.no_grad():
            tokens = model.generate(**inputs, **GREEDY)
            base_tokens = base(backbone, attn).generate(**inputs, **GREEDY)
        assert torch.equal(tokens, base_tokens)


# -- pruning_stats: what the LAST forward decided ----------------------------------------------------------


@pytest.mark.parametrize("second", ["text_only", "adapter_disabled"])
def test_stats_describe_the_last_forward(second: str) -> None:
    model = pruned("llama", "eager", 0.25, (1, 2, 3))
    tuner = lvpruning_tuner(model)
    image = batch([prompt_ids(1, 2, 3, 0)])
    with torch.no_grad():
        model(**image)
        assert tuner.pruning_stats.keep_ratios == [10 / 16, 7 / 16, 4 / 16]
        if second == "text_only":
            model(**batch([prompt_ids(0, 2, 3, 1)]))
        else:
            with model.disable_adapter():
                model(**image)
    assert tuner.pruning_stats.keep_ratios in ([], [1.0, 1.0, 1.0]), "nothing was pruned"


def test_text_only_training_batch_has_no_stale_ratio_loss() -> None:
    """LVPruningTrainer adds `pruning_stats.ratio_loss` to the loss: a stale one, whose graph the previous
    step's backward freed, makes `loss.backward()` fail (text-only rows are kept with --keep_text_only)."""
    model = get_lvpruning_model(tiny_llava(), LVPruningConfig(keep=0.25, layers=[1, 2, 3]))
    randomize_heads(model)
    model.train()
    tuner = lvpruning_tuner(model)
    image, text = batch([prompt_ids(1, 2, 3, 0)]), batch([prompt_ids(0, 2, 3, 1)])
    out = model(**image, labels=image["input_ids"])
    (out.loss + tuner.pruning_stats.ratio_loss).backward()
    model(**text, labels=text["input_ids"])
    assert tuner.pruning_stats.ratio_loss is None
