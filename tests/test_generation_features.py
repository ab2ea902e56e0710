"""`generate()` features with pruning: each either works (checked against the masked reference, the base
model or a fresh run) or fails with a clear error.

Works: sampling with a seed, beam search with `num_return_sequences`, generating up to the context limit,
`use_cache=False`, `eos_token_id` / `StoppingCriteria` / `stop_strings`, the `image-text-to-text` pipeline
(over the PeftModel or its base model), a second `generate()`, `inputs_embeds`, bfloat16, a user-created
`DynamicCache` (also continued for a text follow-up), `disable_adapter()`.
Refused clearly: a new image into an already pruned cache. Unpruned, with a warning: an image after a cached
text prefix. Also work (once bugs): assisted / prompt-lookup decoding (the cache crop follows the pruned
layers), a generated image-placeholder token (a plain token when no image features come with it).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    pipeline,
)

from helpers import (
    IMAGE_TOKEN,
    PAD,
    batch,
    cache_lengths,
    expected_cache_lengths,
    prompt_ids,
    randomize_heads,
    tiny_llava,
    tiny_processor,
)
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.decisions import keep_counts

ATOL = 1e-5
PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(0, 2, 9, 1), prompt_ids(2, 1, 4, 2)]
# Greedy, fixed length, and never the image placeholder (see test_generated_image_token_does_not_crash).
GREEDY = dict(do_sample=False, suppress_tokens=[IMAGE_TOKEN])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models run fastest on one thread (two spin-wait badly on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(attn: str = "eager", keep: float = 0.25, dtype: torch.dtype = torch.float32):
    """A pruned tiny Llava with random (fixed) decision heads; every call builds the same weights."""
    model = get_lvpruning_model(tiny_llava("llama", attn, dtype=dtype), LVPruningConfig(keep=keep))
    randomize_heads(model)
    return model.eval()


@contextlib.contextmanager
def without_merging(model) -> Iterator[None]:
    """Within the block, `model` drops the tokens its modules drop instead of merging them."""
    config = lvpruning_tuner(model).active_config
    saved, config.merge_dropped = config.merge_dropped, False
    try:
        yield
    finally:
        config.merge_dropped = saved


@functools.cache
def pruned(attn: str = "eager", keep: float = 0.25, dtype: torch.dtype = torch.float32):
    """`build(...)`, once per module."""
    return build(attn, keep, dtype)


def inputs(prompts: list[list[int]] = PROMPTS, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    out = batch(prompts, seed=seed)
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def schedule(model=None) -> tuple[list[int], list[float]]:
    """Module positions and keep ratios of the adapter (default placement for 4 layers: [1, 2, 3])."""
    config = lvpruning_tuner(model or pruned()).peft_config["default"]
    return config.layers, config.resolve_schedule()


def expected_lengths(prompts: list[list[int]], new_tokens: int) -> list[int]:
    """Per-layer KV-cache length after `generate(max_new_tokens=new_tokens)` (last token not cached)."""
    return [n + new_tokens - 1 for n in expected_cache_lengths(prompts, *schedule())]


def masked(model):
    return lvpruning_tuner(model).masked_inference()


# -- decoding strategies ---------------------------------------------------------------------------------


def test_sampling_with_a_seed_matches_masked_reference() -> None:
    model, x = pruned(), inputs()
    kwargs = dict(
        do_sample=True,
        top_k=20,
        top_p=0.9,
        temperature=1.3,
        max_new_tokens=8,
        min_new_tokens=8,
        num_return_sequences=2,
        suppress_tokens=[IMAGE_TOKEN],
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        torch.manual_seed(3)
        first = model.generate(**x, **kwargs)
        torch.manual_seed(3)
        again = model.generate(**x, **kwargs).sequences
        torch.manual_seed(4)
        other = model.generate(**x, **kwargs).sequences
        with masked(model):
            torch.manual_seed(3)
            reference = model.generate(**x, **kwargs).sequences
    assert torch.equal(first.sequences, again) and torch.equal(first.sequences, reference)
    assert not torch.equal(first.sequences, other), "the seed must matter: this really samples"
    assert cache_lengths(first.past_key_values) == expected_lengths(PROMPTS, 8)


def test_beam_search_with_num_return_sequences_matches_masked_reference() -> None:
    model, x = pruned(), inputs()
    kwargs = dict(
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        suppress_tokens=[IMAGE_TOKEN],
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.no_grad():
        removed = model.generate(**x, **kwargs)
        with masked(model):
            reference = model.generate(**x, **kwargs)
    assert removed.sequences.shape == (2 * len(PROMPTS), x["input_ids"].shape[1] + 5)
    assert torch.equal(removed.sequences, reference.sequences)
    torch.testing.assert_close(removed.sequences_scores, reference.sequences_scores, atol=ATOL, rtol=0)
    # the cache was pruned and followed the beams (one row per beam)
    assert cache_lengths(removed.past_key_values) == expected_lengths(PROMPTS, 5)
    assert removed.past_key_values.layers[-1].keys.shape[0] == 3 * len(PROMPTS)


def test_generate_up_to_the_context_limit_matches_masked_reference() -> None:
    model = pruned()
    prompts = [PROMPTS[0], PROMPTS[2]]
    x = inputs(prompts)
    limit = model.get_base_model().config.text_config.max_position_embeddings  # 512
    new = limit - x["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        removed = model.generate(**x, **GREEDY, **kwargs)
        with masked(model):
            reference = model.generate(**x, **GREEDY, **kwargs)
    assert removed.sequences.shape == (2, limit)
    assert torch.equal(removed.sequences, reference.sequences)
    for step, (a, b) in enumerate(zip(removed.logits, reference.logits)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"step {step}")
    assert cache_lengths(removed.past_key_values) == expected_lengths(prompts, new)


def test_use_cache_false_matches_masked_reference_and_cached_generation() -> None:
    model, x = pruned(), inputs()
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        uncached = model.generate(**x, **GREEDY, **kwargs, use_cache=False)
        cached = model.generate(**x, **GREEDY, **kwargs)
        with masked(model):
            reference = model.generate(**x, **GREEDY, **kwargs, use_cache=False)
    assert torch.equal(uncached.sequences, reference.sequences)
    assert torch.equal(uncached.sequences, cached.sequences)
    for a, b in zip(uncached.logits, reference.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for a, b in zip(uncached.logits, cached.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# -- stopping ----------------------------------------------------------------------------------------------


class StopOnToken(StoppingCriteria):
    """Stop each sample once it generated `token`."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return input_ids[:, -1] == self.token


