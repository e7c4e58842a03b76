"""Token pooling and layer selection, against slow explicit loops."""

import pytest
import torch

from rlrt.features import (
    last_token,
    masked_mean,
    pool_image_tokens,
    pool_text_tokens,
    select_layers,
)


def test_select_layers_by_count_ends_at_last_layer_and_is_evenly_spaced():
    assert select_layers(24, 4) == [5, 11, 17, 23]
    assert select_layers(6, 4) == [1, 2, 4, 5]
    assert select_layers(12, 1) == [11]
    assert select_layers(3, 3) == [0, 1, 2]


def test_select_layers_count_is_ascending_and_distinct_for_every_depth():
    for depth in range(1, 40):
        for count in range(1, depth + 1):
            chosen = select_layers(depth, count)
            assert len(chosen) == count and chosen[-1] == depth - 1
            assert all(a < b for a, b in zip(chosen, chosen[1:])), (depth, count, chosen)


def test_select_layers_explicit_and_negative():
    assert select_layers(12, [0, -1]) == [0, 11]
    # ascending whatever the listed order: layer pair l is the l-th shallowest tap of each tower
    assert select_layers(12, [2, 0]) == [0, 2]
    assert select_layers(12, [-1, 3, 5]) == [3, 5, 11]
    # repeats, also through negative indices, are one layer
    assert select_layers(12, [-1, 11]) == [11]
    assert select_layers(12, [4, 0, 4, -12]) == [0, 4]
    with pytest.raises(ValueError, match="out of range"):
        select_layers(12, [])
    with pytest.raises(ValueError, match="out of range"):
        select_layers(12, [-13])
    with pytest.raises(ValueError, match="out of range"):
        select_layers(12, [12])
    with pytest.raises(ValueError):
        select_layers(4, 5)


def test_image_pooling_matches_explicit_cell_means():
    torch.manual_seed(0)
    cls = torch.randn(2, 5)
    grid = torch.randn(2, 5, 4, 4)
    pooled = pool_image_tokens(cls, grid, grid=2)
    assert pooled.shape == (2, 1 + 4, 5)
    assert torch.equal(pooled[:, 0], cls)
    for row in range(2):
        for col in range(2):
            cell = grid[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2].mean(dim=(2, 3))
            torch.testing.assert_close(pooled[:, 1 + row * 2 + col], cell)
    every = pool_image_tokens(cls, grid, grid=None)
    assert every.shape == (2, 17, 5)


def _segment_means_loop(hidden, mask, segments):
    batch, _, dim = hidden.shape
    out = torch.zeros(batch, segments, dim)
    valid = torch.zeros(batch, segments, dtype=torch.bool)
    for b in range(batch):
        positions = [t for t in range(hidden.shape[1]) if mask[b, t]]
        n = len(positions)
        for s in range(segments):
            members = [p for r, p in enumerate(positions) if (r * segments) // n == s]
            if members:
                out[b, s] = hidden[b, members].mean(dim=0)
                valid[b, s] = True
    return out, valid


@pytest.mark.parametrize("padding", ["right", "left"])
def test_text_segment_pooling_matches_loop(padding):
    torch.manual_seed(1)
    lengths = [9, 3, 16, 1]
    hidden = torch.randn(4, 16, 6)
    mask = torch.zeros(4, 16, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if padding == "right":
            mask[b, :n] = True
        else:
            mask[b, 16 - n :] = True
    pooled, valid = pool_text_tokens(hidden, mask, segments=4)
    expected, expected_valid = _segment_means_loop(hidden, mask, 4)
    torch.testing.assert_close(pooled, expected)
    assert torch.equal(valid, expected_valid)
    assert valid.sum(dim=1).tolist() == [4, 3, 4, 1]


def test_text_pooling_of_an_empty_text_is_all_masked_and_finite():
    pooled, valid = pool_text_tokens(torch.randn(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool), 4)
    assert not valid.any()
    assert torch.isfinite(pooled).all()


def test_last_token_and_masked_mean_with_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert last_token(hidden, right)[:, 0].tolist() == [1.0, 7.0]
    assert last_token(hidden, left)[:, 0].tolist() == [3.0, 7.0]
    assert masked_mean(hidden, right)[:, 0].tolist() == [0.5, 5.5]
