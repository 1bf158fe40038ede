"""Explanation metrics against ground truth, on tiny hand-made cases with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from niwt.explain import measure as ms

GROUPS = np.array([0, 0, 1, 1])  # e.g. outline_none, outline_black, size_small, size_large


def test_attribute_groups_from_names() -> None:
    names = ["shape_circle", "shape_square", "colour_red", "has_bill::curved", "has_bill::dagger", "black"]
    assert ms.attribute_groups(names).tolist() == [0, 0, 1, 2, 2, 3]


def test_precision_at_k_counts_true_attributes_in_the_top_k() -> None:
    order = np.array([[2, 0, 1, 3], [3, 1, 0, 2], [0, 2, 1, 3]])
    truth = np.array([[0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(ms.precision_at_k(order, truth, 2), [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(ms.precision_at_k(order, truth, 1), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ms.precision_at_k(order, truth, 4), [0.5, 0.25, 0.5])


def test_exclusive_flags_two_values_of_one_group() -> None:
    order = np.array([[2, 0, 1, 3], [0, 1, 2, 3], [3, 2, 0, 1]])
    assert ms.exclusive(order, GROUPS, 2).tolist() == [False, True, True]
    assert ms.exclusive(order, GROUPS, 1).tolist() == [False, False, False]
    assert ms.exclusive(order, GROUPS, 3).tolist() == [True, True, True]


def test_grouped_order_lets_the_values_of_a_group_compete() -> None:
    scores = np.array([[5.0, 4.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.5]])
    assert ms.top_k(scores, 2).tolist() == [[0, 1], [0, 1]]  # the paper's reading: both from group 0
    assert ms.exclusive(ms.top_k(scores, 4), GROUPS, 2).all()
    # z within each group: (+1, -1), (+1, -1); winners (z = +1) first, ties by index
    assert ms.grouped_order(scores, GROUPS).tolist() == [[0, 2, 1, 3], [0, 2, 1, 3]]
    assert not ms.exclusive(ms.grouped_order(scores, GROUPS), GROUPS, 2).any()


def test_grouped_order_ranks_groups_by_how_clearly_their_value_wins() -> None:
    # group 0 = (0, 1, 5): winner 2 with z = 3 / sqrt(14/3) = 1.389; group 1 = (2, 2): all z = 0,
    # winner the first; the rest by z: 4 (0), 1 (-0.463), 0 (-0.926)
    order = ms.grouped_order(np.array([[0.0, 1.0, 5.0, 2.0, 2.0]]), np.array([0, 0, 0, 1, 1]))
    assert order.tolist() == [[2, 3, 4, 1, 0]]


def test_grouped_order_without_groups_is_the_plain_ranking() -> None:
    assert ms.grouped_order(np.array([[1.0, 3.0, 2.0]]), np.array([0, 1, 2])).tolist() == [[1, 2, 0]]


def test_rankings_baselines() -> None:
    scores = np.array([[5.0, 4.0, 1.0, 0.0]])
    domain = np.array([[0.1, 0.9, 0.8, 0.2], [0.9, 0.1, 0.2, 0.8]])
    r = ms.rankings(scores, domain, np.array([1]), GROUPS, seed=3)
    assert r["paper"].tolist() == [[0, 1, 2, 3]]
    assert r["improved"].tolist() == [[0, 2, 1, 3]]
    assert r["class_prior"].tolist() == [[0, 3, 2, 1]]  # the predicted class (1), not class 0
    assert sorted(r["random"][0].tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(r["random"], ms.random_order(1, 4, 3))
    many = ms.random_order(2000, 4, 0)
    truth = np.zeros((2000, 4), dtype=bool)
    truth[:, [0, 2]] = True
    assert ms.precision_at_k(many, truth, 2).mean() == pytest.approx(0.5, abs=0.03)  # chance = 2 / 4


def test_mass_inside_and_pointing_hit() -> None:
    cam = np.array([[[1.0, 2.0], [3.0, 4.0]],
                    [[0.0, 5.0], [1.0, 1.0]],
                    [[0.0, 0.0], [0.0, 0.0]],
                    [[2.0, 2.0], [0.0, 0.0]]])
    mask = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 1], [1, 1]], [[0, 1], [0, 0]]], dtype=bool)
    np.testing.assert_allclose(ms.mass_inside(cam, mask), [5 / 10, 1 / 7, 0.0, 2 / 4])
    # the maximum: (1, 1) inside; (0, 1) outside; an empty map points nowhere; a tie takes the first
    assert ms.pointing_hit(cam, mask).tolist() == [True, False, False, False]


@pytest.mark.parametrize("size", [48, 224])
def test_object_masks_follow_the_evaluation_transform(size: int) -> None:
    """The mask must sit where the evaluation transform puts the object's pixels: a plain resize below
    128 px, resize + centre crop at 128 px and above (an off-centre object makes a shift visible)."""
    from PIL import Image

    from niwt.data.images import make_transform
    from niwt.data.synthetic import Geometry, object_mask
    from niwt.data.truth import ImageTruth, object_masks

    g = Geometry("square", 14.0, 40.0, 9.0, 0.3)
    truth = ImageTruth(np.array([7]), [["shape_square"]], [g], 64)
    cover = (object_mask(g, 64) * 255).round().astype(np.uint8)
    moved = make_transform(size, train=False)(Image.fromarray(cover).convert("RGB"))  # normalised tensor
    expected = (moved[0] * 0.229 + 0.485).numpy() >= 0.5
    got = object_masks(truth, np.array([0]), size)[0]
    assert got.shape == (size, size)
    assert (got != expected).mean() < 0.005  # resampling differs on the edge only (a plain resize at 224: 3%)
