"""The one place that removes or masks tokens.

`TokenPruner` installs forward (pre-)hooks on a LLaVA model and, on every forward, follows a
`PruningPlan` (where the modules sit, how many tokens each keeps, who scores them):

- the backbone pre-hook finds the vision tokens of the input and opens a `ForwardContext`;
- the pre-hook of decoder layer `p_s` asks the plan's scorer for keep/drop logits and applies
  the decision: in eval mode by **removal** (the kept tokens are gathered into a shorter,
  left-padded sequence; their RoPE embeddings and position ids are gathered too, so every kept
  token keeps its ORIGINAL position) or, as a reference, by **masking**; in training mode by the
  paper's masked softmax with hard Gumbel-Softmax decisions (shapes unchanged);
- the pre-hook of every later layer swaps in that stage's attention mask and positions (the
  decoder computes them once for the full sequence and passes the same objects to every layer);
- the language model's forward hook scatters the shortened output back to the input's length
  (removed positions hold zeros), so outputs keep the shape of `input_ids`.

During `generate()` the state needed by later steps (which original positions each pruned
layer's KV cache holds) rides on the cache object itself, so a second `generate()` call, which
gets a new cache, can reuse nothing stale. Decoding then only needs the attention mask of the
pruned layers rebuilt over the kept positions; layer 0 is never pruned, so the cache's
`get_seq_length()` (read from layer 0) and hence the decode positions stay right.

Every step runs under a `torch.profiler.record_function` label (`lvpruning::setup`, `::score`,
`::select`, `::repack`, `::layer_inputs`, `::restore`), so it shows by name in profiler traces and in
`lvpeft bench --breakdown` (`lvpeft.breakdown`).

Shapes: B batch, L slots, d hidden size, q new tokens at a decode step, K key slots.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from .architecture import LlavaParts
from .decisions import attention_rank_loss, gumbel_keep, keep_counts, ratio_loss, select_top_k
from .scorers import Scorer, ScoringContext, query_attention
from .tokens import gather_slots, pack, scatter_slots

STATE_ATTR = "_lvpruning_state"
# Added to attention scores of a dropped vision token in training: log(D + eps) with D in {0, 1}.
# Its gradient 1/(D + eps) times the (eps-sized) attention weight gives the paper's multiplicative
# mask gradient exp(A_ij) / sum_k exp(A_ik) M_ik.
MASK_EPS = 1e-6


class PruneMode(str, Enum):
    """How eval-mode decisions are applied."""

    REMOVE = "remove"  # gather the kept tokens into a shorter sequence (the real speed-up)
    MASK = "mask"  # keep shapes, mask dropped tokens out of attention (the reference)


@dataclass
class PruningPlan:
    """What the active adapter asks for in this forward.

    Attributes:
        positions: decoder-layer index before which each module runs (strictly increasing, >= 1).
        ratios: keep ratio after each module, relative to the original vision-token count.
        scorers: one scorer per module.
        mode: how eval-mode decisions are applied.
        training: use hard Gumbel-Softmax decisions and the masked softmax (no removal).
        temperature: Gumbel-Softmax temperature.
        attention_distill: training: compute `PruningStats.attention_loss` at the last module.
    """

    positions: list[int]
    ratios: list[float]
    scorers: list[Scorer]
    mode: PruneMode = PruneMode.REMOVE
    training: bool = False
    temperature: float = 1.0
    attention_distill: bool = False

    def stage_of(self, layer: int) -> int:
        """Index of the last module at or before decoder layer `layer` (-1 if none)."""
        stage = -1
        for s, p in enumerate(self.positions):
            if p <= layer:
                stage = s
        return stage


@dataclass
class StageKeys:
    """The key slots that the layers of one stage attend to, and which the KV cache holds.

    Attributes:
        positions: (B, K) long original position of each key slot (-1 for padding slots).
        valid: (B, K) bool, the slot is a real token that may be attended to.
    """

    positions: torch.Tensor
    valid: torch.Tensor

    def append(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Add the q new tokens of a decode step: positions, valid (B, q)."""
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.valid = torch.cat([self.valid, valid], dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Follow a beam-search reordering of the batch."""
        self.positions = self.positions.index_select(0, index.to(self.positions.device))
        self.valid = self.valid.index_select(0, index.to(self.valid.device))


@dataclass
class CacheState:
    """Pruning state carried by a KV cache between `generate()` steps."""

    stages: list[StageKeys]
    length: int  # number of original positions seen so far (prompt + generated)
    prompt_length: int  # the pruned prefill's length; decoding appends after it

    def drop_last(self, count: int) -> None:
        """Forget the last `count` decoded tokens (a KV-cache crop, as assisted decoding does)."""
        decoded = self.length - self.prompt_length
        if count > decoded:
            raise NotImplementedError(
                f"LVPruning cannot crop {count} tokens from a cache holding only {decoded} decoded tokens "
                "after a pruned prompt: the pruned prompt cannot be re-grown."
            )
        for keys in self.stages:
            keys.positions, keys.valid = keys.positions[:, :-count], keys.valid[:, :-count]
        self.length -= count


@dataclass
class PruningStats:
    """What the last prefill (a forward over a new prompt) decided, for trainers and logging.

    Attributes:
        ratio_loss: scalar, the keep-ratio loss of the last training forward (None in eval).
        keep_ratios: per module, the realised fraction of original vision tokens kept
            (mean over samples that have vision tokens).
        attention_loss: scalar, the last module's attention-ranking loss of the last training forward
            (`decisions.attention_rank_loss`; None unless the plan asks for it).
    """

    ratio_loss: torch.Tensor | None = None
    keep_ratios: list[float] = field(default_factory=list)
    attention_loss: torch.Tensor | None = None


@dataclass
class ForwardContext:
    """Per-forward state: the current slots and what each pruning stage decided."""

    plan: PruningPlan
    input_length: int
    num_vision: torch.Tensor  # (B,) original vision tokens per sample
    positions: torch.Tensor  # (B, L) original position of each current slot, -1 for padding slots
    valid: torch.Tensor  # (B, L) bool: slot holds a real token
    is_vision: torch.Tensor  # (B, L) bool: slot holds a vision token (alive or, in masked modes, dropped)
    alive: torch.Tensor  # (B, L) bool: slot holds a vision token that no module has dropped
    vision_orig: torch.Tensor  # (B, L_in) bool: original vision slots of the input
    cache: Any = None
    decode: bool = False
    soft_keep: torch.Tensor | None = None  # training: (B, L) cumulative decisions D
    attention_loss: torch.Tensor | None = None  # training: the last module's attention-ranking loss
    unseen: torch.Tensor | None = None  # (B, L_in) bool: input slots the scorers must not read as language
    decisions: list[torch.Tensor] = field(default_factory=list)
    stage_keys: dict[int, StageKeys] = field(default_factory=dict)
    stage_kwargs: dict[tuple[int, int | None], dict[str, Any]] = field(default_factory=dict)
    removed: bool = False
    keep_ratios: list[float] = field(default_factory=list)


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

    def remove(self) -> None:
        """Remove every hook; the model is the base model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ctx = None

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
        vision = self._vision_mask(module, args, kwargs)
        if vision is None:
            return
        if not _has_image_inputs(kwargs):
            # an image-placeholder id without image features (e.g. one the model generated) is a plain token
            vision = torch.zeros_like(vision)
        cache = _cache_argument(kwargs)
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
            )
            return
        if state is None:
            if bool(vision.any()):
                warnings.warn(
                    "LVPruning: image tokens arrived after a prefix that was cached without pruning (a "
                    "prompt cache, or a prefill with the adapter disabled); they are not pruned.",
                    stacklevel=2,
                )
            return
        if bool(vision.any()):
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
        )
        if ctx.cache is not None and ctx.stage_keys:
            self._attach_state(ctx)
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
        language = ctx.valid & ~ctx.is_vision
        if ctx.unseen is not None:
            seen = language & ~gather_slots(ctx.unseen, ctx.positions.clamp(min=0))
            language = torch.where(seen.any(dim=1, keepdim=True), seen, language)
        candidates = ctx.valid & ctx.alive
        keep = keep_counts(ctx.num_vision, plan.ratios[stage])  # (B,)
        rope = kwargs.get("position_embeddings")
        if rope is not None and ctx.removed:
            rope = tuple(gather_slots(t, ctx.positions.clamp(min=0)) for t in rope)
        context = ScoringContext(hidden, candidates, language, ctx.valid, ctx.positions, keep, layer, rope)
        with record_function("lvpruning::score"):
            logits = plan.scorers[stage](context)  # (B, L, 2)
        has_vision = ctx.num_vision > 0
        if plan.training:
            if plan.attention_distill and stage == len(plan.ratios) - 1:
                ctx.attention_loss = _attention_loss(context, logits, ctx.soft_keep.detach() > 0.5)
            decision = gumbel_keep(logits, plan.temperature) * candidates  # (B, L) hard, straight-through
            ctx.soft_keep = ctx.soft_keep * decision
            ctx.decisions.append(ctx.soft_keep)
            ctx.keep_ratios.append(_mean_ratio(ctx.soft_keep.detach().sum(1), ctx.num_vision, has_vision))
            ctx.stage_keys[stage] = StageKeys(ctx.positions, ctx.valid)
            return hidden
        with record_function("lvpruning::select"):
            scores = logits[..., 0] - logits[..., 1]
            kept = select_top_k(scores, candidates, keep)  # (B, L)
        ctx.keep_ratios.append(_mean_ratio(kept.sum(1), ctx.num_vision, has_vision))
        if plan.mode is PruneMode.MASK:
            ctx.alive = kept
            ctx.stage_keys[stage] = StageKeys(ctx.positions, language | kept)
            return hidden
        with record_function("lvpruning::repack"):
            index, valid = pack(language | kept)  # (B, L') left-padded
            hidden = gather_slots(hidden, index)
            ctx.positions = torch.where(valid, gather_slots(ctx.positions, index), -1)
            ctx.is_vision = gather_slots(ctx.is_vision, index) & valid
        ctx.alive = ctx.is_vision
        ctx.valid = valid
        ctx.removed = True
        ctx.stage_keys[stage] = StageKeys(ctx.positions, valid)
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
        out["attention_mask"] = self._mask(ctx, keys, window, dtype)
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

    def _mask(
        self, ctx: ForwardContext, keys: StageKeys, window: int | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The 4D attention mask (B, 1, Q, K) of a pruned stage, in the form the attention expects.

        A query may attend to a key that is valid and not in its future (by ORIGINAL position), and
        within the sliding window if the layer has one; at prefill every slot may also attend to
        itself (the paper's M_ii = 1, which also keeps padding rows finite). Returns None when plain
        causal attention over the key slots is already exact (nothing masked).
        """
        top = int(keys.positions.max())
        if window is not None and top >= window:
            raise NotImplementedError(
                f"LVPruning does not support sliding-window attention over sequences longer than the window "
                f"({window}); this input reaches position {top}."
            )
        impl = self.parts.attn_implementation
        if ctx.soft_keep is None and window is None and bool(keys.valid.all()):
            if ctx.decode and ctx.positions.shape[1] == 1:
                return None  # one new token attends to every cached slot
            if not ctx.decode and impl == "sdpa" and ctx.removed:
                return None  # compacted, nothing padded: is_causal over slots == causal over positions
        q = ctx.positions[:, :, None]  # (B, Q, 1)
        k = keys.positions[:, None, :]  # (B, 1, K)
        allowed = (k <= q) & keys.valid[:, None, :]
        if window is not None:
            allowed &= (q - k) < window
        if not ctx.decode:  # query slots are the key slots
            allowed |= torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)
        allowed = allowed[:, None]  # (B, 1, Q, K)
        if ctx.soft_keep is not None:
            return self._soft_mask(allowed, ctx, dtype)
        if impl == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    @staticmethod
    def _soft_mask(allowed: torch.Tensor, ctx: ForwardContext, dtype: torch.dtype) -> torch.Tensor:
        """Additive float mask with the differentiable decision term log(D_j + eps) for vision keys j != i."""
        length = allowed.shape[-1]
        column = torch.where(ctx.vision_orig, torch.log(ctx.soft_keep + MASK_EPS), 0.0)  # (B, L) float32
        off_diagonal = 1.0 - torch.eye(length, device=allowed.device)
        bias = column[:, None, None, :] * off_diagonal  # (B, 1, L, L)
        base = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        base = base.masked_fill(~allowed, torch.finfo(dtype).min)
        return (base + bias).to(dtype)

    # -- helpers ----------------------------------------------------------------------------------

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

    def _vision_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """(B, L) bool: which input positions are image placeholder tokens."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        image_token = self.parts.image_token_id
        if input_ids is not None:
            return input_ids == image_token
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        table = module.get_input_embeddings()
        marker = table(torch.tensor(image_token, device=embeds.device)).to(embeds.dtype)
        return (embeds == marker).all(dim=-1)

    def _attach_state(self, ctx: ForwardContext) -> None:
        cache = ctx.cache
        state = CacheState(
            stages=[ctx.stage_keys[s] for s in sorted(ctx.stage_keys)],
            length=ctx.input_length,
            prompt_length=ctx.input_length,
        )
        setattr(cache, STATE_ATTR, state)
        if not getattr(cache, "_lvpruning_wrapped", False):
            _follow_cache_edits(cache)
            cache._lvpruning_wrapped = True


def _follow_cache_edits(cache: Any) -> None:
    """Make beam-search reordering and assisted-decoding crops of `cache` update its pruning state too.

    Pruned layers hold fewer tokens than layer 0, so a crop is applied per layer as a number of tokens
    to remove from each (never as an absolute length, which older transformers versions used).
    """
    original_reorder = cache.reorder_cache
    original_crop = getattr(cache, "crop", None)

    def reorder_cache(beam_idx: torch.Tensor) -> None:
        original_reorder(beam_idx)
        state = getattr(cache, STATE_ATTR, None)
        if state is not None:
            for keys in state.stages:
                keys.reorder(beam_idx)

    def crop(max_length: int) -> None:
        state: CacheState | None = getattr(cache, STATE_ATTR, None)
        if state is None:
            return original_crop(max_length)
        count = -max_length if max_length < 0 else state.length - max_length
        if count <= 0:
            return None
        if any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
            raise NotImplementedError(
                "LVPruning can crop only plain DynamicCache layers (assisted decoding with another cache "
                "type is not supported)."
            )
        state.drop_last(count)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[..., :-count, :], layer.values[..., :-count, :]
        return None

    cache.reorder_cache = reorder_cache
    if original_crop is not None:
        cache.crop = crop


def _has_image_inputs(kwargs: dict) -> bool:
    """Whether this forward brings image features for its image tokens (pixels or precomputed outputs)."""
    if kwargs.get("pixel_values") is not None:
        return True
    outputs = kwargs.get("mm_encoder_outputs") or {}
    return isinstance(outputs, dict) and outputs.get("image") is not None


def _cache_argument(kwargs: dict) -> Any:
    """The KV cache a forward received: `cache=` since transformers 5.24, `past_key_values=` before."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def _attention_loss(context: ScoringContext, logits: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """The last module's listwise loss against the attention its layer's last prompt token pays.

    The query is each row's last language token the modules see (the last prompt token when the
    answer is hidden); it attends to the language tokens and the vision tokens still kept (`alive`,
    (B, L) bool, the forward values of the earlier decisions), with no gradient.
    """
    candidates = context.candidates & alive
    slots = torch.arange(candidates.shape[1], device=candidates.device)
    query = torch.where(context.language, slots, -1).amax(dim=1).clamp(min=0)  # (B,)
    with torch.no_grad():
        attention = query_attention(context, query, candidates | context.language)  # (B, L)
    return attention_rank_loss(logits[..., 0] - logits[..., 1], attention, candidates)


def _mean_ratio(kept: torch.Tensor, num_vision: torch.Tensor, has_vision: torch.Tensor) -> float:
    if not bool(has_vision.any()):
        return 1.0
    return float((kept[has_vision].float() / num_vision[has_vision]).mean())
