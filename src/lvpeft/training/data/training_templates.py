"""The Jinja training templates lvpeft ships, one per conversation format (chosen by
:func:`lvpeft.training.data.chat_templates.training_chat_template`).

Each renders a conversation exactly as its public checkpoint's own template does, with every assistant answer
and its end-of-turn token inside ``{% generation %}`` ... ``{% endgeneration %}`` (what TRL's
``assistant_only_loss`` trains on). Where the public template leaves the BOS to the tokenizer (LLaVA-1.5,
LLaVA-NeXT), the training template writes ``bos_token`` itself, because TRL tokenizes rendered
conversations with ``add_special_tokens=False``. The tests hold the public templates and compare.
"""

from __future__ import annotations

__all__ = [
    "GEMMA3_TRAINING_CHAT_TEMPLATE",
    "IDEFICS3_TRAINING_CHAT_TEMPLATE",
    "LLAVA_NEXT_TRAINING_CHAT_TEMPLATE",
    "LLAVA_ONEVISION_TRAINING_CHAT_TEMPLATE",
    "LLAVA_TRAINING_CHAT_TEMPLATE",
    "QWEN2_VL_TRAINING_CHAT_TEMPLATE",
    "QWEN3_VL_TRAINING_CHAT_TEMPLATE",
    "SMOLVLM_TRAINING_CHAT_TEMPLATE",
]

LLAVA_TRAINING_CHAT_TEMPLATE: str = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' and message['content'] is string -%}"
    "{{- 'USER: ' + text + ' ' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}{%- set ns = namespace(seen_text=false) -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' and ns.seen_text -%}{{- '\\n<image>' -}}"
    "{%- elif item['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{%- if ns.seen_text -%}{{- ' ' -}}{%- endif -%}{{- item['text'] -}}{%- set ns.seen_text = true -%}"
    "{%- endif -%}"
    "{%- endfor -%}{{- ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}{%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
"""LLaVA-1.5 (``llava``, ``vipllava``): ``<s>USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: ...``.

A user turn's blocks keep their order (an image before any text as ``<image>\\n``, one after text as
``\\n<image>``, so ``{question}\\n<image>`` rows keep the question first; text blocks joined by spaces).
Every answer and its ``eos_token`` are marked. It writes ``bos_token`` (TRL tokenizes with
``add_special_tokens=False``), so set it on a copy of the processor used for training, or write it to a
``.jinja`` file and pass ``--chat_template_path``: inference prompts rendered with it would get a second BOS.
"""

LLAVA_NEXT_TRAINING_CHAT_TEMPLATE: str = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' -}}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- content['text'] -}}{%- endfor -%}"
    "{{- ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- ' ' + message['content'][0]['text'] + eos_token -}}{%- endgeneration -%}"
    "{{- ' ' -}}"
    "{%- else -%}{{- raise_exception('Only user and assistant roles are supported!') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
"""LLaVA-NeXT, Mistral style (``llava_next``; llava-hf/llava-v1.6-mistral-7b-hf):
``<s>[INST] <image>\\n{question} [/INST] {answer}</s> [INST] ...`` (images first, then the text). The
public template has no generation prompt: a prompt ends with `` [/INST]``."""

_QWEN_USER_CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)
_QWEN_ANSWER = (
    "{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'text' -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}{{- '\\n' -}}"
)
_COUNTERS = "{%- set image_count = namespace(value=0) -%}{%- set video_count = namespace(value=0) -%}"

