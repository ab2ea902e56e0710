"""`LVPruningModel`: the PEFT tuner that injects decision modules into a LLaVA model.

Injection attaches a `DecisionLayer` (a PEFT tuner layer) as the child `pruner` of each decoder
layer that has a module before it, and installs the `TokenPruner` hooks once. The base model's
own modules and parameters are never replaced or modified: disabling the adapter turns the hooks
into no-ops, and `unload()` removes the hooks and the `pruner` children.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..pruning.architecture import check_attention, find_llava_parts
from ..pruning.hooks import TokenPruner
from ..pruning.plan import PruneMode, PruningPlan, PruningStats
from ..pruning.scorers import LearnedScorer, Scorer
from .config import LVPruningConfig
from .devices import check_offload, layer_placement
from .layer import DecisionLayer, DecisionModule
from .registration import METHOD_NAME, PEFT_TYPE, PREFIX

HOLDER_NAME = "pruner"
ADAPTER_ATTR = "lvpruning_module"


class LVPruningModel(BaseTuner):
    """PEFT tuner for LVPruning (see `LVPruningConfig` for what is configured).

    Only the decision modules are trainable and saved; the base model is frozen and untouched.
    """

    prefix: str = PREFIX
    tuner_layer_cls = DecisionLayer
    target_module_mapping: dict[str, list[str]] = {}  # noqa: RUF012 (PEFT's class attribute)

    # -- injection --------------------------------------------------------------------------------

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Validate the model and config, create the decision modules and install the hooks."""
        config: LVPruningConfig = self.peft_config[adapter_name]
        parts = find_llava_parts(model)
        check_attention(parts)
        check_base_shape(config, parts.hidden_size, parts.num_layers)
        positions = config.resolve_layers(parts.num_layers)
        config.layers = positions
        config.num_modules = len(positions)
        config.validate()  # the resolved layers must agree with an explicit schedule's length
        config.base_text_hidden_size = parts.hidden_size
        config.base_text_num_layers = parts.num_layers
        config._base_model_config = getattr(model, "config", None)  # for the model card; not serialised
        dim = config.resolve_pruner_dim(parts.hidden_size)
        if dim % config.pruner_heads:
            raise ValueError(
                f"LVPruningConfig.pruner_heads={config.pruner_heads} must divide the module width {dim} "
                f"(pruner_dim={config.pruner_dim!r} with the language model's hidden size "
                f"{parts.hidden_size})."
            )
        check_offload(model, {p: parts.layers[p] for p in positions})
        for p in positions:
            layer = parts.layers[p]
            # where the layer computes (accelerate's execution device if offloaded), in its dtype; PEFT
            # then upcasts fp16/bf16 modules to float32 unless autocast_adapter_dtype=False
            device, dtype = layer_placement(layer)
            holder = getattr(layer, HOLDER_NAME, None)
            if holder is None:
                holder = DecisionLayer()
                layer.add_module(HOLDER_NAME, holder)
            module = DecisionModule(
                parts.hidden_size, dim, config.pruner_heads, config.pruner_blocks, config.pruner_ffn_mult
            ).to(device=device, dtype=dtype)
            holder.update_layer(adapter_name, module)
            holder.set_adapter(self.active_adapters)
            self.targeted_module_names.append(f"{_module_name(model, layer)}.{HOLDER_NAME}")
        self._parts = parts
        if getattr(self, "_pruner", None) is None:
            self._pruner = TokenPruner(parts, self._plan)
            self._mode = PruneMode.REMOVE
            self._scorer_override: list[Scorer] | None = None
            self._pruner.install()
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            for holder in self._holders():
                if adapter_name in holder.lvpruning_module:
                    holder.lvpruning_module[adapter_name].requires_grad_(False)

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("LVPruning injects through inject_adapter; it replaces no module.")

    def _prepare_adapter_config(self, peft_config: LVPruningConfig, model_config: dict) -> LVPruningConfig:
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: LVPruningConfig, key: str) -> bool:
        return False

    def _check_new_adapter_config(self, config: LVPruningConfig) -> None:
        if not isinstance(config, LVPruningConfig):
            raise TypeError(
                f"LVPruningModel only takes LVPruningConfig adapters, got {type(config).__name__}."
            )

    # -- what a forward does ----------------------------------------------------------------------

    def _plan(self) -> PruningPlan | None:
        holders = self._holders()
        if not holders or all(h.disable_adapters for h in holders):
            return None
        adapter = self._single_active_adapter()
        if adapter is None:
            return None
        config: LVPruningConfig = self.peft_config[adapter]
        if self.model.training:
            self._check_checkpointing()
        scorers: list[Scorer] = self._scorer_override or [
            LearnedScorer(module) for module in self.decision_modules(adapter)
        ]
        return PruningPlan(
            positions=list(config.layers),
            ratios=config.resolve_schedule(),
            scorers=scorers,
            mode=self._mode,
            training=self.model.training,
            temperature=config.gumbel_temperature,
            attention_distill=config.attention_distill_weight > 0,
            exact_budget=config.training_decisions == "top_k",
            merge_dropped=config.merge_dropped,
        )

    def _check_checkpointing(self) -> None:
        """Reentrant checkpointing runs the layer (and our hook) under no_grad: the decisions would get
        no gradient, silently. Non-reentrant checkpointing (transformers' default) is fine."""
        for layer in self._parts.layers:
            func = getattr(layer, "_gradient_checkpointing_func", None)
            if getattr(layer, "gradient_checkpointing", False) and getattr(func, "keywords", {}).get(
                "use_reentrant", False
            ):
                raise ValueError(
                    "LVPruning training needs non-reentrant gradient checkpointing (the decisions get no "
                    "gradient otherwise): use gradient_checkpointing_kwargs={'use_reentrant': False}."
                )

    def _single_active_adapter(self) -> str | None:
        active = self.active_adapters
        if not active:
            return None
        if len(active) > 1:
            raise ValueError(
                f"LVPruning runs one adapter at a time, but {active} are active. Call set_adapter(name)."
            )
        return active[0]

    def _holders(self) -> list[DecisionLayer]:
        return [m for m in self.model.modules() if isinstance(m, DecisionLayer)]

    def decision_modules(self, adapter_name: str | None = None) -> list[DecisionModule]:
        """The decision modules of `adapter_name` (default: the active one), in module order."""
        adapter = adapter_name or self.active_adapters[0]
        return [
            getattr(self._parts.layers[p], HOLDER_NAME).lvpruning_module[adapter]
            for p in self.peft_config[adapter].layers
        ]

    @property
    def active_config(self) -> LVPruningConfig:
        """The active adapter's config (its `layers` resolved against the base model)."""
        return self.peft_config[self.active_adapters[0]]

    @property
    def pruning_stats(self) -> PruningStats:
        """Ratio loss (training) and realised keep ratios of the last forward."""
        return self._pruner.stats

    def set_keep(self, keep: float, adapter_name: str | None = None) -> list[float]:
        """Change the final keep ratio without retraining; returns the new schedule.

        The default progressive schedule is recomputed from the new keep (the paper evaluates
        rho = 0.6, 0.5, 0.45 with one trained set of modules, i.e. [rho, rho - 0.2, rho - 0.4]); an
        explicit schedule is shifted by the change of keep. The adapter config is updated, so a later
        `save_pretrained` records the new keep.
        """
        adapter = adapter_name or self._single_active_adapter()
        config: LVPruningConfig = self.peft_config[adapter]
        if config.keep_schedule is not None:
            config.keep_schedule = config.with_keep(keep)
        config.keep = float(keep)
        config.validate()
        return config.resolve_schedule()

    @contextlib.contextmanager
    def masked_inference(self) -> Iterator[None]:
        """Within the block, eval-mode decisions mask dropped tokens instead of removing them.

        Same decisions, same outputs (up to float rounding), no speed-up: the reference that the
        removal path is tested against.
        """
        previous, self._mode = self._mode, PruneMode.MASK
        try:
            yield
        finally:
            self._mode = previous

    @contextlib.contextmanager
    def hide_from_modules(self, slots: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the decision modules do not attend to the input slots marked True.

        `LVPruningTrainer` hides the answer tokens (`labels != -100`) this way: at inference a module
        scores the vision tokens of a prompt whose answer does not exist yet. See
        `TokenPruner.hidden_from_scorers`; `slots` is (B, L) bool over the input_ids, None for no change.
        """
        with self._pruner.hidden_from_scorers(slots):
            yield

    @contextlib.contextmanager
    def use_scorers(self, scorers: list[Scorer]) -> Iterator[None]:
        """Within the block, score with `scorers` (one per module) instead of the learned modules.

        Used for training-free baselines at the same positions and budget: only the scorer differs.
        """
        adapter = self._single_active_adapter()
        expected = len(self.peft_config[adapter].layers)
        if len(scorers) != expected:
            raise ValueError(f"use_scorers needs one scorer per module ({expected}), got {len(scorers)}.")
        previous, self._scorer_override = self._scorer_override, list(scorers)
        try:
            yield
        finally:
            self._scorer_override = previous

    # -- unloading and state dicts ----------------------------------------------------------------

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            "LVPruning cannot be merged into the base weights: it changes which tokens are computed, not "
            "the weights. Use unload() to get the base model back."
        )

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        self._pruner.remove()
        for layer in self._parts.layers:
            if hasattr(layer, HOLDER_NAME):
                delattr(layer, HOLDER_NAME)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...pruner.lvpruning_module.<adapter>.blocks.0.q_proj.weight` -> without `.<adapter>`."""
        return re.sub(rf"\.{ADAPTER_ATTR}\.{re.escape(adapter_name)}\.", f".{ADAPTER_ATTR}.", key)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: LVPruningConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_state_dict_shapes(model.state_dict(), remapped)
        return remapped


def check_base_shape(config: LVPruningConfig, hidden_size: int, num_layers: int) -> None:
    """Raise `ValueError` if the config was made for a language model of another shape."""
    saved = (config.base_text_hidden_size, config.base_text_num_layers)
    if saved[0] is None and saved[1] is None:
        return
    if saved != (hidden_size, num_layers):
        raise ValueError(
            f"This LVPruning adapter was made for a language model with hidden size {saved[0]} and "
            f"{saved[1]} decoder layers, but the base model has hidden size {hidden_size} and {num_layers} "
            "layers. Load it on the base model it was trained for (see base_model_name_or_path)."
        )


def check_state_dict_shapes(model_state: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    """Raise `ValueError` naming both shapes if adapter tensors do not fit the model."""
    wrong = [
        f"{key!r} has shape {tuple(tensor.shape)} but the model expects {tuple(model_state[key].shape)}"
        for key, tensor in sorted(loaded.items())
        if key in model_state and tuple(model_state[key].shape) != tuple(tensor.shape)
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ValueError(
            "The adapter does not fit this model: the adapter was saved for a base model or module width of "
            f"another shape. Adapter tensor {'; '.join(wrong[:3])}{more}."
        )


class LVPruningPeftModel(PeftModel):
    """The `PeftModel` that `get_lvpruning_model` and `lvpeft.from_pretrained` return.

    Identical to `peft.PeftModel` except that `push_to_hub` uploads exactly what `save_pretrained`
    writes (adapter config, safetensors and the LVPruning model card); transformers' mixin would
    replace the card with the one already on the Hub.
    """

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
        **save_kwargs: Any,
    ) -> Any:
        """Save the adapter to a temporary folder and upload it to `repo_id` in one commit."""
        from huggingface_hub import HfApi, ModelCard

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **save_kwargs)
            if tags:
                card = ModelCard.load(f"{folder}/README.md")
                card.data.tags = sorted(set(card.data.tags or []) | set(tags))
                card.save(f"{folder}/README.md")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload LVPruning adapter",
                revision=revision,
                create_pr=create_pr,
            )


