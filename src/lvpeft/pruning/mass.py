"""Merging dropped vision tokens into the kept ones: what a dropped token carried is not thrown away.

A language model reads an image partly through how much attention *mass* each kind of content gets:
how many tokens show a red square, how much of the picture is background. Keeping only a budget of
the most question-relevant tokens changes those proportions (the kept set is enriched in what the
scorer liked), and questions that depend on them, counting above all, break. So when a module drops
vision tokens, each dropped token is merged into the kept vision token most similar to it (cosine of
their hidden states at the module's layer), as token merging does (ToMe, Bolya et al. 2023):

- the kept token's hidden state becomes the mass-weighted mean of itself and what it absorbed;
- it carries a *mass* m, the number of original tokens it now stands for, and later layers add log(m)
  to its attention logit (proportional attention), during the prefill and every decode step, so a
  token that stands for five attracts the attention five identical copies would.

The learned modules choose which tokens survive (the question-relevant ones, which keep their own
features); merging decides what happens to the rest. Masses accumulate over modules. With nothing
dropped every mass is 1 and nothing changes.

Shapes: B batch, L slots, d hidden size.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .state import ForwardContext
from .tokens import flat_rows, gather_slots, pack


def _assignments(
    hidden: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dropped slots of each row, packed, and the kept slot each merges into.

    Returns:
        `(sources, targets, assign)`: (B, Nd) long dropped slot indices, (B, Nd) long their receivers,
        (B, Nd) bool whether the column is a real assignment (not padding, and the row keeps a slot).
    """
    sources, source_valid = pack(dropped)  # (B, Nd)
    receivers, receiver_valid = pack(kept)  # (B, Nk)
    if sources.shape[1] == 0 or receivers.shape[1] == 0:
        return sources, sources, torch.zeros_like(source_valid)
    with torch.no_grad():
        source_states = torch.nn.functional.normalize(gather_slots(hidden, sources).float(), dim=-1)
        receiver_states = torch.nn.functional.normalize(gather_slots(hidden, receivers).float(), dim=-1)
        similarity = source_states @ receiver_states.transpose(1, 2)  # (B, Nd, Nk) cosines
        best = similarity.masked_fill(~receiver_valid[:, None, :], float("-inf")).argmax(dim=2)  # (B, Nd)
    targets = torch.gather(receivers, 1, best)  # (B, Nd) slot indices
    return sources, targets, source_valid & receiver_valid.any(dim=1, keepdim=True)


def nearest_kept(hidden: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(B, L) long: for every dropped slot, the kept slot whose hidden state is most cosine-similar to
    it (ties: the earliest); every other slot maps to itself.

    Only dropped x kept similarities are computed (about 0.03 % of LLaVA-1.5-7B's pruned prefill).

    Args:
        hidden: (B, L, d) hidden states.
        dropped: (B, L) bool, the slots to assign.
        kept: (B, L) bool, the slots that may receive (a row without one maps its slots to themselves).
    """
    batch, length = dropped.shape
    sources, targets, assign = _assignments(hidden, dropped, kept)
    identity = torch.arange(length + 1, device=dropped.device).expand(batch, length + 1)
    spare = torch.full_like(sources, length)  # padding columns write to a spare slot, cut off
    out = identity.scatter(1, torch.where(assign, sources, spare), torch.where(assign, targets, spare))
    return out[:, :length]


def merge_dropped(
    mass: torch.Tensor, hidden: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each dropped slot into its most similar kept vision slot.

    Args:
        mass: (B, L) float32, how many original tokens each slot stands for.
        hidden: (B, L, d) hidden states at the module's layer.
        dropped: (B, L) bool, vision slots this module drops.
        kept: (B, L) bool, vision slots this module keeps (the only receivers).

    Returns:
        `(mass, hidden)`: (B, L) float32 new masses (dropped slots 0) and (B, L, d) hidden states in
        hidden's dtype, each kept slot the mass-weighted mean of itself and the slots merged into it
        (differentiable in `hidden`; other slots unchanged). A row without a kept vision slot keeps its
        masses and states (its dropped slots are simply dropped).
    """
    batch, length, width = hidden.shape
    sources, targets, assign = _assignments(hidden, dropped, kept)  # (B, Nd) each
    spare = batch * length  # padding columns add into a spare row, cut off
    source_rows = flat_rows(sources, length)  # (B*Nd,) rows of the flattened (B*L, d) states
    target_rows = torch.where(assign.reshape(-1), flat_rows(targets, length), spare)
    moved = torch.where(assign, torch.gather(mass, 1, sources), 0.0).reshape(-1)  # (B*Nd,)
    own = torch.where(kept, mass, 0.0).reshape(-1)
    total = torch.cat([own, own.new_zeros(1)]).index_add_(0, target_rows, moved)[:spare]  # (B*L,)
    flat = hidden.reshape(spare, width).float()
    incoming = flat.new_zeros(spare + 1, width).index_add_(
        0, target_rows, flat.index_select(0, source_rows) * moved[:, None]
    )[:spare]
    rows = (total > own).nonzero().view(-1)  # (R,) kept slots that absorbed something; the rest stay as is
    merged = flat.index_select(0, rows) * own[rows, None] + incoming.index_select(0, rows)
    merged = merged / total[rows, None]
    new_hidden = flat.index_copy(0, rows, merged).view(batch, length, width).to(hidden.dtype)
    new_mass = torch.where(kept, total.view(batch, length), torch.where(dropped, 0.0, mass))
    return new_mass, new_hidden


def merge_stage(
    ctx: ForwardContext, stage: int, hidden: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """If the forward's plan merges, merge module `stage`'s dropped (B, L) vision slots into its kept
    ones (`merge_dropped`): updates `ctx.mass` and returns the (B, L, d) hidden states (as they are
    otherwise, or when the module keeps everything)."""
    if not ctx.plan.merge_dropped or ctx.plan.ratios[stage] >= 1.0:
        return hidden
    with record_function("lvpruning::merge"):
        mass = ctx.mass if ctx.mass is not None else ctx.valid.float()
        ctx.mass, hidden = merge_dropped(mass, hidden, dropped, kept)
    return hidden


def mass_bias(mass: torch.Tensor | None) -> torch.Tensor | None:
    """(B, K) float32 additive attention bias log(m) of key slots with masses `mass` (B, K), None for
    None (nothing merged yet); slots with mass 0 (dropped or padding, which the mask excludes anyway)
    get 0 instead of -inf."""
    if mass is None:
        return None
    return torch.where(mass > 0, torch.log(mass.clamp(min=1e-12)), 0.0)
