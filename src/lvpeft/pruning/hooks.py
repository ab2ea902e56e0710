"""The one place that removes or masks tokens.

`TokenPruner` installs forward (pre-)hooks on a LLaVA model and, on every forward, follows a
`PruningPlan` (where the modules sit, how many tokens each keeps, who scores them):

- the backbone pre-hook finds the vision tokens of the input and opens a `ForwardContext`;
- the pre-hook of decoder layer `p_s` asks the plan's scorer for keep/drop logits, merges the
  dropped vision tokens into the kept ones if the plan says so (`mass.py`), and applies the
  decision: in eval mode by **removal** (the kept tokens are gathered into a shorter, left-padded
  sequence; their RoPE embeddings and position ids are gathered too, so every kept token keeps its
  ORIGINAL position) or, as a reference, by **masking**; in training mode by the paper's masked
  softmax with hard Gumbel-Softmax decisions (shapes unchanged);
- the pre-hook of every later layer swaps in that stage's attention mask and positions (the
  decoder computes them once for the full sequence and passes the same objects to every layer);
- the language model's forward hook scatters the shortened output back to the input's length
  (removed positions hold zeros), so outputs keep the shape of `input_ids`.

During `generate()` the state needed by later steps rides on the cache object itself
(`state.py`). Decoding then only needs the attention mask of the pruned layers rebuilt over the
kept positions (`masks.py`); layer 0 is never pruned, so the cache's `get_seq_length()` (read from
layer 0) and hence the decode positions stay right.

Every step runs under a `torch.profiler.record_function` label (`lvpruning::setup`, `::score`,
`::select`, `::merge`, `::repack`, `::layer_inputs`, `::restore`), so it shows by name in profiler
traces and in `lvpeft bench --breakdown` (`lvpeft.measure.breakdown`).

Shapes: B batch, L slots, d hidden size, q new tokens at a decode step, K key slots.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from .architecture import LlavaParts
from .decisions import (
    attention_rank_loss,
    gumbel_keep,
    gumbel_top_k,
    keep_counts,
    ratio_loss,
    select_top_k,
)
from .deepstack import route_deepstack, unroute_deepstack
from .inputs import cache_argument, has_image_inputs, vision_mask
from .masks import attention_blocks, stage_attention_mask
from .mass import mass_bias, merge_stage
from .plan import PruneMode, PruningPlan, PruningStats
from .scorers.base_scorer import ScoringContext, query_attention
from .state import STATE_ATTR, CacheState, ForwardContext, StageKeys, attach_state
from .tokens import gather_slots, pack, scatter_slots


class TokenPruner:
    """Drives pruning on a LLaVA model through hooks; knows nothing of PEFT.

    Args:
        parts: the model's backbone, decoder layers and image token (see `architecture.py`).
        plan_provider: called at the start of every forward; returns the plan of the active
            adapter, or None to run the base model untouched (adapter disabled).
    """

    def __init__(self, parts: LlavaParts, plan_provider: Callable[[], PruningPlan | None]) -> None:
        self.parts = parts
        self.plan_provider = plan_provider
        self.stats = PruningStats()
        self._ctx: ForwardContext | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._unseen: torch.Tensor | None = None

    @contextlib.contextmanager
    def hidden_from_scorers(self, slots: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the scorers do not read the input slots marked True as language tokens.

        For training: a teacher-forced forward holds the answer, which a prefill at inference does not
        have yet; a module that may attend to it learns to look for the answer's words. Applies to
        prefill forwards (a prefill whose input has another shape raises ValueError); a row that would
        be left with no language token at all keeps them all.

        Args:
            slots: (B, L) bool over the input sequence (e.g. `labels != -100`), or None for no change.
        """
        previous, self._unseen = self._unseen, slots
        try:
            yield
        finally:
            self._unseen = previous

    # -- installation -----------------------------------------------------------------------------

    def install(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handles:
            return
        self._handles.append(
            self.parts.backbone.register_forward_pre_hook(self._on_backbone, with_kwargs=True)
        )
        for i, layer in enumerate(self.parts.layers):
            self._handles.append(layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        self._handles.append(self.parts.language_model.register_forward_hook(self._on_language_model_output))
        if self.parts.family is not None and self.parts.family.deepstack:
            route_deepstack(self.parts.language_model, lambda: self._ctx)

    def remove(self) -> None:
        """Remove every hook; the model is the base model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ctx = None
        unroute_deepstack(self.parts.language_model)

    # -- hooks ------------------------------------------------------------------------------------

    def _on_backbone(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with record_function("lvpruning::setup"):
            self._begin_forward(module, args, kwargs)

    def _begin_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._ctx = None
        plan = self.plan_provider()
        if plan is None:
            self.stats = PruningStats()
            return
        vision = vision_mask(self.parts, module, args, kwargs)
        if vision is None:
            return
        has_images = has_image_inputs(kwargs)  # host-side: decode steps bring no images, and read no tensor
        if not has_images:
            # an image-placeholder id without image features (e.g. one the model generated) is a plain token
            vision = torch.zeros_like(vision)
        cache = cache_argument(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        state: CacheState | None = getattr(cache, STATE_ATTR, None) if cache is not None else None
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                "LVPruning needs a 2D attention_mask (batch, sequence) of 1s and 0s; got a tensor of shape "
                f"{tuple(attention_mask.shape)}. Pass the processor's attention_mask unchanged."
            )
        batch, length = vision.shape
        device = vision.device
        if past == 0:
            # a new prompt: what the previous one decided no longer describes the model's state (decode
            # steps keep their prefill's stats, so they still tell what generate() pruned)
            self.stats = PruningStats()
            if state is not None:
                delattr(cache, STATE_ATTR)
            if not bool(vision.any()):
                return  # text only: exactly the base model
            valid = (
                attention_mask.bool()
                if attention_mask is not None
                else torch.ones_like(vision, dtype=torch.bool)
            )
            positions = torch.arange(length, device=device).expand(batch, length)
            self._ctx = ForwardContext(
                plan=plan,
                input_length=length,
                num_vision=vision.sum(dim=1),
                positions=positions,
                valid=valid,
                is_vision=vision,
                alive=vision & valid,
                vision_orig=vision,
                cache=cache,
                soft_keep=vision.float() if plan.training else None,
                unseen=self._unseen_slots(vision),
                blocks=self._attention_blocks(kwargs),
            )
            return
        if state is None:
            if has_images and bool(vision.any()):
                warnings.warn(
                    "LVPruning: image tokens arrived after a prefix that was cached without pruning (a "
                    "prompt cache, or a prefill with the adapter disabled); they are not pruned.",
                    stacklevel=2,
                )
            return
        if has_images and bool(vision.any()):
            raise NotImplementedError(
                "LVPruning prunes image tokens at prefill; this forward adds image tokens to a cache that "
                "was already pruned. Start a new generate() call (a fresh cache) for a new image."
            )
        new_valid = (
            attention_mask[:, -length:].bool()
            if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=device)
        )
        new_positions = state.length + torch.arange(length, device=device).expand(batch, length)
        for keys in state.stages:
            keys.append(new_positions, new_valid)
        state.length += length
        self._ctx = ForwardContext(
            plan=plan,
            input_length=length,
            num_vision=vision.sum(dim=1),
            positions=new_positions,
            valid=new_valid,
            is_vision=vision,
            alive=vision,
            vision_orig=vision,
            cache=cache,
            decode=True,
            stage_keys=dict(enumerate(state.stages)),
            span=state.length,
        )

    def _layer_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            ctx = self._ctx
            if ctx is None:
                return None
            stage = ctx.plan.stage_of(index)
            if stage < 0:
                return None
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if not ctx.decode and stage not in ctx.stage_keys:
                hidden = self._apply_module(ctx, stage, hidden, kwargs, module)
            with record_function("lvpruning::layer_inputs"):
                kwargs.update(self._stage_kwargs(ctx, stage, index, kwargs, hidden.dtype))
            return (hidden, *rest), kwargs

        return hook

    def _on_language_model_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        ctx, self._ctx = self._ctx, None
        if ctx is None or ctx.decode:
            return None
        self.stats = PruningStats(
            ratio_loss=ratio_loss(ctx.decisions, ctx.vision_orig, ctx.plan.ratios) if ctx.decisions else None,
            keep_ratios=ctx.keep_ratios,
            attention_loss=ctx.attention_loss,
            module_scores=ctx.module_scores,
        )
        if ctx.cache is not None and ctx.stage_keys:
            attach_state(ctx)
        if not ctx.removed:
            return None
        hidden = output.last_hidden_state  # (B, L', d)
        with record_function("lvpruning::restore"):
            output.last_hidden_state = scatter_slots(
                hidden, ctx.positions.clamp(min=0), ctx.valid, ctx.input_length
            )
        return output

    # -- the decision at a module -----------------------------------------------------------------

    def _apply_module(
        self, ctx: ForwardContext, stage: int, hidden: torch.Tensor, kwargs: dict, layer: nn.Module
    ) -> torch.Tensor:
        plan = ctx.plan
        text = ctx.valid & ~ctx.is_vision  # every language token stays in the sequence
        language = text  # the language tokens the scorers read
        if ctx.unseen is not None:
            seen = text & ~gather_slots(ctx.unseen, ctx.positions.clamp(min=0))
            language = torch.where(seen.any(dim=1, keepdim=True), seen, text)
        candidates = ctx.valid & ctx.alive
        keep = keep_counts(ctx.num_vision, plan.ratios[stage])  # (B,)
        rope = kwargs.get("position_embeddings")
        if rope is not None and ctx.removed:
            rope = tuple(gather_slots(t, ctx.positions.clamp(min=0)) for t in rope)
        context = ScoringContext(hidden, candidates, language, ctx.valid, ctx.positions, keep, layer, rope)
        with record_function("lvpruning::score"):
            logits = plan.scorers[stage](context)  # (B, L, 2)
        scores = logits[..., 0] - logits[..., 1]  # (B, L) keep scores
        has_vision = ctx.num_vision > 0
        if plan.training:
            alive = candidates & (ctx.soft_keep.detach() > 0.5)  # not dropped by an earlier module
            if plan.attention_distill and stage == len(plan.ratios) - 1:
                ctx.attention_loss = _attention_loss(context, scores, alive)
            ctx.module_scores.append((scores, alive))
            if plan.exact_budget:  # (B, L) hard, straight-through
                decision = gumbel_top_k(scores, alive, keep, plan.temperature)
            else:
                decision = gumbel_keep(logits, plan.temperature) * candidates
            ctx.soft_keep = ctx.soft_keep * decision
            ctx.decisions.append(ctx.soft_keep)
            ctx.keep_ratios.append(_mean_ratio(ctx.soft_keep.detach().sum(1), ctx.num_vision, has_vision))
            kept_now = alive & (decision.detach() > 0.5)  # the hard decisions, as at inference
            hidden = merge_stage(ctx, stage, hidden, alive & ~kept_now, kept_now)
            ctx.stage_keys[stage] = StageKeys(ctx.positions, ctx.valid, mass_bias(ctx.mass))
            return hidden
        with record_function("lvpruning::select"):
            kept = select_top_k(scores, candidates, keep)  # (B, L)
        ctx.keep_ratios.append(_mean_ratio(kept.sum(1), ctx.num_vision, has_vision))
        hidden = merge_stage(ctx, stage, hidden, candidates & ~kept, kept)
        if plan.mode is PruneMode.MASK:
            ctx.alive = kept
            ctx.stage_keys[stage] = StageKeys(ctx.positions, text | kept, mass_bias(ctx.mass))
            return hidden
        with record_function("lvpruning::repack"):
            index, valid = pack(text | kept)  # (B, L') left-padded
            hidden = gather_slots(hidden, index)
            ctx.positions = torch.where(valid, gather_slots(ctx.positions, index), -1)
            ctx.is_vision = gather_slots(ctx.is_vision, index) & valid
            if ctx.mass is not None:
                ctx.mass = gather_slots(ctx.mass, index) * valid
        ctx.alive = ctx.is_vision
        ctx.valid = valid
        ctx.removed = True
        ctx.stage_keys[stage] = StageKeys(ctx.positions, valid, mass_bias(ctx.mass))
        return hidden

    # -- per-stage layer arguments ----------------------------------------------------------------

    def _stage_kwargs(
        self, ctx: ForwardContext, stage: int, layer: int, kwargs: dict, dtype: torch.dtype
    ) -> dict[str, Any]:
        window = self.parts.sliding_windows[layer]
        key = (stage, window)
        if key in ctx.stage_kwargs:
            return ctx.stage_kwargs[key]
        keys = ctx.stage_keys[stage]
        out: dict[str, Any] = {}
        out["attention_mask"] = stage_attention_mask(
            ctx,
            keys,
            window,
            self.parts.attn_implementation,
            dtype,
            kwargs.get("attention_mask") is None,
            blocks_within_window=self._family_blocks() != "prefix",
            causal=self.parts.causal,
        )
        if not ctx.decode and ctx.removed:
            index = ctx.positions.clamp(min=0)
            if kwargs.get("position_embeddings") is not None:
                out["position_embeddings"] = tuple(
                    gather_slots(t, index) for t in kwargs["position_embeddings"]
                )
            if kwargs.get("position_ids") is not None:
                out["position_ids"] = gather_slots(kwargs["position_ids"], index)
        ctx.stage_kwargs[key] = out
        return out

    # -- helpers ----------------------------------------------------------------------------------

    def _family_blocks(self) -> str | None:
        family = self.parts.family
        return family.attention_blocks if family is not None else None

    def _attention_blocks(self, kwargs: dict) -> torch.Tensor | None:
        """The prefill's own bidirectional blocks (B, L_in), from its `token_type_ids` (`masks.py`)."""
        return attention_blocks(self._family_blocks(), kwargs.get("token_type_ids"))

    def _unseen_slots(self, vision: torch.Tensor) -> torch.Tensor | None:
        """The `hidden_from_scorers` slots for this prefill, checked against its (B, L) shape."""
        unseen = self._unseen
        if unseen is None:
            return None
        if tuple(unseen.shape) != tuple(vision.shape):
            raise ValueError(
                f"hidden_from_scorers got slots of shape {tuple(unseen.shape)} for an input of shape "
                f"{tuple(vision.shape)}; pass a (batch, sequence) bool mask over the same input_ids "
                "(e.g. labels != -100)."
            )
        return unseen.to(device=vision.device, dtype=torch.bool)


def _attention_loss(context: ScoringContext, scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """The last module's listwise loss against the attention its layer's last prompt token pays.

    The query is each row's last language token the modules see (the last prompt token when the
    answer is hidden); it attends to the language tokens and the vision tokens still kept (`alive`,
    (B, L) bool, the candidates the earlier decisions kept), with no gradient. `scores`: (B, L) keep
    scores of the module.
    """
    slots = torch.arange(alive.shape[1], device=alive.device)
    query = torch.where(context.language, slots, -1).amax(dim=1).clamp(min=0)  # (B,)
    with torch.no_grad():
        attention = query_attention(context, query, alive | context.language)  # (B, L)
    return attention_rank_loss(scores, attention, alive)


def _mean_ratio(kept: torch.Tensor, num_vision: torch.Tensor, has_vision: torch.Tensor) -> float:
    if not bool(has_vision.any()):
        return 1.0
    return float((kept[has_vision].float() / num_vision[has_vision]).mean())
