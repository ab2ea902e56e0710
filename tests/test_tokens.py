"""Slot packing, gathering and scattering against plain-indexing references."""

from __future__ import annotations

import pytest
import torch

from lvpeft.pruning.tokens import gather_slots, pack, scatter_slots


def _masks() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 11, generator=generator) > 0.5
    mask[1] = False  # a row with nothing kept
    mask[2, -1] = True
    return mask


def test_pack_right_aligns_each_rows_true_slots_in_order() -> None:
    mask = _masks()
    index, valid = pack(mask)
    assert index.shape[1] == int(mask.sum(1).max())
    for row in range(mask.shape[0]):
        expected = torch.nonzero(mask[row]).flatten()
        got = index[row][valid[row]]
        assert torch.equal(got, expected)
        assert not valid[row, : index.shape[1] - len(expected)].any()  # padding first (left)


def test_pack_of_a_single_row_takes_its_true_slots_in_order() -> None:
    for row in _masks():  # includes a row with nothing kept
        index, valid = pack(row[None])
        assert index.shape == valid.shape == (1, int(row.sum()))
        assert torch.equal(index[0], torch.nonzero(row).flatten()) and bool(valid.all())


@pytest.mark.parametrize("rest", [(), (5,), (2, 3)])
def test_gather_slots_equals_indexing_row_by_row(rest: tuple[int, ...]) -> None:
    x = torch.randn(3, 11, *rest)
    index, _ = pack(_masks())
    got = gather_slots(x, index)
    expected = torch.stack([x[b, index[b]] for b in range(3)])
    assert torch.equal(got, expected)


def test_gather_slots_broadcasts_a_batch_of_one() -> None:
    table = torch.randn(1, 11, 4)  # e.g. RoPE cos computed once for the batch
    index, _ = pack(_masks())
    assert torch.equal(gather_slots(table, index), torch.stack([table[0, index[b]] for b in range(3)]))


def test_scatter_slots_inverts_gather_on_valid_slots_and_zeroes_the_rest() -> None:
    mask = _masks()
    x = torch.randn(3, 11, 4)
    index, valid = pack(mask)
    back = scatter_slots(gather_slots(x, index), index, valid, 11)
    assert torch.equal(back, x * mask[..., None])


def test_gather_and_scatter_pass_gradients_to_the_selected_rows() -> None:
    mask = _masks()
    x = torch.randn(3, 11, 4, requires_grad=True)
    index, valid = pack(mask)
    scatter_slots(gather_slots(x, index) * 2.0, index, valid, 11).sum().backward()
    assert torch.equal(x.grad, 2.0 * mask[..., None].expand(3, 11, 4).float())
