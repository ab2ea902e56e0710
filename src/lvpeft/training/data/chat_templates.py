"""The one helper that picks the chat template to train with, for `lvpeft train` and the demo alike.

TRL's ``assistant_only_loss`` trains on the tokens a chat template wraps in ``{% generation %}`` ...
``{% endgeneration %}`` and on nothing else. Most public VLM templates have no such markers (Qwen2-VL,
Qwen2.5-VL and Qwen3-VL, Gemma 3, Idefics3, SmolVLM, LLaVA-NeXT), so lvpeft ships a training template per
family (:mod:`lvpeft.training.data.training_templates`), each rendering a conversation as the public
checkpoint's own template does, so that a model is trained on the prompts it is asked at inference. Two
deliberate differences, where they apply:

* LLaVA-1.5 and LLaVA-NeXT leave the BOS to the tokenizer (``processor(text=...)`` prepends it); TRL
  tokenizes rendered conversations with ``add_special_tokens=False``, so their training templates write
  ``bos_token`` themselves: the tokens are those of inference, the text has ``<s>`` in front (for a
  tokenizer that prepends no BOS, the helper drops it from the template).
* LLaVA-1.5: an answer ends with ``</s>``, as in LLaVA's own training (llava-hf's template writes a space and
  never trains the model to stop). A first turn's prompt renders exactly as llava-hf's.

:func:`training_chat_template` keeps a template that has markers, picks the family's otherwise (checking
that it renders the processor's prompts), and raises :class:`ChatTemplateError` saying what to pass when
neither works.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from .training_templates import (
    GEMMA3_TRAINING_CHAT_TEMPLATE,
    IDEFICS3_TRAINING_CHAT_TEMPLATE,
    LLAVA_NEXT_TRAINING_CHAT_TEMPLATE,
    LLAVA_ONEVISION_TRAINING_CHAT_TEMPLATE,
    LLAVA_TRAINING_CHAT_TEMPLATE,
    QWEN2_VL_TRAINING_CHAT_TEMPLATE,
    QWEN3_VL_TRAINING_CHAT_TEMPLATE,
    SMOLVLM_TRAINING_CHAT_TEMPLATE,
)

__all__ = [
    "GENERATION_MARKER",
    "TRAINING_CHAT_TEMPLATES",
    "WHAT_TO_PASS",
    "ChatTemplateError",
    "TrainingChatTemplate",
    "has_generation_markers",
    "training_chat_template",
]

logger = logging.getLogger(__name__)

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
"""A `{% generation %}` tag, which marks the assistant answers for `assistant_only_loss` (not the word
in `add_generation_prompt`)."""


@dataclass(frozen=True)
class TrainingChatTemplate:
    """One training template lvpeft ships.

    Attributes:
        name: the format's name in messages (``"Qwen2-VL"``).
        template: the Jinja template, answers and their end-of-turn token inside ``{% generation %}``.
        reference: the public checkpoint whose template it renders like.
        writes_bos: it starts with ``{{- bos_token -}}``, which the public template leaves to the tokenizer
            (dropped for a tokenizer that prepends no BOS, so that training sees the tokens of inference).
        same_history: earlier turns render as the public template renders them too (LLaVA-1.5: no, an
            answer ends with ``</s>`` where llava-hf's template writes a space).
    """

    name: str
    template: str
    reference: str
    writes_bos: bool = False
    same_history: bool = True


_LLAVA = TrainingChatTemplate(
    "LLaVA-1.5", LLAVA_TRAINING_CHAT_TEMPLATE, "llava-hf/llava-1.5-7b-hf", writes_bos=True, same_history=False
)
_LLAVA_NEXT = TrainingChatTemplate(
    "LLaVA-NeXT (Mistral)",
    LLAVA_NEXT_TRAINING_CHAT_TEMPLATE,
    "llava-hf/llava-v1.6-mistral-7b-hf",
    writes_bos=True,
)
_ONEVISION = TrainingChatTemplate(
    "LLaVA-OneVision", LLAVA_ONEVISION_TRAINING_CHAT_TEMPLATE, "llava-hf/llava-onevision-qwen2-7b-ov-hf"
)
_QWEN2_VL = TrainingChatTemplate("Qwen2-VL", QWEN2_VL_TRAINING_CHAT_TEMPLATE, "Qwen/Qwen2.5-VL-7B-Instruct")
_QWEN3_VL = TrainingChatTemplate("Qwen3-VL", QWEN3_VL_TRAINING_CHAT_TEMPLATE, "Qwen/Qwen3-VL-8B-Instruct")
_GEMMA3 = TrainingChatTemplate("Gemma 3", GEMMA3_TRAINING_CHAT_TEMPLATE, "google/gemma-3-4b-it")
_IDEFICS3 = TrainingChatTemplate(
    "Idefics3", IDEFICS3_TRAINING_CHAT_TEMPLATE, "HuggingFaceM4/Idefics3-8B-Llama3"
)
_SMOLVLM = TrainingChatTemplate("SmolVLM", SMOLVLM_TRAINING_CHAT_TEMPLATE, "HuggingFaceTB/SmolVLM-Instruct")

TRAINING_CHAT_TEMPLATES: dict[str, tuple[TrainingChatTemplate, ...]] = {
    "llava": (_LLAVA,),
    "vipllava": (_LLAVA,),
    "llava_next": (_LLAVA_NEXT, _LLAVA),
    "llava_onevision": (_ONEVISION,),
    "qwen2_vl": (_QWEN2_VL,),
    "qwen2_5_vl": (_QWEN2_VL,),
    "qwen3_vl": (_QWEN3_VL,),
    "qwen3_vl_moe": (_QWEN3_VL,),
    "gemma3": (_GEMMA3,),
    "idefics3": (_IDEFICS3, _SMOLVLM),
    "smolvlm": (_SMOLVLM, _IDEFICS3),
}
"""The shipped training templates by ``config.model_type``: the first whose prompts render like the
processor's own template is used (the first of all when the processor has none)."""

WHAT_TO_PASS = (
    "Pass `--chat_template_path FILE.jinja` to `lvpeft train` (in Python: "
    "`SFTConfig(chat_template_path=...)`, or set `processor.chat_template`): the model's own chat template "
    "with each assistant answer and its end-of-turn token wrapped in {% generation %}...{% endgeneration %}."
)
"""The end of every :class:`ChatTemplateError`: what to pass instead."""

_BOS = "{{- bos_token -}}"  # how the templates that write the BOS (writes_bos) start


def _probes(image_first: bool) -> list[list[dict[str, Any]]]:
    """A first turn with an image (before or after the question), and a second turn after an answer."""
    blocks = [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]
    first = [{"role": "user", "content": blocks if image_first else blocks[::-1]}]
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A red cube."}]}
    return [
        first,
        [*first, answer, {"role": "user", "content": [{"type": "text", "text": "And behind it?"}]}],
    ]


class ChatTemplateError(ValueError):
    """No template to train with: the processor's has no ``{% generation %}`` markers and lvpeft ships none
    for the family, or none that renders the processor's prompts."""


def has_generation_markers(template: str | dict[str, str] | None) -> bool:
    """Whether a chat template marks the assistant answers with ``{% generation %}`` (a dict of named
    templates: its ``"default"``). The word in ``add_generation_prompt`` does not count."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and GENERATION_MARKER.search(template) is not None


def training_chat_template(processor: Any, model: Any, name: str | None = None) -> str:
    """The chat template to train with under ``assistant_only_loss``, for ``lvpeft train`` and the demo.

    1. The processor's own template, if it has ``{% generation %}`` markers.
    2. Else lvpeft's training template for the model's family (:data:`TRAINING_CHAT_TEMPLATES`, by
       ``config.model_type``): the first that renders a first-turn prompt and (where the history renders
       alike) a second-turn prompt exactly as the processor's own template does, with
       ``add_generation_prompt=True``, the image before the question or after it (a template that puts the
       question first is checked on question-first turns). A processor without a template gets the
       family's first (warned).
    3. Else :class:`ChatTemplateError`, saying what to pass.

    Args:
        processor: the processor (or tokenizer) as loaded; read, never changed.
        model: the model, its config, or its ``model_type``.
        name: what to call the model in messages (e.g. its path); defaults to the model type.

    Returns:
        The template; set it on the processor used for training (a copy, where the original renders
        inference prompts: a template that writes ``bos_token`` would give them a second BOS).
    """
    model_type = _model_type(model)
    who = name or f"the {model_type!r} model"
    own = getattr(processor, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    if has_generation_markers(own):
        logger.info("%s's chat template marks the answers ({%% generation %%}); training with it.", who)
        return own
    candidates = TRAINING_CHAT_TEMPLATES.get(model_type, ())
    if not candidates:
        known = ", ".join(sorted(TRAINING_CHAT_TEMPLATES))
        raise ChatTemplateError(
            f"{who}'s chat template has no {{% generation %}} markers, which `assistant_only_loss` needs to "
            f"train on the answers only, and lvpeft ships no training template for model type {model_type!r} "
            f"(it has: {known}). {WHAT_TO_PASS}"
        )
    adds_bos = _tokenizer_adds_bos(processor)
    if not own:
        chosen = candidates[0]
        logger.warning(
            "%s's processor has no chat template; training with lvpeft's %s template (%s's format). %s",
            who,
            chosen.name,
            chosen.reference,
            "If the model expects another format, pass --chat_template_path.",
        )
        return _for_tokenizer(chosen, adds_bos)
    mismatches = []
    for candidate in candidates:
        template = _for_tokenizer(candidate, adds_bos)
        differences = _prompt_differences(processor, candidate, template, own)
        if not differences:
            logger.info(
                "%s's chat template has no {%% generation %%} markers; training with lvpeft's %s template, "
                "which renders the same prompts (checked) and marks every answer and its end-of-turn token.",
                who,
                candidate.name,
            )
            return template
        mismatches.append(f"lvpeft's {candidate.name} template renders {differences}")
    raise ChatTemplateError(
        f"{who}'s chat template has no {{% generation %}} markers, and lvpeft's training template(s) for "
        f"model type {model_type!r} render its prompts differently, so training with them would not match "
        "the prompts the model is asked at inference:\n  " + "\n  ".join(mismatches) + f"\n{WHAT_TO_PASS}"
    )


def _model_type(model: Any) -> str:
    if isinstance(model, str):
        return model
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise TypeError(f"training_chat_template needs a model, its config or its model_type, got {model!r}")
    return str(model_type)


def _tokenizer_adds_bos(processor: Any) -> bool:
    """Whether the tokenizer prepends its BOS to a text (as Llama's and Gemma's do at inference)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


def _for_tokenizer(candidate: TrainingChatTemplate, adds_bos: bool) -> str:
    """The candidate's template, without the BOS it writes when the tokenizer prepends none at inference."""
    if candidate.writes_bos and not adds_bos:
        return candidate.template.removeprefix(_BOS)
    return candidate.template


def _prompt_differences(
    processor: Any, candidate: TrainingChatTemplate, template: str, own: str
) -> str | None:
    """None when ``template`` (the candidate's) renders the probe prompts as ``own`` does, with the image
    before the question or with it after (as the data has it), except for a BOS it writes that the
    tokenizer prepends to ``own``'s prompts; else the first difference."""
    tokenizer = getattr(processor, "tokenizer", processor)
    bos = getattr(tokenizer, "bos_token", None)
    differences = []
    for image_first in (True, False):
        probes = _probes(image_first)
        for messages in probes if candidate.same_history else probes[:1]:
            ours = _render(processor, template, messages)
            try:
                theirs = _render(processor, own, messages)
            except Exception as error:  # the model's template may refuse the probe (roles, content types)
                differences.append(f"{ours!r}, where the model's template fails on it ({error})")
                break
            if template.startswith(_BOS) and bos and ours.startswith(bos) and not theirs.startswith(bos):
                ours = ours[len(bos) :]  # the tokenizer prepends it to the model's prompt
            if ours != theirs:
                differences.append(f"{ours!r} where the model's renders {theirs!r}")
                break
        else:
            return None
    return differences[0]


def _render(processor: Any, template: str, messages: list[dict[str, Any]]) -> str:
    return processor.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
