"""Training-free baseline scorers share the pruning machinery: only the scorer differs."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import IMAGE_TOKEN, batch, prompt_ids, tiny_llava
from lvpeft import LVPruningConfig, get_lvpruning_model, lvpruning_tuner
from lvpeft.pruning.scorers import BASELINES, FastVScorer, ScoringContext, UniformScorer

PROMPTS = [prompt_ids(1, 3, 5, 0), prompt_ids(0, 2, 9, 1), prompt_ids(2, 1, 4, 2)]


def pruned(attn: str = "eager"):
    return get_lvpruning_model(tiny_llava("llama", attn), LVPruningConfig(keep=0.25)).eval()


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_keep_the_budget_and_match_their_masked_reference(name: str) -> None:
    model, inputs = pruned(), batch(PROMPTS)
    tuner = lvpruning_tuner(model)
    with torch.no_grad():
        with tuner.use_scorers([BASELINES[name]() for _ in range(3)]):
            removed = model(**inputs).logits
            ratios = tuner.pruning_stats.keep_ratios
        with tuner.use_scorers([BASELINES[name]() for _ in range(3)]), tuner.masked_inference():
            masked = model(**inputs).logits
    # per sample round(0.65 n), round(0.45 n), round(0.25 n) of n = 16, 0, 32 vision tokens; mean of 2
    assert ratios == pytest.approx([(10 / 16 + 21 / 32) / 2, (7 / 16 + 14 / 32) / 2, (4 / 16 + 8 / 32) / 2])
    text = (inputs["input_ids"] != IMAGE_TOKEN) & inputs["attention_mask"].bool()
    torch.testing.assert_close(removed[text], masked[text], atol=1e-5, rtol=0)


def test_uniform_scorer_spreads_the_kept_tokens() -> None:
    candidates = torch.zeros(1, 20, dtype=torch.bool)
    candidates[0, 2:18] = True  # 16 vision tokens
    context = ScoringContext(
        hidden=torch.zeros(1, 20, 4),
        candidates=candidates,
        language=~candidates,
        valid=torch.ones(1, 20, dtype=torch.bool),
        positions=torch.arange(20)[None],
        keep=torch.tensor([4]),
        layer=torch.nn.Identity(),
    )
    scores = UniformScorer()(context)[0, :, 0].masked_fill(~candidates[0], float("-inf"))
    kept = sorted(torch.topk(scores, 4).indices.tolist())
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert gaps == [4, 4, 4], kept


def test_fastv_scorer_equals_the_models_own_attention_of_the_last_token() -> None:
    base = tiny_llava("llama", "eager")
    inputs = batch([PROMPTS[0]])
    with torch.no_grad():
        attentions = base(**inputs, output_attentions=True).attentions
    expected = attentions[1][0, :, -1, :].mean(0)  # layer 1 (the first module's), heads averaged, last query
    model = get_lvpruning_model(base, LVPruningConfig(keep=0.25))
    seen: list[torch.Tensor] = []

    class Recording(FastVScorer):
        def __call__(self, context: ScoringContext) -> torch.Tensor:
            logits = super().__call__(context)
            seen.append(logits[..., 0])
            return logits

    with torch.no_grad(), lvpruning_tuner(model).use_scorers([Recording(), FastVScorer(), FastVScorer()]):
        model(**inputs)
    torch.testing.assert_close(seen[0][0], expected, atol=1e-5, rtol=1e-4)