def stop_strings_tokenizer():
    """tiny_processor's tokenizer plus a token for transformers' probe string "abcdef", which
    `StopStringCriteria` needs to map tokens to text (a word-level vocab has no such token)."""
    tokenizer = tiny_processor().tokenizer
    tokenizer.add_tokens(["abcdef"])
    return tokenizer


@pytest.mark.parametrize("how", ["eos_token_id", "stopping_criteria", "stop_strings"])
def test_stopping_early_matches_masked_reference(how: str) -> None:
    model, x = pruned(), inputs()
    length = x["input_ids"].shape[1]
    with torch.no_grad():
        full = model.generate(**x, **GREEDY, max_new_tokens=8, min_new_tokens=8)[:, length:]
    stop = int(full[0, 2])  # sample 0 stops at its third new token at the latest
    ends = [row.index(stop) + 1 if stop in row else len(row) for row in full.tolist()]
    expected = [row[:end] + [PAD] * (len(row) - end) for row, end in zip(full.tolist(), ends)]
    if how == "eos_token_id":
        kwargs = dict(eos_token_id=stop, pad_token_id=PAD)
    elif how == "stopping_criteria":
        kwargs = dict(stopping_criteria=StoppingCriteriaList([StopOnToken(stop)]), pad_token_id=PAD)
    else:
        tokenizer = stop_strings_tokenizer()
        kwargs = dict(
            stop_strings=[tokenizer.convert_ids_to_tokens(stop)], tokenizer=tokenizer, pad_token_id=PAD
        )
    with torch.no_grad():
        got = model.generate(**x, **GREEDY, max_new_tokens=8, **kwargs)[:, length:]
        with masked(model):
            reference = model.generate(**x, **GREEDY, max_new_tokens=8, **kwargs)[:, length:]
    assert torch.equal(got, reference)
    assert min(ends) <= 3 and got.shape[1] == max(ends)  # stops when every sample is done
    assert got.tolist() == [row[: max(ends)] for row in expected]


