"""The state pruning keeps while it runs: per forward (`ForwardContext`) and, during `generate()`,
on the KV cache between steps (`CacheState`, one `StageKeys` per pruned stage).

The state that later decode steps need (which original positions each pruned layer's KV cache holds)
rides on the cache object itself, so a second `generate()` call, which gets a new cache, can reuse
nothing stale. Beam-search reordering and assisted-decoding crops of the cache are followed
(`follow_cache_edits`).

Shapes: B batch, L slots, L_in input length, K key slots, q new tokens at a decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .plan import PruningPlan

STATE_ATTR = "_lvpruning_state"
"""Name of the attribute that carries a `CacheState` on a KV cache."""


@dataclass
class StageKeys:
    """The key slots that the layers of one stage attend to, and which the KV cache holds.

    Attributes:
        positions: (B, K) long original position of each key slot (-1 for padding slots).
        valid: (B, K) bool, the slot is a real token that may be attended to.
        bias: (B, K) float32 additive attention bias log(mass) of each key slot (`mass.py`), or None
            when the stage uses plain attention (no proportional attention, or nothing dropped yet).
    """

    positions: torch.Tensor
    valid: torch.Tensor
    bias: torch.Tensor | None = None
    prompt_valid: bool = False  # host-side: every prompt slot is valid (set once per prefill, read by decode)

    def append(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Add the q new tokens of a decode step: positions, valid (B, q); new tokens have mass 1."""
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.valid = torch.cat([self.valid, valid], dim=1)
        if self.bias is not None:
            self.bias = torch.cat([self.bias, self.bias.new_zeros(positions.shape)], dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Follow a beam-search reordering of the batch."""
        self.positions = self.positions.index_select(0, index.to(self.positions.device))
        self.valid = self.valid.index_select(0, index.to(self.valid.device))
        if self.bias is not None:
            self.bias = self.bias.index_select(0, index.to(self.bias.device))

    def crop(self, count: int) -> None:
        """Forget the last `count` key slots (decoded tokens)."""
        self.positions, self.valid = self.positions[:, :-count], self.valid[:, :-count]
        if self.bias is not None:
            self.bias = self.bias[:, :-count]


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
            keys.crop(count)
        self.length -= count


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
    module_scores: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # training
    unseen: torch.Tensor | None = None  # (B, L_in) bool: input slots the scorers must not read as language
    decisions: list[torch.Tensor] = field(default_factory=list)
    stage_keys: dict[int, StageKeys] = field(default_factory=dict)
    stage_kwargs: dict[tuple[int, int | None], dict[str, Any]] = field(default_factory=dict)
    removed: bool = False
    keep_ratios: list[float] = field(default_factory=list)
    mass: torch.Tensor | None = None  # merging: (B, L) float32 original tokens per slot (None: all 1)
    blocks: torch.Tensor | None = None  # (B, L_in) long: the model's own bidirectional blocks (masks.py)
    span: int = 0  # decode: original positions so far, this step's included (host-side: no tensor read)


def attach_state(ctx: ForwardContext) -> None:
    """Store what a pruned prefill decided on its KV cache, for the decode steps that follow."""
    cache = ctx.cache
    for keys in ctx.stage_keys.values():  # read here, once per prefill, so that decode steps read no tensor
        keys.prompt_valid = bool(keys.valid.all())
    state = CacheState(
        stages=[ctx.stage_keys[s] for s in sorted(ctx.stage_keys)],
        length=ctx.input_length,
        prompt_length=ctx.input_length,
    )
    setattr(cache, STATE_ATTR, state)
    if not getattr(cache, "_lvpruning_wrapped", False):
        follow_cache_edits(cache)
        cache._lvpruning_wrapped = True


def follow_cache_edits(cache: Any) -> None:
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
