"""PSSL ensemble math on hand-computed cases: min-max normalisation, ensemble mean, deciles, pseudo-labels."""

from __future__ import annotations

import pytest
import torch

from rayseg.labeling import deciles, ensemble_mean, minmax_normalize, pseudo_label, top_decile_mask
from rayseg.ignore import IGNORE_INDEX

# A 4x5 map with ties (N = 20, so D = floor(10 Z / 20) = floor(Z / 2)).
# value counts: 0:1 1:2 2:3 3:2 4:1 5:3 6:4 7:1 8:1 9:2
# Z (strictly smaller): 0:0 1:1 2:3 3:6 4:8 5:9 6:12 7:16 8:17 9:18
# D:                    0:0 1:0 2:1 3:3 4:4 5:4 6:6  7:8  8:8  9:9
MAP_4x5 = torch.tensor([
    [1., 1., 2., 3., 3.],
    [0., 5., 5., 5., 7.],
    [2., 2., 9., 8., 4.],
    [6., 6., 6., 6., 9.],
])
DECILES_4x5 = torch.tensor([
    [0, 0, 1, 3, 3],
    [0, 4, 4, 4, 8],
    [1, 1, 9, 8, 4],
    [6, 6, 6, 6, 9],
], dtype=torch.uint8)
# The negated map: Z'(v) = #{values > v} = 20 - Z(v) - count(v).
# 0:19 1:17 2:14 3:12 4:11 5:8 6:4 7:3 8:2 9:0  ->  D: 0:9 1:8 2:7 3:6 4:5 5:4 6:2 7:1 8:1 9:0
DECILES_NEG_4x5 = torch.tensor([
    [8, 8, 7, 6, 6],
    [9, 4, 4, 4, 1],
    [7, 7, 0, 1, 5],
    [2, 2, 2, 2, 0],
], dtype=torch.uint8)


def _deciles_bruteforce(scores: torch.Tensor) -> torch.Tensor:
    """Eq. 2 literally: for each pixel count the pixels of the image with a strictly smaller score."""
    flat = scores.reshape(scores.shape[0], -1)
    z = (flat[:, None, :] < flat[:, :, None]).sum(-1)  # z[b, i] = #{j : S_j < S_i}
    return (10 * z // flat.shape[1]).to(torch.uint8).reshape(scores.shape)


# ----------------------------------------------------------------------------------------------- deciles


def test_deciles_of_ten_distinct_values_are_their_ranks():
    scores = torch.tensor([[0.30, 0.90, 0.10, 0.50, 0.70], [0.20, 0.00, 0.80, 0.40, 0.60]])
    expected = torch.tensor([[3, 9, 1, 5, 7], [2, 0, 8, 4, 6]], dtype=torch.uint8)
    out = deciles(scores)
    assert out.dtype == torch.uint8 and out.shape == (2, 5)
    assert torch.equal(out, expected)


def test_deciles_all_equal_is_all_zero():
    assert torch.equal(deciles(torch.full((3, 4), 0.25)), torch.zeros(3, 4, dtype=torch.uint8))


def test_deciles_two_tied_halves():
    # zeros: Z = 0 -> D = 0; ones: Z = 5 -> D = floor(50 / 10) = 5 (nobody reaches the top decile)
    scores = torch.tensor([[0., 0., 0., 0., 0., 1., 1., 1., 1., 1.]])
    expected = torch.tensor([[0, 0, 0, 0, 0, 5, 5, 5, 5, 5]], dtype=torch.uint8)
    assert torch.equal(deciles(scores), expected)


def test_deciles_tied_maximum_is_not_top_decile():
    # The two maxima tie: Z = 10 for both -> D = floor(100 / 12) = 8, so the top decile is empty.
    scores = torch.tensor([[0., 1., 2., 3.], [4., 5., 6., 7.], [8., 8., 0.5, 0.5]])
    # N = 12 values: 0:0 0.5:1(x2) 1:3 2:4 3:5 4:6 5:7 6:8 7:9 8:10(x2); D = floor(10 Z / 12)
    expected = torch.tensor([[0, 2, 3, 4], [5, 5, 6, 7], [8, 8, 0, 0]], dtype=torch.uint8)
    assert torch.equal(deciles(scores), expected)
    assert not (deciles(scores) == 9).any()


def test_deciles_4x5_hand_case_with_ties():
    out = deciles(MAP_4x5)
    assert out.shape == (4, 5) and out.dtype == torch.uint8
    assert torch.equal(out, DECILES_4x5)
    assert torch.equal(deciles(-MAP_4x5), DECILES_NEG_4x5)


def test_deciles_rank_each_image_of_a_batch_on_its_own():
    batch = torch.stack([MAP_4x5, MAP_4x5 + 100.0, -MAP_4x5, 0.001 * MAP_4x5])
    out = deciles(batch)
    assert out.shape == (4, 4, 5)
    assert torch.equal(out[0], DECILES_4x5)
    assert torch.equal(out[1], DECILES_4x5)  # ranked jointly with image 0 it would be all >= 5
    assert torch.equal(out[2], DECILES_NEG_4x5)
    assert torch.equal(out[3], DECILES_4x5)


def test_deciles_match_the_literal_definition_on_random_tied_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (3, 6, 9), generator=g).float() / 7  # many ties
    assert torch.equal(deciles(scores), _deciles_bruteforce(scores))