QWEN2_VL_TRAINING_CHAT_TEMPLATE: str = (
    _COUNTERS + "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    + _QWEN_ANSWER
    + "{%- else -%}"
    + _QWEN_USER_CONTENT
    + "{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen2-VL and Qwen2.5-VL (``qwen2_vl``, ``qwen2_5_vl``; Qwen/Qwen2.5-VL-7B-Instruct, whose template
Qwen2-VL shares): ChatML with the default system prompt ``You are a helpful assistant.``, an image as
``<|vision_start|><|image_pad|><|vision_end|>``; each answer and its ``<|im_end|>`` are marked."""

QWEN3_VL_TRAINING_CHAT_TEMPLATE: str = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] -}}"
    "{%- else -%}{%- for content in messages[0]['content'] -%}"
    "{%- if 'text' in content -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}" + _COUNTERS + "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|im_start|>user\\n' -}}" + _QWEN_USER_CONTENT + "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}" + _QWEN_ANSWER + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen3-VL (``qwen3_vl``, ``qwen3_vl_moe``; the Qwen3-VL Instruct template): ChatML as Qwen2-VL's but
without a default system prompt (tools and tool turns, which LLaVA-format data has none of, are not
rendered)."""

_GEMMA_CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)

GEMMA3_TRAINING_CHAT_TEMPLATE: str = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<start_of_turn>model\\n' + (first_user_prefix if loop.first else '') -}}"
    "{%- generation -%}" + _GEMMA_CONTENT + "{{- '<end_of_turn>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<start_of_turn>' + message['role'] + '\\n' + (first_user_prefix if loop.first else '') -}}"
    + _GEMMA_CONTENT
    + "{{- '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)
"""Gemma 3 (``gemma3``; google/gemma-3-4b-it): ``<bos><start_of_turn>user\\n<start_of_image>{question}
<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n``; a system message prefixes the first user
turn; each answer and its ``<end_of_turn>`` are marked."""


def _idefics3_template(start: str) -> str:
    """The Idefics3 / SmolVLM format, opened by ``start`` (the only difference between the two)."""
    lines = (
        "{%- for line in message['content'] -%}"
        "{%- if line['type'] == 'text' -%}{{- line['text'] -}}"
        "{%- elif line['type'] == 'image' -%}{{- '<image>' -}}{%- endif -%}"
        "{%- endfor -%}"
    )
    return (
        "{{- '" + start + "' -}}"
        "{%- for message in messages -%}"
        "{{- message['role'] | capitalize -}}"
        "{%- set space = '' if message['content'][0]['type'] == 'image' else ' ' -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- ':' -}}{%- generation -%}{{- space -}}"
        + lines
        + "{{- '<end_of_utterance>' -}}{%- endgeneration -%}"
        "{%- else -%}{{- ':' + space -}}" + lines + "{{- '<end_of_utterance>' -}}"
        "{%- endif -%}"
        "{{- '\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    )


IDEFICS3_TRAINING_CHAT_TEMPLATE: str = _idefics3_template("<|begin_of_text|>")
"""Idefics3 (``idefics3``; HuggingFaceM4/Idefics3-8B-Llama3): ``<|begin_of_text|>User:<image>{question}
<end_of_utterance>\\nAssistant: {answer}<end_of_utterance>\\n``; each answer (with the space after
``Assistant:``) and its ``<end_of_utterance>`` are marked."""

SMOLVLM_TRAINING_CHAT_TEMPLATE: str = _idefics3_template("<|im_start|>")
"""SmolVLM and SmolVLM2 (``idefics3`` for SmolVLM, ``smolvlm`` for SmolVLM2; HuggingFaceTB/SmolVLM-Instruct):
Idefics3's format opened by ``<|im_start|>``."""

LLAVA_ONEVISION_TRAINING_CHAT_TEMPLATE: str = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') -%}"
    "{{- '<video>\\n' -}}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- content['text'] -}}{%- endfor -%}{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- content['text'] -}}{%- endfor -%}{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""LLaVA-OneVision (``llava_onevision``; llava-hf/llava-onevision-qwen2-7b-ov-hf): Qwen2 ChatML with
``<image>\\n`` before the text, no system prompt; the llava-hf template marks the answers but not their
``<|im_end|>``, this one marks both (it is used only for a processor whose template has no markers)."""
