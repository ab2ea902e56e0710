"""Load an LVPruning adapter and its base model in one call, checking everything first.

The adapter is validated before the (expensive) base model is loaded: its config must be an
LVPruning config with valid fields, and its weights must be a readable safetensors file. Pickle
files (`adapter_model.bin`) are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from huggingface_hub import hf_hub_download
from peft import PeftConfig, PeftModel
from safetensors import SafetensorError, safe_open
from torch import nn

from .config import LVPruningConfig
from .model import LVPruningPeftModel, lvpruning_tuner
from .registration import PEFT_TYPE

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"


def resolve_adapter_file(adapter_id: str, filename: str, **hub_kwargs: Any) -> str | None:
    """Local path of `filename` in a local adapter folder or a Hub repo; None if it does not exist."""
    if os.path.isdir(adapter_id):
        path = os.path.join(adapter_id, filename)
        return path if os.path.isfile(path) else None
    if adapter_id.startswith((".", "~")) or os.path.isabs(adapter_id) or adapter_id.count("/") > 1:
        raise FileNotFoundError(f"No adapter folder {adapter_id!r} (and it is not a Hub repo id).")
    try:
        return hf_hub_download(adapter_id, filename, **hub_kwargs)
    except Exception as error:
        if "404" in str(error) or "EntryNotFound" in type(error).__name__:
            return None
        raise


def load_adapter_config(adapter_id: str, **hub_kwargs: Any) -> LVPruningConfig:
    """Read and validate an LVPruning adapter config.

    Raises:
        FileNotFoundError: no adapter_config.json.
        ValueError: the file is not JSON, is not an LVPruning config, or a field is invalid.
    """
    path = resolve_adapter_file(adapter_id, CONFIG_NAME, **hub_kwargs)
    if path is None:
        raise FileNotFoundError(f"No {CONFIG_NAME} in {adapter_id!r}: is it an LVPruning adapter?")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-save the adapter.") from error
    if not isinstance(raw, dict) or raw.get("peft_type") != PEFT_TYPE.value:
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"{path} describes a {found!r} adapter, not an LVPruning ({PEFT_TYPE.value!r}) adapter. "
            "Load it with peft.PeftModel.from_pretrained instead."
        )
    config = PeftConfig.from_pretrained(os.path.dirname(path))
    if not isinstance(config, LVPruningConfig):
        raise ValueError(f"{path} did not load as an LVPruningConfig (got {type(config).__name__}).")
    return config


def check_adapter_weights(adapter_id: str, **hub_kwargs: Any) -> str:
    """Path of the adapter's safetensors file after checking that it is complete and readable.

    Raises:
        FileNotFoundError: there is no adapter_model.safetensors.
        ValueError: only a pickle file exists, or the safetensors file is truncated or corrupt.
    """
    path = resolve_adapter_file(adapter_id, WEIGHTS_NAME, **hub_kwargs)
    if path is None:
        if resolve_adapter_file(adapter_id, PICKLE_NAME, **hub_kwargs) is not None:
            raise ValueError(
                f"{adapter_id!r} holds only {PICKLE_NAME} (pickle), which lvpeft never loads. Re-save the "
                "adapter with save_pretrained(..., safe_serialization=True)."
            )
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {adapter_id!r}.")
    try:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}). It may be truncated or corrupt: "
            "download or save the adapter again."
        ) from error
    return path


@contextlib.contextmanager
def dispatch_kept(model: nn.Module) -> Iterator[None]:
    """Keep accelerate's dispatch of an offloaded base model while PEFT attaches an adapter to it.

    For a base whose `hf_device_map` holds "cpu" or "disk", `PeftModel.from_pretrained` removes
    accelerate's hooks and re-dispatches the model, rewriting its disk-offloaded weights under new names,
    which fails for LLaVA checkpoints (a KeyError in peft's `_update_offload`). LVPruning changes no base
    weight, so the existing dispatch stays valid: PEFT is shown the model without its device map (the
    decision modules still go to each decoder layer's execution device) and the map is put back after.
    """
    device_map = getattr(model, "hf_device_map", None)
    if not isinstance(device_map, dict) or not {"cpu", "disk"} & set(map(str, device_map.values())):
        yield
        return
    del model.hf_device_map
    try:
        yield
    finally:
        model.hf_device_map = device_map


def from_pretrained(
    adapter_id: str,
    *,
    keep: float | None = None,
    base_model: nn.Module | None = None,
    is_trainable: bool = False,
    adapter_name: str = "default",
    revision: str | None = None,
    token: str | bool | None = None,
    **base_kwargs: Any,
) -> PeftModel:
    """Load an LVPruning adapter and the base model named in its config.

    Args:
        adapter_id: a local folder or a Hub repo id holding adapter_config.json and
            adapter_model.safetensors.
        keep: a new final keep ratio to prune at (None: the adapter's own); see `set_keep`.
        base_model: an already loaded base model to attach to (skips loading one).
        is_trainable: load the decision modules trainable (to continue training).
        adapter_name: the name the adapter gets inside the model.
        revision, token: Hub options for the adapter (and the base model).
        **base_kwargs: passed to `AutoModelForImageTextToText.from_pretrained` for the base model
            (e.g. `torch_dtype`, `device_map`, `attn_implementation`).

    Returns:
        A `peft.PeftModel` whose `generate()` prunes.
    """
    hub_kwargs = {k: v for k, v in {"revision": revision, "token": token}.items() if v is not None}
    config = load_adapter_config(adapter_id, **hub_kwargs)
    check_adapter_weights(adapter_id, **hub_kwargs)
    if keep is not None:
        config.with_keep(keep)  # validates before the base model is loaded
    if base_model is None:
        if not config.base_model_name_or_path:
            raise ValueError(
                f"The adapter config of {adapter_id!r} names no base model (base_model_name_or_path); pass "
                "base_model=... explicitly."
            )
        from transformers import AutoModelForImageTextToText

        base_model = AutoModelForImageTextToText.from_pretrained(
            config.base_model_name_or_path, use_safetensors=True, **hub_kwargs, **base_kwargs
        )
    with dispatch_kept(base_model):
        model = LVPruningPeftModel.from_pretrained(
            base_model, adapter_id, adapter_name=adapter_name, is_trainable=is_trainable, **hub_kwargs
        )
    if keep is not None:
        lvpruning_tuner(model).set_keep(keep, adapter_name)
    return model
