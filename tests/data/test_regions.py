"""Outline strokes -> regions, on hand-drawn masks whose regions are known analytically."""

import numpy as np
import pytest
from scipy import ndimage

from jaxcerv.data import regions

N = 96  # mask side
ROWS, COLS = np.indices((N, N))


def ring(cy: float, cx: float, radius: float, width: float = 1.5) -> np.ndarray:
    """A drawn circle: the pixels within width / 2 of radius (a 1-3 px stroke)."""
    return np.abs(np.hypot(ROWS - cy, COLS - cx) - radius) <= width / 2


def disc(cy: float, cx: float, radius: float) -> np.ndarray:
    return np.hypot(ROWS - cy, COLS - cx) <= radius


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_closed_circle_fills_to_the_disc():
    result = regions.outline_to_region(ring(48, 48, 20))
    assert result.status == "closed" and result.usable and result.reason == ""
    assert iou(result.mask, disc(48, 48, 20)) > 0.95
    # and agrees with a plain hole fill, the oracle for a closed outline
    assert iou(result.mask, ndimage.binary_fill_holes(ring(48, 48, 20))) > 0.95


def test_curve_open_at_the_border_closes_against_it():
    """A half circle standing on the bottom edge: the enclosed side is the half disc."""
    strokes = ring(N - 1, 48, 25) & (ROWS <= N - 1)
    result = regions.outline_to_region(strokes)
    assert result.status == "closed"
    assert iou(result.mask, disc(N - 1, 48, 25)) > 0.93
    assert not result.mask[0].any()  # the outside (top of the image) is never chosen


def test_stroke_ending_short_of_the_border_closes_against_it():
    """The half circle stops 3 px above the edge (within the gap): still closed."""
    strokes = ring(N - 1, 48, 25) & (ROWS <= N - 4)
    result = regions.outline_to_region(strokes)
    assert result.status == "closed"
    assert iou(result.mask, disc(N - 1, 48, 25)) > 0.9


def test_outline_touching_the_border_twice_is_read_by_its_hull():
    """A tall ellipse touching top and bottom splits the outside into two sides, each smaller than
    the lesion: the smaller-side rule would fill the outside; the hull rule fills the ellipse."""
    r = np.hypot((ROWS - 47.5) / 48.0, (COLS - 48) / 30.0)
    strokes = np.abs(r - 1) <= 0.025
    inside = r <= 1
    assert inside.sum() > 1.5 * (~inside[:, :48]).sum()  # the lesion > each outside side
    result = regions.outline_to_region(strokes)
    assert result.status == "closed"
    assert iou(result.mask, inside) > 0.93


def test_two_components_are_both_filled():
    strokes = ring(25, 25, 12) | ring(68, 66, 15)
    result = regions.outline_to_region(strokes)
    assert result.status == "closed"
    assert iou(result.mask, disc(25, 25, 12) | disc(68, 66, 15)) > 0.93
    labels, count = ndimage.label(result.mask)
    assert count == 2


def test_circle_with_a_2px_gap_is_bridged():
    strokes = ring(48, 48, 20)
    strokes[(np.abs(COLS - 48) <= 1) & (ROWS < 48)] = False  # a 3-column cut: a 2-3 px gap
    assert not ndimage.binary_fill_holes(strokes)[48, 48]  # a plain hole fill leaks
    result = regions.outline_to_region(strokes)
    assert result.status == "closed"
    assert iou(result.mask, disc(48, 48, 20)) > 0.95


def test_gap_wider_than_the_tolerance_is_not_bridged():
    strokes = ring(48, 48, 20)
    strokes[(np.abs(COLS - 48) <= 6) & (ROWS < 48)] = False  # a 13 px gap
    result = regions.outline_to_region(strokes)
    assert result.status == "unclosable" and not result.usable and not result.mask.any()


def test_empty_mask_is_an_empty_usable_region():
    result = regions.outline_to_region(np.zeros((N, N), np.uint8))
    assert result.status == "empty" and result.usable
    assert result.mask.shape == (N, N) and not result.mask.any()


def test_unclosable_scribble_is_counted_not_guessed():
    x = np.arange(20, 76)
    y = (48 + 12 * np.sin(x / 4.0)).round().astype(int)
    strokes = np.zeros((N, N), bool)
    strokes[y, x] = strokes[y + 1, x] = True  # an open zigzag in the middle
    result = regions.outline_to_region(strokes)
    assert result.status == "unclosable"
    assert result.reason.startswith("encloses nothing:")
    assert not result.mask.any()


def test_outline_open_in_the_middle_is_unclosable():
    """A C open to the left, in the middle of the image: inside and outside are one side."""
    result = regions.outline_to_region(ring(48, 48, 25) & (COLS >= 35))
    assert result.status == "unclosable" and not result.mask.any()


def test_outline_open_on_one_side_of_the_hull_is_unclosable():
    """A closed circle beside an open arc: the outside runs into the arc's lesion, so the side
    lies partly inside the strokes' hull."""
    result = regions.outline_to_region(ring(25, 25, 10) | (ring(62, 62, 22) & (COLS >= 50)))
    assert result.status == "unclosable" and result.reason.startswith("open outline:")


def test_closed_outline_beside_an_open_stroke_is_unclosable():
    """Filling only the circle would call whatever the open stroke marks non-acetowhite."""
    strokes = ring(30, 30, 10)
    strokes[80:82, 60:92] = True
    result = regions.outline_to_region(strokes)
    assert result.status == "unclosable" and result.reason.startswith("partial:")
    strokes = ring(30, 30, 10)
    strokes[80, 88:92] = True  # a stray tick is not an outline
    assert regions.outline_to_region(strokes).status == "closed"


def test_outline_traced_along_the_border_is_implausible():
    strokes = np.zeros((N, N), bool)
    strokes[2, 2:-2] = strokes[-3, 2:-2] = strokes[2:-2, 2] = strokes[2:-2, -3] = True
    result = regions.outline_to_region(strokes)
    assert result.status == "unclosable"
    assert result.reason.startswith("too large:") and "92%" in result.reason
    assert regions.outline_to_region(strokes, max_fraction=0.95).status == "closed"


def test_pockets_below_min_area_are_not_regions():
    """Two strokes 6 px apart joined at both ends leave a 1 x 24 px pocket after the dilation."""
    strokes = np.zeros((N, N), bool)
    strokes[40, 30:60] = strokes[46, 30:60] = strokes[40:47, 30] = strokes[40:47, 59] = True
    assert regions.outline_to_region(strokes, min_area=30 / N**2).status == "unclosable"
    assert regions.outline_to_region(strokes, min_area=20 / N**2).status == "closed"


def test_rejects_a_non_2d_mask():
    with pytest.raises(ValueError, match="2-D"):
        regions.outline_to_region(np.zeros((4, 4, 3)))


def test_convex_hull_of_a_square_and_of_a_line():
    hull = regions.convex_hull(np.array([[2, 2], [2, 7], [7, 2], [7, 7]]), (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[2:8, 2:8] = True
    np.testing.assert_array_equal(hull, expected)
    assert not regions.convex_hull(np.array([[1, 1], [2, 2], [3, 3]]), (5, 5)).any()
