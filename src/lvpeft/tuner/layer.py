"""The decision module of LVPruning and the PEFT layer that holds it.

A decision module looks at the vision tokens still alive after decoder layer `l` and, through
cross-attention to the language tokens, predicts two logits (keep, drop) per vision token
(METHOD.md, "The decision module"). Shapes: B batch, Nv vision slots, T language slots,
d the language model's hidden size, C the module's inner width.

Where the paper is silent we chose, and say so here:
- attention heads use the usual per-head scaling 1/sqrt(C / heads), no output projection;
- the FFN (LayerNorm -> Linear(C, mult*C) -> SiLU -> Linear(mult*C, C) -> LayerNorm) is added to
  its input as a residual, so a block can pass its attention output through unchanged;
- no dropout; PyTorch's default Linear initialisation, except the keep/drop head, which starts at
  zero so every token starts at p(keep) = 0.5 (a neutral start, like LoRA's zero B matrix).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

PAPER_PRUNER_DIM = "paper"
"""`pruner_dim` value for the paper's full-width modules (C = d)."""
LIGHT_PRUNER_MIN_DIM = 64
"""Narrowest default module width (`default_pruner_dim`)."""


def default_pruner_dim(hidden_size: int, heads: int = 8) -> int:
    """The light default module width C for a language model of width `hidden_size` (d).

    C = d / 8, at least 64 and at most d, rounded down to a multiple of `heads`: 512 for
    LLaVA-1.5-7B (d = 4096), where the three modules then cost 0.13 % of a prefill's FLOPs (the
    paper's C = d: 4.3 %); 64 for lvpeft's tiny demo model (d = 128), where it matched the paper's
    width in accuracy (see docs/demo-findings.md).
    """
    dim = min(hidden_size, max(LIGHT_PRUNER_MIN_DIM, hidden_size // 8))
    return max(heads, dim - dim % heads)


def resolve_pruner_dim(pruner_dim: int | str | None, hidden_size: int, heads: int = 8) -> int:
    """The module width C for a `pruner_dim` setting (None: the light default, "paper": C = d, or C)."""
    if pruner_dim is None:
        return default_pruner_dim(hidden_size, heads)
    if pruner_dim == PAPER_PRUNER_DIM:
        return hidden_size
    return int(pruner_dim)


class CrossAttentionBlock(nn.Module):
    """Vision queries attend to language keys/values; then a residual FFN.

    O = softmax(Q K^T / sqrt(C/h)) V + Q with Q = W_q x, K = W_k H_T, V = W_v H_T (METHOD.md).
    """

    def __init__(self, query_dim: int, key_dim: int, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(query_dim, dim)
        self.k_proj = nn.Linear(key_dim, dim)
        self.v_proj = nn.Linear(key_dim, dim)
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ffn_mult * dim),
            nn.SiLU(),
            nn.Linear(ffn_mult * dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """queries (B, Nv, query_dim), keys (B, T, key_dim), key_mask (B, T) bool -> (B, Nv, C)."""
        b, nv, _ = queries.shape
        t = keys.shape[1]
        q = self.q_proj(queries)
        k = self.k_proj(keys).view(b, t, self.heads, -1).transpose(1, 2)  # (B, h, T, C/h)
        v = self.v_proj(keys).view(b, t, self.heads, -1).transpose(1, 2)
        qh = q.view(b, nv, self.heads, -1).transpose(1, 2)  # (B, h, Nv, C/h)
        attn = F.scaled_dot_product_attention(qh, k, v, attn_mask=key_mask[:, None, None, :])
        out = attn.transpose(1, 2).reshape(b, nv, -1) + q
        return out + self.ffn(out)

    def inference_forward(
        self, queries: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """`forward` without autograd, from keys and values projected beforehand (see
        `DecisionModule.inference_forward`); equal to `forward` up to float rounding.

        Args:
            queries: (B, Nv, query_dim).
            k: (B, h, T, C/h) keys already scaled by 1/sqrt(C/h).
            v: (B, h, T, C/h) values.
            bias: (B, 1, T, 1) additive mask: 0 on keys to attend to, -inf elsewhere (never a whole row).

        Returns:
            (B, Nv, C).
        """
        b, nv, _ = queries.shape
        q = F.linear(queries, self.q_proj.weight, self.q_proj.bias)  # (B, Nv, C)
        out = _attention_for(q.device)(q.view(b, nv, self.heads, -1), k, v, bias).reshape(b, nv, -1)
        norm_in, up, _, down, norm_out = self.ffn
        y = F.layer_norm(out, norm_in.normalized_shape, norm_in.weight, norm_in.bias, norm_in.eps)
        y = F.silu(F.linear(y, up.weight, up.bias), inplace=True)
        y = F.linear(y, down.weight, down.bias)
        y = F.layer_norm(y, norm_out.normalized_shape, norm_out.weight, norm_out.bias, norm_out.eps)
        return y.add_(out)


def _attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q + softmax(q k^T + bias) v per head, the scores laid out (B, h, T, Nv): the CPU route.

    With few keys (T ~ 30) and narrow heads (C/h ~ 8), a softmax over a short last dimension and sdpa's
    CPU kernel are several times slower than these reductions over T, which run along contiguous rows
    of Nv; the normalisation divides the (C/h, Nv) output instead of the (T, Nv) weights.

    Args:
        q: (B, Nv, h, C/h) queries; k: (B, h, T, C/h) keys, already scaled; v: (B, h, T, C/h) values;
        bias: (B, 1, T, 1) additive mask (0 or -inf, never -inf on a whole row).

    Returns:
        (B, Nv, h, C/h), the queries plus their attention output.
    """
    s = torch.matmul(k, q.permute(0, 2, 3, 1))  # (B, h, T, Nv)
    s += bias
    s -= s.amax(dim=2, keepdim=True)
    s.exp_()
    attn = torch.matmul(v.transpose(2, 3), s).div_(s.sum(dim=2, keepdim=True))  # (B, h, C/h, Nv)
    return q + attn.permute(0, 3, 1, 2)


def _attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`_attention_rows` with `F.scaled_dot_product_attention`: one fused kernel on a GPU."""
    attn = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=bias.transpose(2, 3), scale=1.0)
    return q + attn.transpose(1, 2)  # (B, Nv, h, C/h)


def _attention_for(device: torch.device) -> Callable[..., torch.Tensor]:
    """The inference attention for `device`: `_attention_rows` on a CPU, sdpa elsewhere."""
    return _attention_rows if device.type == "cpu" else _attention_sdpa


class DecisionModule(nn.Module):
    """Predicts keep/drop logits for vision tokens from their cross-attention to language tokens.

    Args:
        hidden_size: d, the language model's hidden size (input width).
        dim: C, the module's inner width (the paper uses C = d).
        heads: attention heads per block (paper: 8).
        blocks: cross-attention blocks in sequence (paper: 2).
        ffn_mult: FFN expansion (paper: 2).

    Without autograd (`torch.no_grad()`, `torch.inference_mode()`: inference, where the modules run
    once per prefill) `forward` takes `inference_forward`, a cheaper route to the same logits; with
    autograd it runs the blocks' `forward`, the reference, so training sees exactly the math above.
    """

    def __init__(
        self, hidden_size: int, dim: int, heads: int = 8, blocks: int = 2, ffn_mult: int = 2
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size if i == 0 else dim, hidden_size, dim, heads, ffn_mult)
            for i in range(blocks)
        )
        self.head = nn.Linear(dim, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self._fused_key_value: _FusedKeyValue | None = None  # inference only; never saved

    def forward(
        self, vision: torch.Tensor, language: torch.Tensor, language_mask: torch.Tensor
    ) -> torch.Tensor:
        """Keep/drop logits.

        Args:
            vision: (B, Nv, d) hidden states of the vision tokens to score.
            language: (B, T, d) hidden states of the language (non-vision) tokens.
            language_mask: (B, T) bool, True where `language` holds a real token.

        Returns:
            (B, Nv, 2) float32 logits gamma = (keep, drop), on the device of `vision`.
        """
        if not torch.is_grad_enabled():
            return self.inference_forward(vision, language, language_mask)
        # The module lives on its decoder layer's device; lvpeft's pre-hook runs before accelerate moves
        # the layer's inputs there, so the hidden states may still be on the previous layer's device.
        weight = self.head.weight
        # A row with no language token at all would make the softmax NaN; let it attend to its padding
        # (its scores are never used) so that nothing non-finite can leak into a batch reduction.
        language_mask = language_mask.to(weight.device)
        language_mask = language_mask | ~language_mask.any(dim=-1, keepdim=True)
        x, keys = vision.to(weight.device, weight.dtype), language.to(weight.device, weight.dtype)
        for block in self.blocks:
            x = block(x, keys, language_mask)
        return self.head(x).float().to(vision.device)

    def inference_forward(
        self, vision: torch.Tensor, language: torch.Tensor, language_mask: torch.Tensor
    ) -> torch.Tensor:
        """`forward`'s logits in fewer operations, for calls without autograd (same arguments; its
        in-place operations leave nothing to differentiate).

        Equal to the reference up to float rounding (tests/test_decision_module.py). Every block's
        keys and values come from one matrix product with the blocks' key and value projections
        stacked (built once and reused until a weight changes, `_FusedKeyValue`); the keys come out
        scaled by 1/sqrt(C/h); the padding mask becomes one additive bias shared by the blocks; the
        layers are called as functions (no module dispatch).
        """
        weight = self.head.weight
        device, dtype = weight.device, weight.dtype
        first = self.blocks[0]
        heads, width = first.heads, first.k_proj.out_features
        b, t, _ = language.shape
        mask = language_mask.to(device)
        mask = mask | ~mask.any(dim=-1, keepdim=True)  # see `forward`
        bias = torch.zeros(b, 1, t, 1, dtype=dtype, device=device)
        bias.masked_fill_(~mask[:, None, :, None], float("-inf"))
        kv_weight, kv_bias = self._key_value_projection()  # (d, 2 * blocks * C), (2 * blocks * C,)
        kv = torch.addmm(kv_bias, language.to(device, dtype).reshape(b * t, -1), kv_weight)
        kv = kv.view(b, t, 2 * len(self.blocks), heads, width // heads).permute(2, 0, 3, 1, 4)
        x = vision.to(device, dtype)
        for i, block in enumerate(self.blocks):
            x = block.inference_forward(x, kv[2 * i], kv[2 * i + 1], bias)  # k, v: (B, h, T, C/h)
        return F.linear(x, weight, self.head.bias).float().to(vision.device)

    def train(self, mode: bool = True) -> DecisionModule:
        """`nn.Module.train`; also drops the stacked key/value weights of `inference_forward`."""
        self._fused_key_value = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        """Pickled (`torch.save`, `copy.deepcopy`) without the stacked key/value weights."""
        return {**super().__getstate__(), "_fused_key_value": None}

    def _key_value_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' key and value projections as one: the (d, 2 * blocks * C) transposed weight (a
        plain matrix product, faster than `F.linear`'s transposed one for the few language rows) and
        the (2 * blocks * C,) bias; outputs [k_0, v_0, k_1, v_1, ...], keys scaled by 1/sqrt(C/h)."""
        # Compiled (the graph holds the product, and reads no Python state it would guard on) or with
        # autograd (the product must stay in the graph): stacked at every call.
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self._stack_key_value()
        projections = [lin for block in self.blocks for lin in (block.k_proj, block.v_proj)]
        sources = [p for lin in projections for p in (lin.weight, lin.bias)]
        cached = getattr(self, "_fused_key_value", None)  # absent from a module pickled before it existed
        if cached is None or not cached.matches(sources):
            cached = self._fused_key_value = _FusedKeyValue(sources, *self._stack_key_value())
        return cached.weight, cached.bias

    def _stack_key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        weights, biases = [], []
        for block in self.blocks:
            scale = (block.k_proj.out_features // block.heads) ** -0.5
            weights += [block.k_proj.weight.t() * scale, block.v_proj.weight.t()]
            biases += [block.k_proj.bias * scale, block.v_proj.bias]
        return torch.cat(weights, dim=1), torch.cat(biases)


class _FusedKeyValue:
    """`DecisionModule._key_value_projection`'s stacked weights and the parameters they were built from.

    Valid while every source parameter is the same tensor (a weak reference: replacing a parameter,
    e.g. `load_state_dict(assign=True)`, is seen), at the same storage (`.to()`, accelerate's offload)
    and not modified in place since (`_version`: an optimizer step, `load_state_dict`, `nn.init`).
    Holds no autograd graph: built under `torch.no_grad()` only. Not a buffer: never saved. Costs one
    more copy of the key and value weights (2 * blocks * C * d values per module) while it lives;
    `DecisionModule.train()` drops it.
    """

    def __init__(self, sources: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.refs = [weakref.ref(p) for p in sources]
        self.stamps = [_stamp(p) for p in sources]
        self.weight, self.bias = weight, bias

    def matches(self, sources: list[torch.Tensor]) -> bool:
        return len(sources) == len(self.refs) and all(
            ref() is p and stamp == _stamp(p) for ref, stamp, p in zip(self.refs, self.stamps, sources)
        )


def _stamp(p: torch.Tensor) -> tuple:
    return p._version, p.data_ptr(), p.dtype, p.device


class DecisionLayer(nn.Module, BaseTunerLayer):
    """PEFT tuner layer holding, per adapter, the decision module that runs before one decoder layer.

    It wraps nothing (the decoder layer it sits in is untouched); it is a `BaseTunerLayer` so that
    PEFT's machinery (adapter enable/disable, set/delete adapter, trainable-parameter marking,
    state-dict selection) sees the decision modules.
    """

    adapter_layer_names = ("lvpruning_module",)
    other_param_names = ()

    def __init__(self) -> None:
        super().__init__()
        self.lvpruning_module = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter: str | list[str] = "default"

    def update_layer(self, adapter_name: str, module: DecisionModule) -> None:
        """Add (or replace) the decision module of `adapter_name`."""
        self.lvpruning_module[adapter_name] = module

    def forward(self, *args: object, **kwargs: object) -> None:
        """Never called: the decision modules run inside the pruning hooks (`lvpeft.pruning.hooks`)."""
        raise RuntimeError("DecisionLayer is driven by lvpeft's pruning hooks; it is never called directly.")
