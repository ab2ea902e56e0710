"""The attention the scorers and the teacher read is the layer's own, in every family.

`layer_attention.attention_states` runs a decoder layer's own attention module up to its attention
function, so norms on queries and keys (Gemma 3, Qwen3), the family's scaling and M-RoPE are those of
the model. Referee: the eager model's own attention probabilities (`output_attentions=True`) of the
last prompt token at layer 1 (a full-attention layer in every tiny model).
"""

from __future__ import annotations

import pytest
import torch

from lvpeft.pruning.architecture import find_llava_parts
from lvpeft.pruning.layer_attention import attention_states
from lvpeft.pruning.scorers import ScoringContext, query_attention
from test_families import CASES, _inputs_copy, tiny_model

LAYER = 1


@pytest.mark.parametrize("family", list(CASES))
def test_query_attention_is_the_models_own(family: str) -> None:
    model = tiny_model(family, attn="eager")
    inputs = _inputs_copy(family, (0,))  # one unpadded row
    layers = find_llava_parts(model).layers
    seen: dict[str, object] = {}

    def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["rope"] = kwargs.get("position_embeddings")

    handle = layers[LAYER].register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        expected = model(**inputs, output_attentions=True).attentions[LAYER][0, :, -1].float().mean(0)
    handle.remove()
    hidden = seen["hidden"]
    length = hidden.shape[1]
    valid = torch.ones(1, length, dtype=torch.bool)
    context = ScoringContext(
        hidden=hidden,
        candidates=valid,
        language=valid,
        valid=valid,
        positions=torch.arange(length)[None],
        keep=torch.tensor([1]),
        layer=layers[LAYER],
        position_embeddings=seen["rope"],
    )
    with torch.no_grad():
        got = query_attention(context, torch.tensor([length - 1]), valid)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.config.get_text_config()._attn_implementation == "eager", "the probe left its mark"


def test_attention_states_refuses_a_layer_without_attention() -> None:
    with pytest.raises(TypeError, match=r"Linear has no `input_layernorm` and `self_attn`"):
        attention_states(torch.nn.Linear(4, 4), torch.zeros(1, 2, 4), None)