# -- pipeline ----------------------------------------------------------------------------------------------


def chat(seed: int, question: str) -> list[dict]:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]


@pytest.mark.parametrize("wrap", ["peft_model", "base_model"])
def test_image_text_to_text_pipeline_prunes(wrap: str) -> None:
    model = pruned()
    processor = tiny_processor()
    messages = chat(0, "w5 w6 w7 w8")
    # ASSISTANT: (122) is what the random tiny model repeats; suppress it so the answers say something
    generate_kwargs = dict(do_sample=False, suppress_tokens=[IMAGE_TOKEN, 122])
    encoded = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    length = encoded["input_ids"].shape[1]
    with torch.no_grad():
        direct = model.generate(**encoded, max_new_tokens=6, **generate_kwargs)[0, length:]
        with masked(model):
            reference = model.generate(**encoded, max_new_tokens=6, **generate_kwargs)[0, length:]
    assert torch.equal(direct, reference)
    expected = processor.decode(direct, skip_special_tokens=True).strip()
    seen: list[int] = []  # sequence length entering the last decoder layer, per forward
    last = model.get_base_model().model.language_model.layers[-1]
    handle = last.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape[1]), with_kwargs=True)
    try:
        target = model if wrap == "peft_model" else model.get_base_model()
        pipe = pipeline("image-text-to-text", model=target, processor=processor)
        out = pipe(text=messages, max_new_tokens=6, return_full_text=False, generate_kwargs=generate_kwargs)
    finally:
        handle.remove()
    assert out[0]["generated_text"].strip() == expected and expected
    # prefill: 16 vision tokens -> 4 kept before the last layer, every text token kept
    assert seen[0] == length - 16 + 4
    kept = [int(keep_counts(torch.tensor([16]), r)) for r in schedule()[1]]  # [10, 7, 4]
    assert lvpruning_tuner(model).pruning_stats.keep_ratios == [k / 16 for k in kept]


# -- state across calls, other inputs, dtypes ------------------------------------------------------------


def test_second_generate_reuses_nothing_stale() -> None:
    first, second = inputs(PROMPTS[:2], seed=0), inputs([PROMPTS[2], prompt_ids(1, 4, 2, 9)], seed=5)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        fresh = build().generate(**second, **GREEDY, **kwargs)
        model = build()
        model.generate(**first, num_beams=3, max_new_tokens=4, do_sample=False)  # beam search first
        model.generate(**first, **GREEDY, max_new_tokens=6)
        again = model.generate(**second, **GREEDY, **kwargs)
    assert torch.equal(again.sequences, fresh.sequences)
    for a, b in zip(again.logits, fresh.logits):
        assert torch.equal(a, b)
    assert cache_lengths(again.past_key_values) == expected_lengths([PROMPTS[2], prompt_ids(1, 4, 2, 9)], 5)


