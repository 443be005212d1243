"""The regulator's equations against independent oracles (numpy moments, scipy's normal pdf)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxcerv.model import regulator

GRID = (5, 7)  # rows, cols: non-square so that h/v mix-ups fail


def _centres(grid):
    rows, cols = grid
    return np.array([(j + 0.5, i + 0.5) for i in range(rows) for j in range(cols)])  # (h, v)


def test_initial_params_is_g0():
    np.testing.assert_allclose(regulator.initial_params(GRID), [3.5, 2.5, 3.5, 0.0, 2.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_gaussian_matches_numpy_weighted_moments(seed):
    rng = np.random.default_rng(seed)
    w = rng.uniform(size=(3, *GRID)).astype(np.float32)
    got = np.asarray(regulator.fit_gaussian(w))
    for b in range(3):
        pts = _centres(GRID)
        mean = np.average(pts, axis=0, weights=w[b].ravel())
        cov = np.cov(pts.T, aweights=w[b].ravel(), bias=True)
        np.testing.assert_allclose(got[b, :2], mean, rtol=1e-5)
        np.testing.assert_allclose(got[b, 2:], [cov[0, 0], cov[0, 1], cov[1, 1]], rtol=1e-4)


def test_gaussian_density_matches_scipy():
    params = np.array([[2.2, 3.1, 4.0, 1.2, 2.5], [5.0, 1.0, 1.5, -0.4, 0.8]], np.float32)
    got = np.asarray(regulator.gaussian_density(params, GRID))
    assert got.shape == (2, *GRID)
    for b, p in enumerate(params):
        cov = [[p[2], p[3]], [p[3], p[4]]]
        want = multivariate_normal(mean=p[:2], cov=cov).pdf(_centres(GRID)).reshape(GRID)
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-7)


def test_spatial_loss_hand_computed():
    # weights min-max -> [0, 1, 0.5, 0.25]; density min-max -> [1, 0, 0.5, 0.75]
    a = np.array([[0.2, 0.6], [0.4, 0.3]], np.float32)
    s = np.array([[4.0, 0.0], [2.0, 3.0]], np.float32)
    # sum(1 - a_n * s_n) = 4 - (0 + 0 + 0.25 + 0.1875)
    np.testing.assert_allclose(regulator.spatial_loss(a, s), 4 - 0.4375, rtol=1e-6)


def test_spatial_loss_constant_map_is_finite():
    a = np.full((3, 3), 0.5, np.float32)
    s = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(regulator.spatial_loss(a, s), 9.0)  # normalised weights are all 0


def test_fit_of_density_recovers_its_parameters():
    # Weighted MLE on a Gaussian's own density recovers it when it lies well inside a big grid.
    grid = (60, 60)
    p = np.array([28.0, 31.0, 20.0, 6.0, 12.0], np.float32)
    fit = np.asarray(regulator.fit_gaussian(regulator.gaussian_density(p, grid)))
    np.testing.assert_allclose(fit, p, atol=0.05)


@pytest.mark.parametrize(
    "params, ok",
    [
        ([3.0, 2.0, 1.0, 0.0, 1.0], True),
        ([7.5, 2.0, 1.0, 0.0, 1.0], False),  # centre right of the grid
        ([3.0, -0.1, 1.0, 0.0, 1.0], False),  # centre above the grid
        ([3.0, 2.0, 1.0, 1.0, 1.0], False),  # singular covariance
        ([3.0, 2.0, -1.0, 0.0, 1.0], False),  # negative variance
        ([np.nan, 2.0, 1.0, 0.0, 1.0], False),
        ([3.0, 2.0, np.inf, 0.0, 1.0], False),
    ],
)
def test_is_valid(params, ok):
    assert bool(regulator.is_valid(np.array(params, np.float32), GRID)) is ok


def test_zero_weights_fit_is_invalid():
    fit = regulator.fit_gaussian(np.zeros(GRID, np.float32))
    assert not bool(regulator.is_valid(fit, GRID))
