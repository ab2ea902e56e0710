"""The model `lvpeft eval` runs: whatever the user names (an adapter, a base model, an object), as a
`PeftModel` with an LVPruning adapter, its processor, and a session that leaves the model as it was.

* an adapter folder or Hub id (holding `adapter_config.json`): `lvpeft.from_pretrained`, the base named by
  the adapter config, the base's processor; its learned modules are evaluated;
* a base model folder or Hub id: the base wrapped with `LVPruningConfig(keep=..., layers=...)`, so the
  training-free scorers run at the default positions (its untrained modules are not evaluated);
* a `PeftModel` with an LVPruning adapter: used as it is;
* a LLaVA-like model object: wrapped for the run and unwrapped (`unload()`, bit for bit) afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class EvalModel:
    """A model ready for evaluation.

    Attributes:
        model: the `PeftModel` (LVPruning adapter active).
        processor: its processor.
        name: the base model (path, Hub id, or class name); adapter: the adapter path or id, if any.
        has_adapter: whether the adapter holds trained modules (False when lvpeft wrapped a base).
        unwrap: unload the adapter when the session ends (lvpeft wrapped a model object it was given).
    """

    model: Any
    processor: Any
    name: str
    adapter: str | None
    has_adapter: bool
    unwrap: bool = False

    @property
    def tuner(self) -> Any:
        """The `LVPruningModel` inside `model` (`set_keep`, `use_scorers`, `active_config`)."""
        from ..tuner.model import lvpruning_tuner

        return lvpruning_tuner(self.model)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Eval mode within the block; afterwards the keep ratio, schedule and train mode are restored and
        a model lvpeft wrapped is unwrapped."""
        config = self.tuner.active_config
        saved = (config.keep, None if config.keep_schedule is None else list(config.keep_schedule))
        training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            config.keep, config.keep_schedule = saved
            self.model.train(training)
            if self.unwrap:
                self.model.unload()


def load_eval_model(
    model: str | os.PathLike[str] | nn.Module,
    processor: Any = None,
    *,
    keep: float,
    layers: Sequence[int] | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> EvalModel:
    """Resolve `model` (see the module docstring) into an `EvalModel`.

    Args:
        keep: the keep ratio of the config when lvpeft wraps a base model (changed per variant later).
        layers: module positions when lvpeft wraps a base model (default: `LVPruningConfig`'s).
        dtype, device, attn_implementation: how a model given by name is loaded (device default: cuda if
            available, else cpu). A model object stays where it is.

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder with neither an adapter nor a model.
        TypeError: a `PeftModel` of another method, or a model that is not LLaVA-like.
    """
    from peft import PeftModel

    from ..tuner.config import LVPruningConfig
    from ..tuner.model import get_lvpruning_model, lvpruning_tuner

    if isinstance(model, PeftModel):
        lvpruning_tuner(model)  # TypeError for another method
        processor = processor or _load_processor(getattr(model.get_base_model(), "name_or_path", ""))
        name = getattr(model.get_base_model(), "name_or_path", "") or type(model.get_base_model()).__name__
        return EvalModel(model, processor, name, None, has_adapter=True)
    if isinstance(model, nn.Module):
        wrapped = get_lvpruning_model(model, LVPruningConfig(keep=keep, layers=_layers(layers)))
        processor = processor or _load_processor(getattr(model, "name_or_path", ""))
        name = getattr(model, "name_or_path", "") or type(model).__name__
        return EvalModel(wrapped, processor, name, None, has_adapter=False, unwrap=True)

    name = os.fspath(model)
    _check_local(name)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype == "auto" else getattr(torch, dtype)
    target = torch.device(device) if device is not None else _default_device()
    kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation, "device_map": str(target)}
    adapter_config = _adapter_config(name)
    if adapter_config is not None:
        from ..tuner.loading import from_pretrained

        peft_model = from_pretrained(name, **kwargs)
        base_name = adapter_config.base_model_name_or_path or ""
        processor = processor or _load_processor(base_name)
        return EvalModel(peft_model, processor, base_name or name, name, has_adapter=True)
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(name, use_safetensors=True, **kwargs)
    wrapped = get_lvpruning_model(base, LVPruningConfig(keep=keep, layers=_layers(layers)))
    return EvalModel(wrapped, processor or _load_processor(name), name, None, has_adapter=False)


def _layers(layers: Sequence[int] | None) -> list[int] | None:
    return None if layers is None else [int(p) for p in layers]


def _check_local(name: str) -> None:
    """A name that is a path (not a Hub id) must be a folder holding a model or an adapter."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "~", os.sep)) or name.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {name}")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{name} holds neither a model (config.json) nor an LVPruning adapter (adapter_config.json)."
        )


def _adapter_config(name: str) -> Any:
    """The LVPruning config at `name` (a folder or Hub id), or None when `name` is not an adapter."""
    from ..tuner.loading import CONFIG_NAME, load_adapter_config, resolve_adapter_file

    if Path(name).expanduser().is_dir() and not (Path(name).expanduser() / CONFIG_NAME).is_file():
        return None
    try:
        if resolve_adapter_file(name, CONFIG_NAME) is None:
            return None
    except FileNotFoundError:
        return None
    return load_adapter_config(name)


def _load_processor(name: str) -> Any:
    """The processor saved with the model `name`; ValueError when there is none to find."""
    from transformers import AutoProcessor

    if not name:
        raise ValueError("cannot tell where this model's processor is: pass processor=... explicitly.")
    try:
        return AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load the processor of {name!r} ({error}); pass processor=... explicitly."
        ) from error


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