def get_lvpruning_model(
    model: nn.Module, config: LVPruningConfig | None = None, adapter_name: str = "default", **kwargs: Any
) -> PeftModel:
    """Wrap a LLaVA model with an LVPruning adapter; returns a `peft.PeftModel`.

    Like `peft.get_peft_model(model, config)` (which also works after `import lvpeft`), with a default
    `LVPruningConfig()`, an early check that the model is LLaVA-like, and a `push_to_hub` that keeps
    the LVPruning model card.

    Raises:
        TypeError: the model is not LLaVA-like (the message names what is missing).
        ValueError: the config does not fit the model (e.g. a module past the model's depth).
    """
    config = config if config is not None else LVPruningConfig()
    if not isinstance(config, LVPruningConfig):
        raise TypeError(f"get_lvpruning_model needs an LVPruningConfig, got {type(config).__name__}.")
    find_llava_parts(model)  # fail before PEFT touches the model
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
    return LVPruningPeftModel(model, config, adapter_name=adapter_name, **kwargs)


def lvpruning_tuner(model: nn.Module) -> LVPruningModel:
    """The `LVPruningModel` inside a `PeftModel` (or the tuner itself)."""
    tuner = model.base_model if isinstance(model, PeftModel) else model
    if not isinstance(tuner, LVPruningModel):
        raise TypeError(f"Expected a model wrapped with an LVPruning adapter, got {type(model).__name__}.")
    return tuner


def _module_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    return type(target).__name__


def register_lvpruning() -> None:
    """Register `LVPruningConfig` and `LVPruningModel` with PEFT's mappings (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(
            name=METHOD_NAME, config_cls=LVPruningConfig, model_cls=LVPruningModel, prefix=PREFIX
        )


register_lvpruning()