def test_generate_from_inputs_embeds_prunes_like_input_ids() -> None:
    model, x = pruned(), inputs()
    length = x["input_ids"].shape[1]
    embeds = model.get_base_model().get_input_embeddings()(x["input_ids"])
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        from_ids = model.generate(**x, **GREEDY, **kwargs)
        from_embeds = model.generate(
            inputs_embeds=embeds,
            attention_mask=x["attention_mask"],
            pixel_values=x["pixel_values"],
            **GREEDY,
            **kwargs,
        )
    assert torch.equal(from_embeds.sequences, from_ids.sequences[:, length:])  # only the new tokens
    for a, b in zip(from_embeds.logits, from_ids.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert cache_lengths(from_embeds.past_key_values) == expected_lengths(PROMPTS, 5)


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """First column where two (B, T) token tensors differ, or None."""
    diff = (a != b).any(dim=0).nonzero()
    return int(diff[0]) if len(diff) else None


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bfloat16_matches_masked_reference(attn: str) -> None:
    model, x = pruned(attn, dtype=torch.bfloat16), inputs(dtype=torch.bfloat16)
    length = x["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        removed = model.generate(**x, **GREEDY, **kwargs)
        with masked(model):
            reference = model.generate(**x, **GREEDY, **kwargs)
    assert removed.past_key_values.layers[-1].keys.dtype == torch.bfloat16
    # bf16 rounding differs between the two paths (sdpa), so tokens may part at a near-tie only
    split = first_divergence(removed.sequences[:, length:], reference.sequences[:, length:])
    for step in range(8 if split is None else split + 1):
        torch.testing.assert_close(removed.logits[step], reference.logits[step], atol=1e-2, rtol=0)
    if split is not None:
        top2 = removed.logits[split].float().topk(2).values
        assert float((top2[:, 0] - top2[:, 1]).min()) < 1e-2, f"tokens parted at step {split} without a tie"
    if attn == "eager":
        assert split is None
    # merging hands each dropped token to its most similar kept token, a discrete choice that bf16
    # rounding flips on this random model's near-identical vision tokens: the precision check compares
    # bf16 with float32 without merging (every other step is the same)
    with torch.no_grad(), without_merging(model), without_merging(pruned(attn)):
        half = model(**x).logits[:, -1].float()
        full_precision = pruned(attn)(**inputs()).logits[:, -1]
    torch.testing.assert_close(half, full_precision, atol=2e-2, rtol=0)
    assert cache_lengths(removed.past_key_values) == expected_lengths(PROMPTS, 8)


# -- user-provided caches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["past_key_values", "cache"])
def test_user_created_dynamic_cache(argument: str) -> None:
    model, x = pruned(), inputs()
    config = model.get_base_model().config.text_config
    cache = DynamicCache(config=config)
    with torch.no_grad():
        default = model.generate(**x, **GREEDY, max_new_tokens=5, min_new_tokens=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers 5.24 deprecates `past_key_values=`
            out = model.generate(
                **x,
                **GREEDY,
                max_new_tokens=5,
                min_new_tokens=5,
                return_dict_in_generate=True,
                **{argument: cache},
            )
    assert out.past_key_values is cache
    assert torch.equal(out.sequences, default)
    assert cache_lengths(cache) == expected_lengths(PROMPTS, 5)


def test_text_follow_up_continues_a_pruned_cache_like_the_masked_reference() -> None:
    model, x = pruned(), inputs()
    config = model.get_base_model().config.text_config
    question = torch.tensor([[5, 6, 7]] * len(PROMPTS))
    results = []
    with torch.no_grad():
        for mode in ("removed", "masked"):
            cache = DynamicCache(config=config)
            with masked(model) if mode == "masked" else contextlib.nullcontext():
                turn = model.generate(**x, **GREEDY, max_new_tokens=4, min_new_tokens=4, cache=cache)
                follow = torch.cat([turn, question], dim=1)
                new = follow.shape[1] - x["attention_mask"].shape[1]  # 4 answer + 3 question tokens
                mask = torch.cat([x["attention_mask"], torch.ones(len(PROMPTS), new, dtype=torch.long)], 1)
                results.append(
                    model.generate(
                        input_ids=follow,
                        attention_mask=mask,
                        cache=cache,
                        **GREEDY,
                        max_new_tokens=4,
                        min_new_tokens=4,
                        return_dict_in_generate=True,
                        output_logits=True,
                    )
                )
    removed, reference = results
    assert torch.equal(removed.sequences, reference.sequences)
    for a, b in zip(removed.logits, reference.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # still pruned: 4 + 3 + 4 - 1 tokens more than the prefill
    assert cache_lengths(removed.past_key_values) == [n + 10 for n in expected_lengths(PROMPTS, 1)]


def test_new_image_into_a_pruned_cache_is_refused_clearly() -> None:
    model, x = pruned(), inputs([PROMPTS[0]])
    cache = DynamicCache(config=model.get_base_model().config.text_config)
    with torch.no_grad():
        turn = model.generate(**x, **GREEDY, max_new_tokens=3, cache=cache)
        follow = torch.cat([turn, torch.tensor([prompt_ids(1, 0, 2, 5)])], dim=1)
        with pytest.raises(NotImplementedError, match=r"new generate\(\) call"):
            model.generate(
                input_ids=follow,
                attention_mask=torch.ones_like(follow),
                pixel_values=torch.randn(1, 3, 32, 32),
                cache=cache,
                **GREEDY,
                max_new_tokens=3,
            )


def test_image_after_a_cached_text_prefix_runs_unpruned_with_a_warning() -> None:
    """A prefix cache filled by a text-only forward holds no pruning state: the image is not pruned."""
    model, x = pruned(), inputs([PROMPTS[0]])
    config = model.get_base_model().config.text_config
    prefix = x["input_ids"][:, :3]
    base = tiny_llava()
    with torch.no_grad():
        cache = DynamicCache(config=config)
        model(input_ids=prefix, cache=cache, use_cache=True)
        with pytest.warns(UserWarning, match="without pruning"):
            out = model.generate(**x, **GREEDY, max_new_tokens=4, cache=cache)
        base_cache = DynamicCache(config=config)
        base(input_ids=prefix, cache=base_cache, use_cache=True)
        expected = base.generate(**x, **GREEDY, max_new_tokens=4, cache=base_cache)
    assert torch.equal(out, expected)
    assert len(set(cache_lengths(cache))) == 1, "nothing was pruned"


# -- adapter switching -------------------------------------------------------------------------------------


def test_generate_inside_and_after_disable_adapter() -> None:
    model, x = pruned(), inputs()
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        before = model.generate(**x, **GREEDY, **kwargs)
        with model.disable_adapter():
            disabled = model.generate(**x, **GREEDY, **kwargs)
        after = model.generate(**x, **GREEDY, **kwargs)
        # frozen like PEFT leaves it (a trainable lm_head rounds the logits_to_keep=1 slice differently)
        base = tiny_llava().requires_grad_(False).generate(**x, **GREEDY, **kwargs)
    assert torch.equal(disabled.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(disabled.logits, base.logits))
    assert len(set(cache_lengths(disabled.past_key_values))) == 1, "disabled: nothing pruned"
    assert torch.equal(after.sequences, before.sequences)
    assert all(torch.equal(a, b) for a, b in zip(after.logits, before.logits))
    assert cache_lengths(after.past_key_values) == expected_lengths(PROMPTS, 5)
    assert not all(torch.equal(a, b) for a, b in zip(before.logits, base.logits)), "pruning had no effect"


# -- once bugs, now fixed: assisted decoding crops the cache; a generated image token


@pytest.mark.parametrize("how", ["prompt_lookup", "assistant_model"])
def test_assisted_decoding_works_or_is_refused_clearly(how: str) -> None:
    model, x = pruned(), inputs([prompt_ids(1, 2, 4, 2)], seed=2)  # a prompt where a candidate is rejected
    kwargs = (
        dict(prompt_lookup_num_tokens=3)
        if how == "prompt_lookup"
        else dict(assistant_model=tiny_llava(seed=1))
    )
    with torch.no_grad():
        expected = model.generate(**x, **GREEDY, max_new_tokens=15)
        with model.disable_adapter():  # the base model supports it: lossless, same tokens as greedy
            base = model.generate(**x, **GREEDY, max_new_tokens=15)
            assert torch.equal(model.generate(**x, **GREEDY, max_new_tokens=15, **kwargs), base)
        try:
            got = model.generate(**x, **GREEDY, max_new_tokens=15, **kwargs)
        except (NotImplementedError, ValueError) as error:
            assert "LVPruning" in str(error)
        else:
            assert torch.equal(got, expected)


class ForceToken(LogitsProcessor):
    """Force `token` as the next token when the sequence has `length` tokens."""

    def __init__(self, length: int, token: int) -> None:
        self.length, self.token = length, token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.length:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


def test_generated_image_token_does_not_crash() -> None:
    x = inputs()
    length = x["input_ids"].shape[1]
    force = dict(
        logits_processor=LogitsProcessorList([ForceToken(length, IMAGE_TOKEN)]),
        do_sample=False,
        max_new_tokens=4,
        min_new_tokens=4,
    )
    with torch.no_grad():
        base = tiny_llava().generate(**x, **force)
        assert (base[:, length] == IMAGE_TOKEN).all()
        assert torch.equal(pruned(keep=1.0).generate(**x, **force), base)
        model = pruned()
        removed = model.generate(**x, **force)
        with masked(model):
            reference = model.generate(**x, **force)
    assert torch.equal(removed, reference)