def test_deciles_reject_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        deciles(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        deciles(torch.zeros(5))


# ----------------------------------------------------------------------------------------------- min-max


def test_minmax_normalize_hand_case_and_constant_map():
    maps = torch.stack([
        torch.tensor([[1.0, 3.0], [5.0, 9.0]]),   # (E - 1) / 8
        torch.full((2, 2), 7.0),                  # constant: 0/0 -> zeros
        torch.tensor([[-2.0, 0.0], [2.0, -2.0]]),  # (E + 2) / 4
    ])
    out = minmax_normalize(maps)
    expected = torch.tensor([
        [[0.0, 0.25], [0.5, 1.0]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.5], [1.0, 0.0]],
    ])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_minmax_normalize_each_map_of_leading_dims_and_ints():
    maps = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # int64; every map is [k, k+1, k+2, k+3]
    out = minmax_normalize(maps)
    assert out.dtype == torch.float32
    expected = torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]).expand(2, 3, 2, 2)
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------------------------- ensemble mean


def test_ensemble_mean_of_two_hand_maps():
    # model 1: image 0 -> [[0,.25],[.5,1]]; image 1 -> (E-1)/3
    # model 2: image 0 -> [[0,0],[0,1]];    image 1 constant -> zeros
    per_model = torch.tensor([
        [[[0.0, 2.0], [4.0, 8.0]], [[1.0, 2.0], [3.0, 4.0]]],
        [[[10.0, 10.0], [10.0, 20.0]], [[5.0, 5.0], [5.0, 5.0]]],
    ])
    out = ensemble_mean(per_model)
    expected = torch.tensor([
        [[0.0, 0.125], [0.25, 1.0]],
        [[0.0, 1 / 6], [1 / 3, 0.5]],
    ])
    assert out.shape == (2, 2, 2)
    torch.testing.assert_close(out, expected)


def test_ensemble_mean_ignores_each_models_scale_and_rejects_bad_shape():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)  # float64: the +3 shift keeps the digits
    scaled = maps * torch.tensor([1.0, 1e-4, 250.0], dtype=torch.float64).view(3, 1, 1, 1) + 3.0
    torch.testing.assert_close(ensemble_mean(scaled), ensemble_mean(maps))
    with pytest.raises(ValueError, match=r"\[M, B, H, W\]"):
        ensemble_mean(maps[0])


# ----------------------------------------------------------------------------------------------- labels


D = torch.tensor([[9, 8, 0], [7, 9, 8]], dtype=torch.uint8)


def test_top_decile_mask():
    assert torch.equal(top_decile_mask(D), torch.tensor([[True, False, False], [False, True, False]]))
    assert torch.equal(top_decile_mask(D, threshold=8), torch.tensor([[True, True, False], [False, True, True]]))


def test_pseudo_label_values():
    out = pseudo_label(D, class_id=3, background_index=1000)
    assert out.dtype == torch.int64
    assert torch.equal(out, torch.tensor([[3, 1000, 1000], [1000, 3, 1000]]))
    out = pseudo_label(D, class_id=3, background_index=1000, ignore_d8=True, ignore_index=1001)
    assert torch.equal(out, torch.tensor([[3, 1001, 1000], [1000, 3, 1001]]))
    out = pseudo_label(D, class_id=3, background_index=1000, threshold=8)
    assert torch.equal(out, torch.tensor([[3, 3, 1000], [1000, 3, 3]]))
    out = pseudo_label(D, class_id=3, background_index=1000, threshold=8, ignore_d8=True)  # ignores D == 7
    assert torch.equal(out, torch.tensor([[3, 3, 1000], [IGNORE_INDEX, 3, 3]]))


def test_pseudo_label_per_image_class_ids_and_bad_threshold():
    batch = torch.stack([D, D.flip(-1)])
    out = pseudo_label(batch, class_id=torch.tensor([4, 7]), background_index=10)
    assert torch.equal(out, torch.tensor([
        [[4, 10, 10], [10, 4, 10]],
        [[10, 10, 7], [10, 7, 10]],
    ]))
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label(D, 3, 1000, threshold=0)
    with pytest.raises(ValueError, match="class_id"):
        pseudo_label(batch, class_id=torch.tensor([1, 2, 3]), background_index=10)
